"""Targets whose machine never reported their end.

The agent enforces a job's timeout and reports ``timed_out``; a target still
``delivered`` or ``running`` a grace after its timeout, on a machine connected for at
least that long and silent for as long, means its agent hung. The grace (``grace_for``)
is the server's agent silence timeout plus ``OVERDUE_GRACE``: a machine that vanished is
shown connected until its silence closes the connection, and must be offline by then.
Such a target ends ``lost``, with the reason, so that a master following the job (``crc
run``, a scenario step) is not left waiting for ever; what the machine reports later
about it changes nothing (an ended target's record is final). A machine that is offline
is waited for: what it did meanwhile is delivered when it comes back (docs/delivery.md),
and one that just came back has the grace to say so. So is one that sent anything within
the grace (``machines.last_in``): an agent catching up on a backlog sends its messages
in order, slowly on a slow link, and a result it is still on its way to is not
acknowledged then ignored; for ``OVERDUE_MAX_GRACES`` graces at most, so that a hung job
beside an agent that keeps sending other things (progress, other jobs) still ends. Only
``job.run`` targets have a timeout: a file transfer runs as long as its bytes keep
coming.

The server's touch loop (``app.py``) calls these: a read finds the candidates, a write
ends those still overdue (another replica may have ended them meanwhile).
"""

from __future__ import annotations

from typing import Any

from ...protocol.states import JobEvent
from ..store.base import Tx
from .common import loads
from .streams import job_steps

__all__ = ["OVERDUE_GRACE", "OVERDUE_MAX_GRACES", "end_overdue", "grace_for", "overdue_targets"]

#: Seconds past a target's timeout, beyond the agent silence timeout, after which the
#: server stops waiting for its end.
OVERDUE_GRACE = 120.0


#: A connected machine that keeps sending (other jobs' output, progress, messages) but
#: never ends a target is given this many graces past the job's timeout at most (20
#: minutes with the default agent silence timeout): a backlog it works through is seldom
#: that long, and a hung job runner beside a chatty agent must not keep its master
#: waiting for ever.
OVERDUE_MAX_GRACES = 5


def grace_for(agent_silence_timeout: float) -> float:
    """The grace past a job's timeout: the silence that shows a vanished machine
    offline, and ``OVERDUE_GRACE`` more (240 s with the default 120 s timeout)."""
    return agent_silence_timeout + OVERDUE_GRACE


_OPEN = (
    "SELECT job_id, machine_id, updated FROM job_targets "
    "WHERE status IN ('delivered', 'running') AND updated < ?"
)

Deliveries = list[tuple[str, int, str]]


def _timeouts(tx: Tx, job_ids: set[str]) -> dict[str, float | None]:
    """Each job's timeout, None for a job without one (not a ``job.run``)."""
    out: dict[str, float | None] = {}
    for job_id in job_ids:
        row = tx.one("SELECT spec FROM jobs WHERE id = ?", (job_id,))
        spec = loads(row["spec"]) if row is not None else None
        out[job_id] = None
        if isinstance(spec, dict) and spec.get("type") == "job.run":
            timeout = spec.get("timeout")
            if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
                out[job_id] = float(timeout)
    return out


def _last_in(tx: Tx, machine_id: str, since: float) -> float | None:
    """When the machine last sent a message (``last_in``), if it has been connected
    since ``since`` (no state change after it); None if it is offline or connected
    later. A connection older than the events kept counts as old."""
    m = tx.one("SELECT group_id, name, state, last_in FROM machines WHERE id = ?", (machine_id,))
    if m is None or m["state"] not in ("enrolled", "ready"):
        return None
    last = tx.one(
        "SELECT created FROM events WHERE group_id = ? AND machine = ? "
        "AND type = 'machine.state' ORDER BY id DESC LIMIT 1",
        (m["group_id"], m["name"]),
    )
    if last is not None and float(last["created"]) >= since:
        return None
    return float(m["last_in"])


def _overdue(tx: Tx, at: float, grace: float) -> list[dict[str, Any]]:
    rows = tx.all(_OPEN, (at - grace,))
    timeouts = _timeouts(tx, {r["job_id"] for r in rows})
    heard: dict[str, float | None] = {}
    out = []
    for r in rows:
        timeout = timeouts[r["job_id"]]
        if timeout is None or float(r["updated"]) + timeout + grace >= at:
            continue
        mid = r["machine_id"]
        if mid not in heard:
            heard[mid] = _last_in(tx, mid, at - grace)
        last_in = heard[mid]
        if last_in is None:
            continue  # offline, or just back: waited for
        silent = last_in < at - grace
        if silent or float(r["updated"]) + timeout + OVERDUE_MAX_GRACES * grace < at:
            out.append({**r, "timeout": timeout, "silent": silent})
    return out


def overdue_targets(tx: Tx, at: float, grace: float = OVERDUE_GRACE) -> list[tuple[str, str]]:
    """``(job_id, machine_id)`` of the targets overdue at ``at`` (a read)."""
    return [(r["job_id"], r["machine_id"]) for r in _overdue(tx, at, grace)]


def end_overdue(tx: Tx, at: float, grace: float = OVERDUE_GRACE) -> Deliveries:
    """End ``lost`` every target still overdue at ``at``; what rate control releases."""
    deliveries: Deliveries = []
    for r in _overdue(tx, at, grace):
        m = tx.one("SELECT id, name, group_id FROM machines WHERE id = ?", (r["machine_id"],))
        if m is None:
            continue
        if r["silent"]:
            reason = (
                f"the machine reported no end {grace:g} s after the job's timeout "
                f"({r['timeout']:g} s): its agent hung, or the machine went away"
            )
        else:
            reason = (
                f"the machine reported no end {OVERDUE_MAX_GRACES * grace:g} s after the "
                f"job's timeout ({r['timeout']:g} s), while it kept sending other "
                "messages: its agent's job runner hung"
            )
        deliveries += job_steps(tx, dict(m), r["job_id"], [(JobEvent.LOSE, None, reason)])
        tx.notify(m["group_id"])
    return deliveries
