"""The server's side of the delivery core (``protocol/delivery.py``): each machine's
outbox (the ``outbox`` table and ``machines.out_next``) and inbox (``machines.in_done``
and the failed attempts at the next message) kept in the store.

The rules (numbering, acks, resync, dedupe, poison messages) are the core's; here is
only how this server stores what they need, inside the operation's transaction.
Acknowledging a ``job.run`` (or another job message) makes the job *delivered*.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ...errors import InvalidInput
from ...protocol.delivery import Inbox, InboxStore, Outbox, OutboxStore
from ...protocol.frames import msg_frames, renumber_frame
from ...protocol.limits import MAX_OUTPUT_KEPT_BYTES
from ...protocol.messages import Envelope
from ...protocol.states import JobEvent, JobStatus, job_next
from ..store.base import JOB_TARGET_SQL, OUTBOX_DROP_SQL, Tx
from .common import add_events, json_text, now

__all__ = [
    "ServerInbox",
    "ServerOutbox",
    "Step",
    "enqueue_many",
    "inbox",
    "job_event",
    "job_report",
    "job_steps",
    "outbox",
]

#: What the server keeps per message: the envelope, and the job it belongs to.
Item = tuple[Envelope, str | None]


class ServerOutbox(OutboxStore[Item]):
    """``m``: the machine's row, when the caller read it in this transaction (saves
    reading it again for ``last_seq`` and for the jobs an ack delivers). ``delivered``:
    a list to which acks append the jobs they deliver, in order, for the caller to
    apply (``job_event(..., JobEvent.DELIVER, ...)``) instead of applying it here."""

    def __init__(
        self,
        tx: Tx,
        machine_id: str,
        m: dict[str, Any] | None = None,
        delivered: list[str] | None = None,
    ) -> None:
        self.tx = tx
        self.machine_id = machine_id
        self.m = m
        self.delivered = delivered

    def take_seq(self) -> int:
        # One statement: the row lock orders concurrent writers (replicas) too.
        row = self.tx.one(
            "UPDATE machines SET out_next = out_next + 1 WHERE id = ? RETURNING out_next",
            (self.machine_id,),
        )
        if row is None:
            raise InvalidInput("machine vanished")
        if self.m is not None:
            self.m["out_next"] = row["out_next"]
        return int(row["out_next"]) - 1

    def last_seq(self) -> int:
        if self.m is not None:
            return int(self.m["out_next"]) - 1
        row = self.tx.one("SELECT out_next FROM machines WHERE id = ?", (self.machine_id,))
        if row is None:
            raise InvalidInput("machine vanished")
        return int(row["out_next"]) - 1

    def skip_to(self, last: int) -> None:
        self.tx.execute(
            "UPDATE machines SET out_next = ? WHERE id = ?", (last + 1, self.machine_id)
        )
        if self.m is not None:
            self.m["out_next"] = last + 1

    def put(self, seq: int, item: Item) -> str:
        env, job_id = item
        frame = next(msg_frames([(seq, env)]))
        self.tx.notify_machine(self.machine_id)
        self.tx.execute(
            "INSERT INTO outbox (machine_id, seq, type, job_id, envelope) VALUES (?, ?, ?, ?, ?)",
            (self.machine_id, seq, env.type, job_id, frame),
        )
        return frame

    def drop_through(self, seq: int) -> int:
        # (may be answered from rows read ahead: ``reads_outbox_drop``)
        gone = self.tx.all(OUTBOX_DROP_SQL, (self.machine_id, seq))
        runs = sorted(
            (int(r["seq"]), r["job_id"])
            for r in gone
            if r["job_id"] is not None and r["type"] != "job.cancel"
        )
        if runs and self.delivered is not None:
            self.delivered.extend(job_id for _, job_id in runs)
        elif runs:
            m = self.m or self.tx.one(
                "SELECT id, group_id, name FROM machines WHERE id = ?", (self.machine_id,)
            )
            assert m is not None
            for _, job_id in runs:
                job_event(self.tx, m, job_id, JobEvent.DELIVER, None, None)
        return len(gone)

    def pending(self, after: int, limit: int) -> list[tuple[int, str]]:
        rows = self.tx.all(
            "SELECT seq, envelope FROM outbox WHERE machine_id = ? AND seq > ? "
            "ORDER BY seq LIMIT ?",
            (self.machine_id, after, limit),
        )
        return [(int(r["seq"]), r["envelope"]) for r in rows]

    def oldest(self) -> int | None:
        row = self.tx.one(
            "SELECT MIN(seq) AS s FROM outbox WHERE machine_id = ?", (self.machine_id,)
        )
        return int(row["s"]) if row and row["s"] is not None else None

    def renumber(self, old: int, new: int) -> None:
        row = self.tx.one(
            "SELECT envelope FROM outbox WHERE machine_id = ? AND seq = ?", (self.machine_id, old)
        )
        if row is None:
            return
        self.tx.execute(
            "UPDATE outbox SET seq = ?, envelope = ? WHERE machine_id = ? AND seq = ?",
            (new, renumber_frame(row["envelope"], new), self.machine_id, old),
        )
        self.tx.notify_machine(self.machine_id)


class ServerInbox(InboxStore):
    """``m`` is the machine's row, read in this transaction (kept current here)."""

    def __init__(self, tx: Tx, m: dict[str, Any]) -> None:
        self.tx = tx
        self.m = m

    def processed(self) -> int:
        return int(self.m["in_done"])

    def set_processed(self, seq: int) -> None:
        t = now()
        self.tx.send(
            "UPDATE machines SET in_done = ?, last_seen = ?, last_in = ? WHERE id = ?",
            (seq, t, t, self.m["id"]),
        )
        self.m["in_done"] = seq

    def attempts(self, seq: int) -> int:
        return int(self.m["in_attempts"]) if self.m["in_attempt_seq"] == seq else 0

    def add_attempt(self, seq: int) -> int:
        count = self.attempts(seq) + 1
        self.tx.execute(
            "UPDATE machines SET in_attempt_seq = ?, in_attempts = ? WHERE id = ?",
            (seq, count, self.m["id"]),
        )
        self.m["in_attempt_seq"], self.m["in_attempts"] = seq, count
        return count

    def reload(self) -> None:
        """Re-read the row (after a rollback to a savepoint undid changes made here)."""
        row = self.tx.one(
            "SELECT in_done, in_attempt_seq, in_attempts FROM machines WHERE id = ?",
            (self.m["id"],),
        )
        assert row is not None
        self.m.update(row)


