"""Jobs: resolve targets, enqueue one ``job.run`` per machine durably, cancel, inspect."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from ...errors import InvalidInput, NotFound
from ...protocol.limits import DEFAULT_JOB_TIMEOUT_SECONDS
from ...protocol.messages import Envelope, HostsSync, JobCancel, JobRun
from ...protocol.names import Target, parse_target
from ...protocol.rollout import KEYS as ROLLOUT_KEYS
from ...protocol.rollout import Rollout
from ...protocol.states import JobStatus, MachineState
from ...protocol.wire import Message
from ..store.base import Tx
from .common import add_event, audit, check_not_expired, dumps, live_group, loads, now
from .rollout import advance, rollout_of, withdraw
from .roster import enrollment_order, hosts_entries, hosts_table, roster
from .streams import enqueue_many, outbox

__all__ = [
    "cancel_job",
    "create_hosts_sync",
    "create_job",
    "create_kind",
    "enqueue",
    "job_group",
    "job_view",
    "list_jobs",
    "resolve_targets",
]


def resolve_targets(tx: Tx, group: dict[str, Any], target: Target) -> list[dict[str, Any]]:
    """Machines of ``group`` that ``target`` names (revoked ones never); errors name the
    unknown machines or say that a selector matched nothing."""
    check_not_expired(group)
    rows = tx.all(
        "SELECT id, name, labels, state, out_next FROM machines WHERE group_id = ? "
        "AND state != ? ORDER BY name",
        (group["id"], MachineState.REVOKED.value),
    )
    by_name = {r["name"]: r for r in rows}
    no_labels: dict[str, str] = {}
    machines = {  # labels are read only to match a selector
        name: (loads(r["labels"]) or {}) if target.selector else no_labels
        for name, r in by_name.items()
    }
    return [by_name[name] for name in target.choose(group["name"], machines)]


def enqueue(
    tx: Tx, machine: dict[str, Any], env: Envelope, job_id: str | None = None
) -> tuple[int, str]:
    """Append ``env`` to the machine's outbox; return ``(seq, frame text)``."""
    return outbox(tx, machine["id"]).add((env, job_id))


def create_job(
    tx: Tx, user: dict[str, Any], group_name: str, to: str, spec: dict[str, Any]
) -> dict[str, Any]:
    """Returns ``{"job_id", "targets": [names], "deliveries": [(machine_id, seq, frame)]}``.

    Committed before the caller sends anything: a job accepted is a job kept. Rate
    control (``max_concurrency``, ``max_errors``, ``batch_wait``, ``canary``,
    ``deliver_within`` in ``spec``: ``protocol/rollout.py``) holds targets back.
    """
    rollout = Rollout.from_body(spec)
    spec = {k: v for k, v in spec.items() if k not in ROLLOUT_KEYS}
    if spec.get("timeout") is None:
        spec = {**spec, "timeout": DEFAULT_JOB_TIMEOUT_SECONDS}
    job_id = uuid.uuid4().hex
    run = JobRun.from_body({**spec, "job_id": job_id})
    summary: dict[str, Any] = {"argv": run.argv, "command": run.command}
    if rollout is not None:
        summary["rollout"] = rollout.to_body()
    return _create(tx, user, group_name, to, run, summary, rollout=rollout)


def create_hosts_sync(
    tx: Tx,
    user: dict[str, Any],
    group_name: str,
    to: str,
    which: str = "auto",
    only_ready: bool = False,
) -> dict[str, Any]:
    """A job that makes every target's hosts file list the group's machines (with
    ``only_ready``: the machines that are, or were, ready - not pending ones). Each
    target gets its own list: under ``auto`` the address of a peer depends on the pair
    (``roster.hosts_entries``)."""
    group = live_group(tx, user["user_id"], group_name)
    parse_target(to)  # a malformed target is the error, whatever the machines reported
    everyone = roster(tx, group["id"])
    machines = everyone
    if only_ready:
        machines = [m for m in machines if m["state"] in ("ready", "offline")]
        if to == "all" and machines:  # nor sent to the others: each gets the list
            to = ",".join(m["name"] for m in machines)  # current when it turns ready
    if not hosts_entries(machines, which):
        raise InvalidInput(
            "no machine of the group has reported an address yet: wait until they are ready"
        )
    job_id = uuid.uuid4().hex
    table = hosts_table(machines, everyone, which, lambda: enrollment_order(tx, group["id"]))

    def per_target(name: str) -> Message:
        return HostsSync(job_id=job_id, group=group_name, entries=tuple(table[name]))

    # The job's spec lists every line some machine gets (one may be there with its
    # private and its public address); each target's own list is in its message.
    listed = list(dict.fromkeys(e for entries in table.values() for e in entries))
    sync = HostsSync(job_id=job_id, group=group_name, entries=tuple(listed))
    return _create(tx, user, group_name, to, sync, {"hosts": listed}, per_target=per_target)


