"""A scenario run (`crc up`) as its runner reports it: the step graph, each step's state,
attempts and timings, and the run's phase.

``crc up`` runs on the master's computer; the server only learns what it is doing
through these reports, so that the dashboard (and anyone following the group's events)
can watch it. A group has at most one run: a new ``crc up`` replaces the previous one,
and reports naming another ``run_id`` are refused (two runners never interleave).
Every change is also an event of the group (``run.started``, ``run.phase``,
``run.step``, ``run.ended``).
"""

from __future__ import annotations

from typing import Any

from ...errors import Conflict, InvalidInput, NotFound
from ...protocol.limits import MAX_SCENARIO_STEPS
from ...protocol.names import check_name
from ..store.base import Tx
from .common import add_event, audit, dumps, live_group, loads, now

__all__ = [
    "PHASES",
    "STEP_STATES",
    "TERMINAL_STEP_STATES",
    "report_run",
    "run_view",
    "start_run",
    "waves",
]

PHASES = ("group", "machines", "ready", "steps", "done")
STEP_STATES = ("pending", "running", "retrying", "succeeded", "failed", "skipped", "done")
TERMINAL_STEP_STATES = frozenset({"succeeded", "failed", "skipped", "done"})
MAX_STEPS = MAX_SCENARIO_STEPS
MAX_MESSAGE = 1000


def start_run(
    tx: Tx,
    user: dict[str, Any],
    group_name: str,
    run_id: str,
    scenario: str,
    steps: list[dict[str, Any]],
) -> dict[str, Any]:
    """Make ``run_id`` the group's run, every step ``pending``; returns the run view.

    ``steps`` in file order, each ``{"name", "kind", "to", "needs", "retries"}``; a step
    may need only steps listed before it (so the graph has no cycle)."""
    group = live_group(tx, user["user_id"], group_name)
    check_name(scenario, "scenario")
    if len(steps) > MAX_STEPS:
        raise InvalidInput(f"{len(steps)} steps; the limit is {MAX_STEPS}", field="steps")
    seen: set[str] = set()
    for i, st in enumerate(steps):
        name = check_name(st["name"], "step name")
        if name in seen:
            raise InvalidInput(f"steps[{i}]: another step is named {name!r}", field="steps")
        for need in st["needs"]:
            if need not in seen:
                raise InvalidInput(
                    f"step {name!r} needs {need!r}, which is not a step listed before it",
                    field="steps",
                )
        seen.add(name)
    t = now()
    tx.execute("DELETE FROM run_steps WHERE group_id = ?", (group["id"],))
    tx.execute("DELETE FROM runs WHERE group_id = ?", (group["id"],))
    tx.execute(
        "INSERT INTO runs (group_id, run_id, scenario, state, phase, started_by, started, "
        "updated) VALUES (?, ?, ?, 'running', 'group', ?, ?, ?)",
        (group["id"], run_id, scenario, user["user"], t, t),
    )
    for i, st in enumerate(steps):
        tx.execute(
            "INSERT INTO run_steps (group_id, name, position, kind, target, needs, retries, "
            "state) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending')",
            (group["id"], st["name"], i, st["kind"], st["to"], dumps(st["needs"]), st["retries"]),
        )
    add_event(
        tx,
        group["id"],
        "run.started",
        {"run_id": run_id, "scenario": scenario, "steps": [s["name"] for s in steps]},
    )
    audit(
        tx,
        user["user_id"],
        user["user"],
        "run.start",
        group_name,
        {"run_id": run_id, "scenario": scenario, "steps": len(steps)},
    )
    view = _view(tx, group)
    assert view is not None  # just inserted
    return view


