"""``crc down``: take a scenario's machines and group away, and say what is left.

``down`` destroys every instance tagged with the scenario and checks at the provider that
none is left (``providers.destroy_scenario``, the server's TTL teardown does the same),
then deletes the group (revoking every key and credential) and the local state. While a
machine is left at the provider, both are kept: the group lists what still bills
(``crc status``, ``crc group list``), names the provider ``crc down --group`` asks, and
keeps a teardown the server was given for its TTL.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from ...errors import InvalidInput, NotFound, Unauthorized, Unavailable
from ...providers import Instance, Provider, destroy_scenario
from ...providers.destroy import CLEANUP, POLL_SECONDS
from ..client import Client
from .lease import note_for_down
from .state import LocalState
from .view import View

__all__ = ["down"]

# While machines are still listed, what is left is said first after this many seconds
# of checking (a cloud takes a few to remove a machine it accepted to destroy), then at
# most this often: the check can take its 3 minutes, and silence looks like a hang.
WAIT_REPORT_AFTER = 10.0
WAIT_REPORT_EVERY = 30.0


def _left_text(inst: Instance, errors: dict[str, str]) -> str:
    why = errors.get(inst.id)
    return f"{inst.id} (not destroyed: {why})" if why else inst.id


def down(
    group: str,
    provider: Provider,
    client: Client | None,
    view: View,
    state: LocalState | None = None,
    verify_timeout: float = 180.0,
    sleep: Callable[[float], None] = time.sleep,
    unreachable: Unavailable | Unauthorized | InvalidInput | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Destroy the scenario's instances, check none is left, delete the group.

    The machines go first, also when the server cannot be reached or refuses the token
    (``unreachable``: the error met asking it): then the group is left, and that error
    (``Unavailable``, ``Unauthorized``, ``InvalidInput`` for a profile variable set but
    empty) says so once the provider part is done and reported."""

    def unlocked(why: str) -> None:
        view.info(f"warning: {why}; going on without it", event="warning")

    locked = state.locked("crc down", unlocked) if state is not None else contextlib.nullcontext()
    with locked:
        return _down(
            group, provider, client, view, state, verify_timeout, sleep, unreachable, clock
        )


def _down(
    group: str,
    provider: Provider,
    client: Client | None,
    view: View,
    state: LocalState | None,
    verify_timeout: float,
    sleep: Callable[[float], None],
    unreachable: Unavailable | Unauthorized | InvalidInput | None,
    clock: Callable[[], float],
) -> int:
    t0 = clock()
    report_at = WAIT_REPORT_AFTER
    if client is not None and unreachable is None:
        # Not refused while another `crc up` works on the group (lease.py): said.
        mine = state.data.get("holder") if state is not None else None
        busy = note_for_down(client, group, mine if isinstance(mine, str) else None)
        if busy:
            view.info(f"warning: {busy}", event="warning")

    def destroyed_one(inst: Instance) -> None:
        view.info(f"destroyed {inst.name} ({inst.id})", machine=inst.name, instance=inst.id)

    def waiting(left: list[Instance], errors: dict[str, str], seconds: float) -> None:
        nonlocal report_at
        if seconds < report_at:
            return
        report_at = seconds + WAIT_REPORT_EVERY
        view.info(
            f"still at {provider.name} after {seconds:.0f} s: "
            f"{', '.join(_left_text(i, errors) for i in left)}; checking again every "
            f"{POLL_SECONDS:g} s for up to {max(verify_timeout - seconds, 0):.0f} s more",
            event="waiting",
            left=[i.id for i in left],
            errors=errors,
            seconds=round(seconds, 1),
        )

    gone = destroy_scenario(
        provider,
        group,
        verify_timeout=verify_timeout,
        on_destroyed=destroyed_one,
        on_waiting=waiting,
        sleep=sleep,
        clock=clock,
    )
    destroyed, left = [i.id for i in gone.destroyed], gone.left
    deleted = False
    revoked = 0
    if client is not None and unreachable is None and not left:
        try:
            revoked = int(client.delete_group(group).get("machines_revoked") or 0)
            deleted = True
        except NotFound:
            pass
        except Unavailable as exc:
            unreachable = exc
    if state is not None and not left:
        state.delete()
    doc = {
        "group": group,
        "provider": provider.name,
        "destroyed": destroyed,
        "left": [i.id for i in left],
        "group_deleted": deleted,
        "revoked": revoked,
        "cleaned": gone.cleaned,
        "errors": gone.errors,
        "seconds": round(clock() - t0, 2),
    }
    doc["event"] = "down"
    if left:
        # The group is kept, with the local state: it shows what still bills, and names
        # the provider the next `crc down` asks. Machines the provider refused for good
        # are reported at once, without waiting out the time: say "after" only if it was.
        waited = any(i.id not in gone.refused for i in left)
        view.info(
            f"still at {provider.name}{f' after {verify_timeout:g} s' if waited else ''}: "
            f"{', '.join(_left_text(i, gone.errors) for i in left)}; group {group} is kept "
            f"while they are (`crc status {group}`); to try again: `crc down --group "
            f"{group} --provider {provider.name}` (or `crc down` with the scenario file)",
            **doc,
        )
    else:
        fate = "deleted" if deleted else "already gone"
        if client is None and unreachable is None:
            # Leftovers cleaned up without login: the server was not asked.
            fate = (
                "not checked (not logged in: `crc login`, then `crc down` again if the "
                "server still has it)"
            )
        elif isinstance(unreachable, Unauthorized):
            fate = "not deleted (the server refused the token)"
        elif isinstance(unreachable, InvalidInput):
            fate = "not deleted (the server was not asked)"
        elif unreachable is not None:
            fate = "not deleted (the server cannot be reached)"
        view.info(
            f"{group}: {len(destroyed)} machine(s) destroyed, none left at "
            f"{provider.name}; group {fate}",
            **doc,
        )
        if CLEANUP in gone.errors:
            view.info(
                f"{provider.name} kept what it holds beside the machines (startup scripts): "
                f"{gone.errors[CLEANUP]}; `crc down` again removes it"
            )
    if isinstance(unreachable, InvalidInput):
        raise InvalidInput(
            f"{unreachable.message}; group {group} is not deleted (its keys are not "
            "revoked): run `crc down` again once that is mended"
        )
    if isinstance(unreachable, Unauthorized):
        raise Unauthorized(
            f"{unreachable.message}; group {group} is not deleted (its keys are not "
            "revoked): run `crc down` again once logged in (`crc login`)"
        )
    if unreachable is not None:
        raise Unavailable(
            f"{unreachable.message}; group {group} is not deleted (its keys are not "
            "revoked): run `crc down` again once the server is back"
        )
    return 1 if left else 0