def create_kind(
    tx: Tx,
    user: dict[str, Any],
    group_name: str,
    to: str,
    make: Callable[[str], Message],
    summary: dict[str, Any],
    blob: str | None = None,
) -> dict[str, Any]:
    """A job of another kind than a command (``file.put``, ``file.get``): same targets,
    statuses, events and audit; ``make(job_id)`` builds its message."""
    return _create(tx, user, group_name, to, make(uuid.uuid4().hex), summary, blob)


def _create(
    tx: Tx,
    user: dict[str, Any],
    group_name: str,
    to: str,
    msg: Message,
    summary: dict[str, Any],
    blob: str | None = None,
    rollout: Rollout | None = None,
    per_target: Callable[[str], Message] | None = None,
) -> dict[str, Any]:
    """``per_target(machine name)``: each target's own message (same kind and job)
    instead of ``msg``, which is still what the job's spec records."""
    job_id: str = getattr(msg, "job_id")  # noqa: B009 -- every job message has one
    kind, body = msg.type_name, msg.to_body()
    group = live_group(tx, user["user_id"], group_name)
    target = parse_target(to)
    machines = resolve_targets(tx, group, target)
    t = now()
    rules = dumps(rollout.to_body()) if rollout is not None else None
    check = t + rollout.deliver_within if rollout and rollout.deliver_within else None
    tx.execute(
        "INSERT INTO jobs (id, group_id, spec, target, created, created_by, blob, rollout, "
        "rollout_check) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            job_id,
            group["id"],
            dumps({"type": kind, **body}),
            str(target),
            t,
            user["user"],
            blob,
            rules,
            check,
        ),
    )
    held = rollout is not None and rollout.holds
    # One statement for every target's row, and a few for every job.run (a 1,000-machine
    # job is one transaction of a handful of statements, not of thousands).
    tx.executemany(
        "INSERT INTO job_targets (job_id, machine_id, machine, status, updated, held) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [
            (job_id, m["id"], m["name"], JobStatus.QUEUED.value, t, 1 if held else 0)
            for m in machines
        ],
    )
    deliveries: list[tuple[str, int, str]] = []
    if not held:
        deliveries = enqueue_many(
            tx,
            [
                (
                    m["id"],
                    Envelope.make(
                        group_name,
                        "master",
                        m["name"],
                        kind,
                        per_target(m["name"]).to_body() if per_target else body,
                        job_id,
                    ),
                    job_id,
                )
                for m in machines
            ],
        )
    names = [m["name"] for m in machines]
    created: dict[str, Any] = {
        "job_id": job_id,
        "type": kind,
        "targets": names,
        "spec": body,
        "by": user["user"],
    }
    if rollout is not None:
        created["rollout"] = rollout.to_body()
    add_event(tx, group["id"], "job.created", created, job_id=job_id)
    if held:
        deliveries += advance(tx, job_id, t)
    audit(
        tx,
        user["user_id"],
        user["user"],
        kind,
        group_name,
        {"job_id": job_id, "targets": names, **summary},
    )
    return {"job_id": job_id, "targets": names, "deliveries": deliveries}


def _job(tx: Tx, user_id: str, job_id: str) -> dict[str, Any]:
    """The caller's job ``job_id``; NotFound when it is not theirs or its group was
    deleted (a deleted group is gone for every call: its jobs, events and machines)."""
    row = tx.one(
        "SELECT j.*, g.name AS group_name, g.deleted AS group_deleted FROM jobs j "
        "JOIN groups g ON g.id = j.group_id WHERE j.id = ? AND g.user_id = ?",
        (job_id, user_id),
    )
    if row is None:
        raise NotFound(f"no job {job_id!r}")
    if row["group_deleted"] is not None:
        raise NotFound(f"no job {job_id!r}: its group {row['group_name']!r} was deleted")
    return row


def job_group(tx: Tx, user_id: str, job_id: str) -> dict[str, Any]:
    """``{"group", "group_id"}`` of the caller's job ``job_id`` (NotFound: not theirs,
    or its group is deleted): what a job's event stream needs, without its targets."""
    job = _job(tx, user_id, job_id)
    live_group(tx, user_id, job["group_name"])
    return {"group": job["group_name"], "group_id": job["group_id"]}


