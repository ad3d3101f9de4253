"""Rate control run by the server: the rules are ``protocol/rollout.py``'s, applied
here to a job's targets inside the transaction that changed them.

A job with rate control keeps its ``rollout`` (the rules, as JSON) and
``rollout_check`` (when to look again without a target ending; NULL: only when one
ends). Its held targets (``held = 1``) have no ``job.run`` in their machine's outbox
until ``advance`` releases them; a target ending (``streams.job_event``) and the
server's rollout loop (``due``) call ``advance``. Everything it decides is committed
with what caused it, so a master that goes away changes nothing.
"""

from __future__ import annotations

import time
from typing import Any

from ...protocol.frames import Msg, write_frame
from ...protocol.messages import Envelope, JobCancel, JobRun
from ...protocol.rollout import Limit, Plan, Rollout, TargetState, plan
from ...protocol.states import JobStatus
from ..store.base import Tx
from .common import add_event, loads, now
from .streams import outbox

__all__ = ["advance", "due", "due_jobs", "rollout_of", "withdraw"]

Deliveries = list[tuple[str, int, str]]


def rollout_of(text: str | None) -> Rollout | None:
    """The stored rules (written by ``Rollout.to_body``) back as a ``Rollout``."""
    doc = loads(text) if text else None
    if not isinstance(doc, dict):
        return None

    def limit(key: str) -> Limit | None:
        value = doc.get(key)
        if value is None:
            return None
        text = str(value)
        return Limit(int(text.rstrip("%")), text.endswith("%"))

    return Rollout(
        max_concurrency=limit("max_concurrency"),
        max_errors=limit("max_errors"),
        batch_wait=doc.get("batch_wait"),
        canary=doc.get("canary"),
        deliver_within=doc.get("deliver_within"),
    )


def advance(tx: Tx, job_id: str, at: float | None = None) -> Deliveries:
    """Apply the rules to the job now: release, skip, expire; return what to send."""
    job = tx.one(
        "SELECT j.id, j.group_id, j.spec, j.created, j.rollout, g.name AS group_name "
        "FROM jobs j JOIN groups g ON g.id = j.group_id WHERE j.id = ?",
        (job_id,),
    )
    rollout = rollout_of(job["rollout"]) if job is not None else None
    if job is None or rollout is None:
        return []
    rows = tx.all(
        "SELECT t.machine_id, t.machine, t.status, t.held, t.updated, m.out_next "
        "FROM job_targets t JOIN machines m ON m.id = t.machine_id "
        "WHERE t.job_id = ? ORDER BY t.machine",
        (job_id,),
    )
    targets = [
        TargetState(r["machine"], JobStatus(r["status"]), bool(r["held"]), float(r["updated"]))
        for r in rows
    ]
    t = time.time() if at is None else at
    decided = plan(rollout, targets, float(job["created"]), t)
    by_name = {r["machine"]: r for r in rows}
    deliveries = _release(tx, job, [by_name[n] for n in decided.release])
    for name in decided.skip:
        _end(tx, job, by_name[name], JobStatus.SKIPPED, decided.skip_reason)
    for name in decided.expire:
        row = by_name[name]
        reason = f"not reached within {rollout.deliver_within:g} s (--deliver-within)"
        if not row["held"]:
            deliveries += withdraw(tx, job_id, job["group_name"], row)
        _end(tx, job, row, JobStatus.EXPIRED, reason)
    _schedule(tx, job_id, decided)
    return deliveries


def _schedule(tx: Tx, job_id: str, decided: Plan) -> None:
    tx.execute("UPDATE jobs SET rollout_check = ? WHERE id = ?", (decided.next_check, job_id))


def _release(tx: Tx, job: dict[str, Any], rows: list[dict[str, Any]]) -> Deliveries:
    if not rows:
        return []
    spec = dict(loads(job["spec"]) or {})
    spec.pop("type", None)
    msg = JobRun.from_body(spec)
    deliveries = []
    for r in rows:
        env = Envelope.of(msg, job["group_name"], "master", r["machine"], job["id"])
        seq, frame = outbox(tx, r["machine_id"]).add((env, job["id"]))
        deliveries.append((r["machine_id"], seq, frame))
        tx.execute(
            "UPDATE job_targets SET held = 0, updated = ? WHERE job_id = ? AND machine_id = ?",
            (now(), job["id"], r["machine_id"]),
        )
    return deliveries


def _end(
    tx: Tx, job: dict[str, Any], row: dict[str, Any], status: JobStatus, reason: str | None
) -> None:
    tx.execute(
        "UPDATE job_targets SET status = ?, reason = ?, updated = ? "
        "WHERE job_id = ? AND machine_id = ? AND status = ?",
        (status.value, reason, now(), job["id"], row["machine_id"], JobStatus.QUEUED.value),
    )
    add_event(
        tx,
        job["group_id"],
        "job.status",
        {"job_id": job["id"], "status": status.value, "exit_code": None, "reason": reason},
        machine=row["machine"],
        job_id=job["id"],
    )


def withdraw(tx: Tx, job_id: str, group_name: str, row: dict[str, Any]) -> Deliveries:
    """A queued target's ``job.run`` is still in its outbox (not acknowledged): it
    becomes a ``job.cancel`` before start there, and a ``job.cancel`` follows, in case
    the agent already received (and started) it while its ack is on the way."""
    machine_id = row["machine_id"]
    old = tx.one(
        "SELECT seq FROM outbox WHERE machine_id = ? AND job_id = ? AND type != 'job.cancel'",
        (machine_id, job_id),
    )
    if old is not None:
        env = Envelope.of(
            JobCancel(job_id=job_id, before_start=True),
            group_name,
            "master",
            row["machine"],
            job_id,
        )
        frame = write_frame(Msg(seq=int(old["seq"]), msg=env.to_dict()))
        tx.execute(
            "UPDATE outbox SET type = 'job.cancel', envelope = ? WHERE machine_id = ? AND seq = ?",
            (frame, machine_id, old["seq"]),
        )
    env = Envelope.of(JobCancel(job_id=job_id), group_name, "master", row["machine"], job_id)
    seq, frame = outbox(tx, machine_id).add((env, job_id))
    return [(machine_id, seq, frame)]


def due_jobs(tx: Tx, at: float) -> list[str]:
    """Jobs whose rules want a look by ``at`` (a read: the loop writes only if any)."""
    rows = tx.all(
        "SELECT id FROM jobs WHERE rollout_check IS NOT NULL AND rollout_check <= ? "
        "ORDER BY rollout_check LIMIT 100",
        (at,),
    )
    return [r["id"] for r in rows]


def due(tx: Tx, job_ids: list[str], at: float) -> Deliveries:
    """Advance the jobs that are (still) due by ``at``."""
    deliveries: Deliveries = []
    for job_id in job_ids:
        row = tx.one("SELECT rollout_check FROM jobs WHERE id = ?", (job_id,))
        if row is None or row["rollout_check"] is None or float(row["rollout_check"]) > at:
            continue  # another replica took it meanwhile
        deliveries += advance(tx, job_id, at)
    return deliveries