def outbox(
    tx: Tx, machine_id: str, m: dict[str, Any] | None = None, delivered: list[str] | None = None
) -> Outbox[Item]:
    return Outbox(ServerOutbox(tx, machine_id, m, delivered))


def enqueue_many(
    tx: Tx, items: Sequence[tuple[str, Envelope, str | None]]
) -> list[tuple[str, int, str]]:
    """``outbox(tx, machine_id).add((env, job_id))`` for each of ``items`` (``(machine_id,
    env, job_id)``, one per machine), in a few statements instead of two per machine:
    a job's fan-out. Returns ``(machine_id, seq, frame text)`` in the order of ``items``."""
    seqs: dict[str, int] = {}
    ids = [machine_id for machine_id, _, _ in items]
    if len(set(ids)) != len(ids):
        raise ValueError("enqueue_many: one message per machine")
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        marks = ",".join("?" * len(chunk))
        rows = tx.all(
            # Only "?" placeholders are formatted in: the ids are parameters.
            f"UPDATE machines SET out_next = out_next + 1 WHERE id IN ({marks}) "  # noqa: S608
            "RETURNING id, out_next",
            tuple(chunk),
        )
        for r in rows:
            seqs[r["id"]] = int(r["out_next"]) - 1
    if len(seqs) != len(ids):
        raise InvalidInput("machine vanished")
    rows_out: list[tuple[str, int, str, str | None, str]] = []
    sent: list[tuple[str, int, str]] = []
    frames = msg_frames((seqs[machine_id], env) for machine_id, env, _ in items)
    for (machine_id, env, job_id), frame in zip(items, frames, strict=True):
        seq = seqs[machine_id]
        tx.notify_machine(machine_id)
        rows_out.append((machine_id, seq, env.type, job_id, frame))
        sent.append((machine_id, seq, frame))
    tx.executemany(
        "INSERT INTO outbox (machine_id, seq, type, job_id, envelope) VALUES (?, ?, ?, ?, ?)",
        rows_out,
    )
    return sent


def inbox(tx: Tx, m: dict[str, Any]) -> Inbox:
    return Inbox(ServerInbox(tx, m))


#: One step of a job target's history (see ``job_steps``): a status change
#: ``(event, exit_code, reason)`` or a chunk of output ``(stream, data)``.
Step = tuple[JobEvent, int | None, str | None] | tuple[str, str]


def job_event(
    tx: Tx,
    m: dict[str, Any],
    job_id: str,
    event: JobEvent,
    exit_code: int | None,
    reason: str | None,
) -> list[tuple[str, int, str]]:
    """Move machine ``m``'s target of job ``job_id`` by ``event`` (see states.py); a
    duplicate or late report (a result after a cancel won) is ignored. A target of a
    job with rate control that ends lets the rules start others: returned is what to
    send (``(machine_id, seq, frame)``)."""
    return job_steps(tx, m, job_id, [(event, exit_code, reason)])