def report_run(tx: Tx, user: dict[str, Any], group_name: str, report: dict[str, Any]) -> None:
    """Apply one report of the group's current run: ``{"type": "phase"|"step"|"end",
    "run_id", ...}`` (server/models.py has the fields). Conflict when ``run_id`` is not
    the group's current run or the run has ended."""
    group = live_group(tx, user["user_id"], group_name)
    run = tx.one("SELECT * FROM runs WHERE group_id = ?", (group["id"],))
    if run is None or run["run_id"] != report["run_id"]:
        raise Conflict(
            f"run {report['run_id']} is not the current run of group {group_name!r} "
            "(another `crc up` started since)"
        )
    if run["finished"] is not None:
        raise Conflict(f"run {report['run_id']} has ended")
    t = now()
    message = _message(report.get("message"))
    kind = report["type"]
    if kind == "phase":
        tx.execute(
            "UPDATE runs SET phase = ?, message = ?, updated = ? WHERE group_id = ?",
            (report["phase"], message, t, group["id"]),
        )
        data: dict[str, Any] = {"phase": report["phase"], "message": message}
    elif kind == "step":
        row = tx.one(
            "SELECT state, started FROM run_steps WHERE group_id = ? AND name = ?",
            (group["id"], report["step"]),
        )
        if row is None:
            raise NotFound(f"run {run['run_id']} has no step {report['step']!r}", field="step")
        state = report["state"]
        started = row["started"]
        if started is None and state in ("running", "retrying", "succeeded", "failed"):
            started = t
        finished = t if state in TERMINAL_STEP_STATES else None
        tx.execute(
            "UPDATE run_steps SET state = ?, attempt = ?, started = ?, finished = ?, "
            "seconds = ?, message = ? WHERE group_id = ? AND name = ?",
            (
                state,
                report["attempt"],
                started,
                finished,
                report.get("seconds"),
                message,
                group["id"],
                report["step"],
            ),
        )
        tx.execute("UPDATE runs SET updated = ? WHERE group_id = ?", (t, group["id"]))
        data = {
            "step": report["step"],
            "state": state,
            "attempt": report["attempt"],
            "seconds": report.get("seconds"),
            "message": message,
        }
    else:
        state = "succeeded" if report["ok"] else "failed"
        tx.execute(
            "UPDATE runs SET state = ?, phase = 'done', message = ?, updated = ?, finished = ? "
            "WHERE group_id = ?",
            (state, message, t, t, group["id"]),
        )
        data = {"state": state, "message": message}
        audit(
            tx,
            user["user_id"],
            user["user"],
            "run.end",
            group_name,
            {"run_id": run["run_id"], "state": state},
        )
    add_event(tx, group["id"], f"run.{_EVENT[kind]}", {"run_id": run["run_id"], **data})


_EVENT = {"phase": "phase", "step": "step", "end": "ended"}


def _message(value: object) -> str | None:
    if value is None:
        return None
    return str(value)[:MAX_MESSAGE]


def run_view(tx: Tx, user_id: str, group_name: str) -> dict[str, Any]:
    """The group's current run; NotFound when no `crc up` reported one."""
    group = live_group(tx, user_id, group_name)
    view = _view(tx, group)
    if view is None:
        raise NotFound(f"group {group_name!r} has no scenario run (it was not made by `crc up`)")
    return view


def _view(tx: Tx, group: dict[str, Any]) -> dict[str, Any] | None:
    run = tx.one("SELECT * FROM runs WHERE group_id = ?", (group["id"],))
    if run is None:
        return None
    rows = tx.all("SELECT * FROM run_steps WHERE group_id = ? ORDER BY position", (group["id"],))
    steps = [
        {
            "name": r["name"],
            "kind": r["kind"],
            "to": r["target"],
            "needs": loads(r["needs"]) or [],
            "retries": int(r["retries"]),
            "state": r["state"],
            "attempt": int(r["attempt"]),
            "started": r["started"],
            "finished": r["finished"],
            "seconds": r["seconds"],
            "message": r["message"],
        }
        for r in rows
    ]
    return {
        "group": group["name"],
        "run_id": run["run_id"],
        "scenario": run["scenario"],
        "state": run["state"],
        "phase": run["phase"],
        "message": run["message"],
        "started_by": run["started_by"],
        "started": run["started"],
        "updated": run["updated"],
        "finished": run["finished"],
        "steps": steps,
        "waves": waves(steps),
    }


def waves(steps: list[dict[str, Any]]) -> list[list[str]]:
    """Step names by depth: a step is one wave after the deepest step it needs (steps
    need only earlier ones, so one pass in order suffices)."""
    depth: dict[str, int] = {}
    out: list[list[str]] = []
    for st in steps:
        d = 1 + max((depth[n] for n in st["needs"] if n in depth), default=-1)
        depth[st["name"]] = d
        while len(out) <= d:
            out.append([])
        out[d].append(st["name"])
    return out