def job_view(tx: Tx, user_id: str, job_id: str) -> dict[str, Any]:
    job = _job(tx, user_id, job_id)
    targets = tx.all(
        "SELECT machine, status, exit_code, reason, output_bytes, updated "
        "FROM job_targets WHERE job_id = ? ORDER BY machine",
        (job_id,),
    )
    view = {
        "job_id": job_id,
        "group": job["group_name"],
        "target": job["target"],
        "spec": loads(job["spec"]),
        "created": job["created"],
        "by": job["created_by"],
        "targets": targets,
    }
    rollout = rollout_of(job.get("rollout"))
    if rollout is not None:
        view["rollout"] = rollout.to_body()
    return view


def list_jobs(tx: Tx, user_id: str, group_name: str, limit: int = 50) -> list[dict[str, Any]]:
    """The group's latest ``limit`` jobs, oldest first: what ran (a command, or a push's
    or a pull's path), where, and how it ended per status (``{"succeeded": 2,
    "running": 1}``)."""
    group = live_group(tx, user_id, group_name)
    rows = tx.all(
        "SELECT id, spec, target, created, created_by FROM jobs WHERE group_id = ? "
        "ORDER BY created DESC, id DESC LIMIT ?",
        (group["id"], limit),
    )
    out = []
    for row in reversed(rows):
        spec = loads(row["spec"]) or {}
        counts: dict[str, int] = {}
        for t in tx.all("SELECT status FROM job_targets WHERE job_id = ?", (row["id"],)):
            counts[t["status"]] = counts.get(t["status"], 0) + 1
        out.append(
            {
                "job_id": row["id"],
                "group": group_name,
                "type": spec.get("type"),
                "target": row["target"],
                "argv": spec.get("argv"),
                "command": spec.get("command"),
                "path": spec.get("path"),  # a push's or a pull's file
                "created": row["created"],
                "by": row["created_by"],
                "statuses": counts,
                "done": all(JobStatus(s).terminal for s in counts),
            }
        )
    return out


def cancel_job(tx: Tx, user: dict[str, Any], job_id: str) -> dict[str, Any]:
    """Cancel every unfinished target. Queued targets never start (their ``job.run``
    becomes a ``job.cancel`` in the outbox); started ones get a ``job.cancel``."""
    job = _job(tx, user["user_id"], job_id)
    targets = tx.all(
        "SELECT t.machine_id, t.machine, t.status, t.held, m.group_id, m.out_next, "
        "m.id FROM job_targets t JOIN machines m ON m.id = t.machine_id "
        "WHERE t.job_id = ?",
        (job_id,),
    )
    deliveries = []
    cancelling: list[str] = []
    for t in targets:
        status = JobStatus(t["status"])
        if status.terminal:
            continue
        cancelling.append(t["machine"])
        if status == JobStatus.QUEUED and t["held"]:  # rate control never released it
            _cancelled_before_delivery(tx, job_id, t)
            continue
        if status == JobStatus.QUEUED:
            old = tx.one(
                "SELECT seq FROM outbox WHERE machine_id = ? AND job_id = ? "
                "AND type != 'job.cancel'",
                (t["machine_id"], job_id),
            )
            if old is not None:
                deliveries += withdraw(tx, job_id, job["group_name"], t)
                _cancelled_before_delivery(tx, job_id, t)
                continue
        env = Envelope.of(
            JobCancel(job_id=job_id), job["group_name"], "master", t["machine"], job_id
        )
        seq, frame = enqueue(tx, t, env, job_id)
        deliveries.append((t["machine_id"], seq, frame))
    tx.execute("UPDATE jobs SET rollout_check = NULL WHERE id = ?", (job_id,))
    audit(tx, user["user_id"], user["user"], "job.cancel", job["group_name"], {"job_id": job_id})
    return {"job_id": job_id, "cancelling": cancelling, "deliveries": deliveries}


def _cancelled_before_delivery(tx: Tx, job_id: str, t: dict[str, Any]) -> None:
    reason = "cancelled before delivery"
    tx.execute(
        "UPDATE job_targets SET status = ?, reason = ?, updated = ? "
        "WHERE job_id = ? AND machine_id = ?",
        (JobStatus.CANCELLED.value, reason, now(), job_id, t["machine_id"]),
    )
    add_event(
        tx,
        t["group_id"],
        "job.status",
        {"job_id": job_id, "status": "cancelled", "exit_code": None, "reason": reason},
        machine=t["machine"],
        job_id=job_id,
    )
