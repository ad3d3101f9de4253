"""What `crc up` / `crc down` keep on this computer (master/scenario/state.py): the
state file, and the per-computer lock (runlock.py; its Windows branch runs under Wine in
tests/windows/test_wine_runlock.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cloudremotecontrol.errors import Conflict
from cloudremotecontrol.master.scenario import runlock
from cloudremotecontrol.master.scenario.state import LocalState


def test_a_second_holder_is_refused_with_the_first_ones_words(tmp_path: Path) -> None:
    lock = tmp_path / "s" / "g.lock"
    with runlock.hold(lock, "crc up, pid 1"):
        with pytest.raises(runlock.Busy) as busy, runlock.hold(lock, "crc down, pid 2"):
            pass
        assert busy.value.holder == "crc up, pid 1"
    with runlock.hold(lock, "crc down, pid 2"):  # released: the next one gets it
        assert lock.read_text() == "crc down, pid 2"
    assert lock.exists()


def test_the_state_lock_says_who_holds_it(tmp_path: Path) -> None:
    state = LocalState(tmp_path / "scenarios" / "web.json")
    with state.locked("crc up"):
        with pytest.raises(Conflict) as refused, LocalState(state.path).locked("crc down"):
            pass
    assert refused.value.message == (
        "another `crc up` or `crc down` of web is running on this computer "
        f"(crc up, pid {os.getpid()}): wait for it, or stop it"
    )


@pytest.mark.parametrize("text", ["null", "[1, 2]", "7", '{"keys": [1]}', '{"keys": "x"}'])
def test_a_damaged_state_file_reads_as_empty(tmp_path: Path, text: str) -> None:
    """`crc up` and `crc down` read it first thing: a file that is JSON but not what was
    written (an editor, a disk) must not stop them with a traceback."""
    path = tmp_path / "web.json"
    path.write_text(text)
    state = LocalState(path)
    assert state.keys == {}
    state.save(group="web")
    assert LocalState(path).data["group"] == "web"
