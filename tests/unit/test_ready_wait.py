"""The rule of ``crc wait`` / ``Client.wait_ready`` for a machine that is revoked (a
terminal state): the wait ends at once, saying which machine, with code
``machine_revoked`` (``InvalidInput``, exit 2, as docs/sdk.md says)."""

from __future__ import annotations

from typing import Any

import pytest

from cloudremotecontrol.errors import InvalidInput
from cloudremotecontrol.master.waits import ReadyWait


def _view(**states: str) -> dict[str, Any]:
    return {"group": "lab", "machines": [{"name": n, "state": s} for n, s in states.items()]}


def _state(machine: str, state: str) -> dict[str, Any]:
    return {"type": "machine.state", "machine": machine, "data": {"state": state}}


def test_a_machine_revoked_while_waiting_ends_the_wait_naming_it() -> None:
    wait = ReadyWait(_view(web="ready", db="enrolled"))
    assert not wait.done
    assert wait.feed(_state("db", "revoked"))
    with pytest.raises(InvalidInput) as exc:
        _ = wait.done
    assert exc.value.code == "machine_revoked"
    assert exc.value.exit_code == 2
    assert exc.value.message.startswith("machine 'db' of group 'lab' is revoked"), exc.value
    assert exc.value.details == {"machines": ["db"]}


def test_machines_revoked_before_the_wait_are_all_named() -> None:
    wait = ReadyWait(_view(a="revoked", b="revoked", c="pending"))
    with pytest.raises(InvalidInput) as exc:
        _ = wait.done
    assert exc.value.message == (
        "machines 'a', 'b' of group 'lab' are revoked (their credentials are gone): they "
        "can never be ready; wait for the other machines only, or make the group again"
    )


def test_one_machine_revoked_is_said_in_the_singular() -> None:
    wait = ReadyWait(_view(a="revoked", b="pending"))
    with pytest.raises(InvalidInput) as exc:
        _ = wait.done
    assert exc.value.message == (
        "machine 'a' of group 'lab' is revoked (its credential is gone): it "
        "can never be ready; wait for the other machines only, or make the group again"
    )


def test_a_revoked_machine_not_waited_for_does_not_end_the_wait() -> None:
    wait = ReadyWait(_view(a="revoked", b="pending"), machines=["b"])
    assert not wait.done
    assert wait.feed(_state("b", "ready"))
    assert wait.done