def job_steps(
    tx: Tx, m: dict[str, Any], job_id: str, steps: Sequence[Step], reported: bool = False
) -> list[tuple[str, int, str]]:
    """``job_report``, with what changed nothing releasing nothing either."""
    return job_report(tx, m, job_id, steps, reported) or []


def job_report(
    tx: Tx, m: dict[str, Any], job_id: str, steps: Sequence[Step], reported: bool = False
) -> list[tuple[str, int, str]] | None:
    """Apply ``steps`` to machine ``m``'s target of job ``job_id``, in order, as one
    ``job_event`` per status change and one kept chunk per output step would, with one
    read and one write of the target whatever the number of steps (a short job's start,
    output and result arrive together: ``job.fold``). Each status change the transition
    table allows is a ``job.status`` event; output is kept up to
    ``MAX_OUTPUT_KEPT_BYTES`` per target (then cut, with a marker) as ``job.output``
    events, and none once the target has ended. A target held back by rate control was
    never sent to the machine: what it reports about it changes nothing. Returns what
    the rate-control rules release when the target ended. ``reported``: the steps are
    the machine's own report (``job.started``, ``job.output``, ``job.result``), refused
    (InvalidInput, nothing changed) when the job has no target on the machine. None:
    the steps changed nothing (a target ended already, output past what is kept, a
    target never sent to the machine), and nothing was written."""
    jt = tx.one(JOB_TARGET_SQL, (job_id, m["id"]))  # may be read ahead (``reads_job_target``)
    if jt is None and reported:
        # Another machine's job, or none: a hostile or confused machine, told so.
        raise InvalidInput(f"job {job_id!r} was not sent to this machine", field="job_id")
    if jt is None or jt["held"]:
        return None  # not this machine's, or held back by rate control: never sent to it
    walk = _walk(
        job_id,
        JobStatus(jt["status"]),
        jt["exit_code"],
        jt["reason"],
        int(jt["output_bytes"]),
        steps,
    )
    if not walk.events:
        return None
    if walk.moved:
        tx.send(
            "UPDATE job_targets SET status = ?, exit_code = ?, reason = ?, output_bytes = ?, "
            "updated = ? WHERE job_id = ? AND machine_id = ?",
            (walk.status.value, walk.exit_code, walk.reason, walk.kept, now(), job_id, m["id"]),
        )
    else:
        tx.send(
            "UPDATE job_targets SET output_bytes = ? WHERE job_id = ? AND machine_id = ?",
            (walk.kept, job_id, m["id"]),
        )
    return _ended(tx, m, job_id, walk, jt["rollout"])


@dataclass
class _Walk:
    """A target after its steps (``job_steps``): its row's new values, and its events."""

    status: JobStatus
    exit_code: int | None
    reason: str | None
    kept: int
    moved: bool = False
    ended: bool = False
    events: list[tuple[str, dict[str, Any] | str]] = field(default_factory=list)


def _walk(
    job_id: str,
    status: JobStatus,
    exit_code: int | None,
    reason: str | None,
    kept: int,
    steps: Sequence[Step],
) -> _Walk:
    walk = _Walk(status, exit_code, reason, kept)
    events = walk.events
    for step in steps:
        if len(step) == 3:
            event, code, why = step
            nxt = job_next(walk.status, event)
            if nxt is None:
                continue
            walk.status, walk.exit_code, walk.reason = nxt, code, why
            walk.moved, walk.ended = True, walk.ended or nxt.terminal
            # {"job_id", "status", "exit_code", "reason"}, as dumps would write it
            change = (
                f'{{"job_id":{json_text(job_id)},"status":{json_text(nxt.value)},'
                f'"exit_code":{json_text(code)},"reason":{json_text(why)}}}'
            )
            events.append(("job.status", change))
            continue
        stream, data = step
        if walk.kept >= MAX_OUTPUT_KEPT_BYTES or walk.status.terminal:
            continue  # over the limit, or after the target's end: its record is final
        size = len(data.encode())
        if walk.kept + size > MAX_OUTPUT_KEPT_BYTES:
            data = data.encode()[: MAX_OUTPUT_KEPT_BYTES - walk.kept].decode(errors="ignore")
            data += f"\n[crc: output truncated at {MAX_OUTPUT_KEPT_BYTES} bytes]\n"
            size = MAX_OUTPUT_KEPT_BYTES - walk.kept
        walk.kept += size
        events.append(("job.output", {"job_id": job_id, "stream": stream, "data": data}))
    return walk


def _ended(
    tx: Tx, m: dict[str, Any], job_id: str, walk: _Walk, rollout: str | None
) -> list[tuple[str, int, str]]:
    """Record ``walk``'s events; what the rate-control rules release if it ended."""
    add_events(tx, m["group_id"], walk.events, machine=m["name"], job_id=job_id)
    if walk.ended and rollout is not None:
        from .rollout import advance  # the rules release the next targets

        return advance(tx, job_id)
    return []
