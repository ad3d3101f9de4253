"""The server's side of the delivery core (``protocol/delivery.py``): each machine's
outbox (the ``outbox`` table and ``machines.out_next``) and inbox (``machines.in_done``
and the failed attempts at the next message) kept in the store.

The rules (numbering, acks, resync, dedupe, poison messages) are the core's; here is
only how this server stores what they need, inside the operation's transaction.
Acknowledging a ``job.run`` (or another job message) makes the job *delivered*.
"""

from __future__ import annotations

from typing import Any

from ...errors import InvalidInput
from ...protocol.delivery import Inbox, InboxStore, Outbox, OutboxStore
from ...protocol.frames import Msg, renumber_frame, write_frame
from ...protocol.messages import Envelope
from ...protocol.states import JobEvent, JobStatus, job_next
from ..store.base import Tx
from .common import add_event, now

__all__ = ["ServerInbox", "ServerOutbox", "inbox", "job_event", "outbox"]

#: What the server keeps per message: the envelope, and the job it belongs to.
Item = tuple[Envelope, str | None]


class ServerOutbox(OutboxStore[Item]):
    def __init__(self, tx: Tx, machine_id: str) -> None:
        self.tx = tx
        self.machine_id = machine_id

    def take_seq(self) -> int:
        # One statement: the row lock orders concurrent writers (replicas) too.
        row = self.tx.one(
            "UPDATE machines SET out_next = out_next + 1 WHERE id = ? RETURNING out_next",
            (self.machine_id,),
        )
        if row is None:
            raise InvalidInput("machine vanished")
        return int(row["out_next"]) - 1

    def last_seq(self) -> int:
        row = self.tx.one("SELECT out_next FROM machines WHERE id = ?", (self.machine_id,))
        if row is None:
            raise InvalidInput("machine vanished")
        return int(row["out_next"]) - 1

    def skip_to(self, last: int) -> None:
        self.tx.execute(
            "UPDATE machines SET out_next = ? WHERE id = ?", (last + 1, self.machine_id)
        )

    def put(self, seq: int, item: Item) -> str:
        env, job_id = item
        frame = write_frame(Msg(seq=seq, msg=env.to_dict()))
        self.tx.notify_machine(self.machine_id)
        self.tx.execute(
            "INSERT INTO outbox (machine_id, seq, type, job_id, envelope) VALUES (?, ?, ?, ?, ?)",
            (self.machine_id, seq, env.type, job_id, frame),
        )
        return frame

    def drop_through(self, seq: int) -> int:
        runs = self.tx.all(
            "SELECT job_id FROM outbox WHERE machine_id = ? AND seq <= ? "
            "AND job_id IS NOT NULL AND type != 'job.cancel'",
            (self.machine_id, seq),
        )
        removed = self.tx.execute(
            "DELETE FROM outbox WHERE machine_id = ? AND seq <= ?", (self.machine_id, seq)
        )
        if runs:
            m = self.tx.one(
                "SELECT id, group_id, name FROM machines WHERE id = ?", (self.machine_id,)
            )
            assert m is not None
            for r in runs:
                job_event(self.tx, m, r["job_id"], JobEvent.DELIVER, None, None)
        return removed

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
        self.tx.send(
            "UPDATE machines SET in_done = ?, last_seen = ? WHERE id = ?",
            (seq, now(), self.m["id"]),
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


def outbox(tx: Tx, machine_id: str) -> Outbox[Item]:
    return Outbox(ServerOutbox(tx, machine_id))


def inbox(tx: Tx, m: dict[str, Any]) -> Inbox:
    return Inbox(ServerInbox(tx, m))


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
    jt = tx.one(
        "SELECT t.status, j.rollout FROM job_targets t JOIN jobs j ON j.id = t.job_id "
        "WHERE t.job_id = ? AND t.machine_id = ?",
        (job_id, m["id"]),
    )
    if jt is None:
        return []
    nxt = job_next(JobStatus(jt["status"]), event)
    if nxt is None:
        return []
    tx.send(
        "UPDATE job_targets SET status = ?, exit_code = ?, reason = ?, updated = ? "
        "WHERE job_id = ? AND machine_id = ?",
        (nxt.value, exit_code, reason, now(), job_id, m["id"]),
    )
    add_event(
        tx,
        m["group_id"],
        "job.status",
        {"job_id": job_id, "status": nxt.value, "exit_code": exit_code, "reason": reason},
        machine=m["name"],
        job_id=job_id,
    )
    if nxt.terminal and jt["rollout"] is not None:
        from .rollout import advance  # the rules release the next targets

        return advance(tx, job_id)
    return []
