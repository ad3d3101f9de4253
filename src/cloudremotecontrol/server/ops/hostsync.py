"""Hosts files of ``--sync-hosts`` groups kept current, at a bounded cost.

When the addresses a group's hosts files list change (a machine joins, reconnects from
elsewhere, reports new addresses), every machine of the group gets a hosts sync job,
each message carrying the whole table: N messages of N entries. A machine's facts are
only what it claims, and one that reports new addresses in every message must not cost
that every time. So a group syncs at most once per window: the first change is synced at
once, and opens a window of ``WINDOW`` seconds (``groups.hosts_due``: when it ends;
``groups.hosts_window``: how long it is); changes inside it change nothing (not even a
read of the roster) until it ends, when the server's loop (``due_groups``, ``sync_due``)
syncs the table as it is then, if it differs from the one last synced. A window that
ends with something to sync opens the next one twice as long, up to ``MAX_WINDOW``:
changes that never stop cost a round per minute, not one per 5 seconds for ever. One
that ends with nothing to sync closes, and the next change is synced at once again. The
last table always reaches every machine, a window after it changed at most. The window
is in the database: any replica ends it.

A machine keeps one automatic hosts sync waiting at most (offline, it acknowledges
none): the agent writes the whole table, so only the newest matters, and a newer one
supersedes those still in its outbox (``_supersede``). And a group keeps the jobs of its
newest ``KEEP`` finished automatic syncs, no more (``_prune``): each leaves N targets,
and nobody follows them once they ended (what they did stays in the group's events).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from typing import Any

from ...errors import CrcError
from ...protocol.frames import Msg, write_frame
from ...protocol.messages import Envelope, JobCancel
from ...protocol.states import JobStatus
from ..store.base import Tx
from .common import add_event, dumps, loads, now

__all__ = ["KEEP", "MAX_WINDOW", "WINDOW", "auto_hosts_sync", "due_groups", "sync_due"]

log = logging.getLogger("crc.server")
Deliveries = list[tuple[str, int, str]]

#: Seconds between two automatic hosts syncs of one group, at least.
WINDOW = 5.0
#: ... while changes keep coming: each window that ends with a change doubles the next.
MAX_WINDOW = 60.0
#: Finished automatic hosts syncs whose jobs a group keeps (``crc job list``).
KEEP = 3
#: Older ones forgotten at most per sync (``_prune``).
PRUNE_BATCH = 100
#: Who the jobs of automatic hosts syncs are by (``crc job list``, the audit record).
BY = "crc (--sync-hosts)"


def auto_hosts_sync(tx: Tx, group_id: str, at: float | None = None) -> Deliveries:
    """For groups created with ``--sync-hosts``: when the roster's addresses changed,
    start a hosts sync job for every machine, unless the group synced less than
    ``WINDOW`` seconds ago (then the end of the window does). Unchanged addresses start
    nothing. Returns what to send."""
    group = tx.one("SELECT * FROM groups WHERE id = ? AND deleted IS NULL", (group_id,))
    settings = loads(group["settings"]) if group else None
    if group is None or not settings or not settings.get("sync_hosts"):
        return []
    t = now() if at is None else at
    due = group.get("hosts_due")
    if due is not None and float(due) > t:
        return []  # inside the window: its end syncs what changed meanwhile
    return _sync(tx, group, settings, t)


def _sync(tx: Tx, group: dict[str, Any], settings: dict[str, Any], t: float) -> Deliveries:
    from .jobs import create_hosts_sync
    from .roster import enrollment_order, hosts_table, roster

    group_id = group["id"]
    which = str(settings.get("hosts_ip") or "auto")
    live = [m for m in roster(tx, group_id) if m["state"] in ("ready", "offline")]
    # What each machine's hosts file gets.
    table = hosts_table(live, live, which, lambda: enrollment_order(tx, group_id))
    listed = sorted((name, sorted(entries)) for name, entries in table.items())
    digest = hashlib.sha256(dumps(listed).encode()).hexdigest()
    due = group.get("hosts_due")
    if not any(table.values()) or settings.get("hosts_synced") == digest:
        if due is not None:  # a window ended with nothing to sync: the next change goes at once
            tx.execute(
                "UPDATE groups SET hosts_due = NULL, hosts_window = NULL WHERE id = ?",
                (group_id,),
            )
        return []
    # The first change after a quiet spell opens the shortest window; a window that ended
    # with something to sync (changes keep coming) opens one twice as long. (A change
    # after its end that the loop, looking every second, has not ended yet counts in it.)
    window = WINDOW if due is None else min(2 * float(group["hosts_window"] or WINDOW), MAX_WINDOW)
    settings["hosts_synced"] = digest
    tx.execute(
        "UPDATE groups SET settings = ?, hosts_due = ?, hosts_window = ? WHERE id = ?",
        (dumps(settings), t + window, window, group_id),
    )
    user = {"user_id": group["user_id"], "user": BY}
    result = create_hosts_sync(tx, user, group["name"], "all", which, only_ready=True)
    _supersede(tx, group, result["job_id"])
    _prune(tx, group_id)
    return list(result["deliveries"])


def _supersede(tx: Tx, group: dict[str, Any], newer: str) -> None:
    """The group's automatic hosts syncs still in a machine's outbox (not acknowledged),
    other than ``newer``, are cancelled before start: each becomes a ``job.cancel`` in
    its place in the machine's stream (an agent that got the sync before it went away
    writes that table, then the newer one; an agent that did not never sees it). One
    statement finds them; none are there while every machine keeps up.

    Each statement that rewrites one checks again what it rewrites (a target still
    queued, a row still a hosts sync of that job), and only what the targets' update
    returns is rewritten and reported: what this transaction read is all there is today
    (SQLite writes one transaction at a time; on PostgreSQL a row another replica
    changed since fails the update, and the op runs again), but a started or delivered
    sync is never turned into a cancel, whatever reads come before."""
    rows = tx.all(
        "SELECT o.machine_id, o.seq, o.job_id, m.name FROM machines m "
        "JOIN outbox o ON o.machine_id = m.id JOIN jobs j ON j.id = o.job_id "
        "JOIN job_targets t ON t.job_id = o.job_id AND t.machine_id = o.machine_id "
        "WHERE m.group_id = ? AND o.type = 'hosts.sync' AND o.job_id != ? "
        "AND j.created_by = ? AND t.status = ?",
        (group["id"], newer, BY, JobStatus.QUEUED.value),
    )
    if not rows:
        return
    reason = f"superseded by hosts sync {newer}"
    t = now()
    waiting = {(r["job_id"], r["machine_id"]): r for r in rows}
    by_job: dict[str, list[str]] = {}
    for r in rows:
        by_job.setdefault(r["job_id"], []).append(r["machine_id"])
    cancelled: list[dict[str, Any]] = []
    for job_id, machine_ids in by_job.items():
        for chunk, marks in _chunks(machine_ids):
            done = tx.all(
                # Only "?" placeholders are formatted in: the ids are parameters.
                "UPDATE job_targets SET status = ?, reason = ?, updated = ? "  # noqa: S608
                f"WHERE job_id = ? AND status = ? AND machine_id IN ({marks}) "
                "RETURNING machine_id",
                (JobStatus.CANCELLED.value, reason, t, job_id, JobStatus.QUEUED.value, *chunk),
            )
            cancelled += [waiting[(job_id, d["machine_id"])] for d in done]
    frames = []
    for r in cancelled:
        cancel = JobCancel(job_id=r["job_id"], before_start=True)
        env = Envelope.of(cancel, group["name"], "master", r["name"], r["job_id"])
        frame = write_frame(Msg(seq=int(r["seq"]), msg=env.to_dict()))
        frames.append((frame, r["machine_id"], r["seq"], r["job_id"]))
        tx.notify_machine(r["machine_id"])
    tx.executemany(
        "UPDATE outbox SET type = 'job.cancel', envelope = ? "
        "WHERE machine_id = ? AND seq = ? AND type = 'hosts.sync' AND job_id = ?",
        frames,
    )
    for r in cancelled:
        add_event(
            tx,
            group["id"],
            "job.status",
            {"job_id": r["job_id"], "status": "cancelled", "exit_code": None, "reason": reason},
            machine=r["name"],
            job_id=r["job_id"],
        )


#: Target statuses of a job still under way (``_prune`` keeps its job).
_OPEN = (JobStatus.QUEUED.value, JobStatus.DELIVERED.value, JobStatus.RUNNING.value)


def _prune(tx: Tx, group_id: str) -> None:
    """Forget the jobs of the group's finished automatic hosts syncs but the newest
    ``KEEP`` (those of every target ended), ``PRUNE_BATCH`` at most at a time (a group
    with a long history, from before this limit, is pruned over its next syncs, never in
    one long write): their rows and their targets'. A sync still under way anywhere is
    kept, however old, and so is one still in a machine's outbox (a machine that has it
    will report on it). Their events stay (retention forgets them with the others), so
    no event stream or cursor sees a difference; a job that is gone reads as unknown
    (``crc job show``: not found), and what a machine still says of it (an ack of its
    message, a late report) finds no target, as for any job not sent to it. Rows of the
    outbox naming it (a ``job.cancel`` in place of one superseded) stay: they are
    numbered messages of the machine's stream."""
    rows = tx.all(
        "SELECT id FROM jobs j WHERE group_id = ? AND created_by = ? AND NOT EXISTS "
        "(SELECT 1 FROM job_targets t WHERE t.job_id = j.id AND t.status IN (?, ?, ?)) "
        "ORDER BY created DESC, id DESC",
        (group_id, BY, *_OPEN),
    )
    old = [r["id"] for r in rows[KEEP : KEEP + PRUNE_BATCH]]
    if not old:
        return
    waiting = {
        r["job_id"]
        for r in tx.all(
            "SELECT o.job_id FROM machines m JOIN outbox o ON o.machine_id = m.id "
            "WHERE m.group_id = ? AND o.type = 'hosts.sync'",
            (group_id,),
        )
    }
    for chunk, marks in _chunks([job for job in old if job not in waiting]):
        # Only "?" placeholders are formatted in: the ids are parameters.
        tx.send(f"DELETE FROM job_targets WHERE job_id IN ({marks})", chunk)  # noqa: S608
        tx.send(f"DELETE FROM jobs WHERE id IN ({marks})", chunk)  # noqa: S608


def _chunks(ids: list[str], size: int = 500) -> Iterator[tuple[list[str], str]]:
    """``ids`` in chunks a statement's ``IN (...)`` takes, each with its placeholders."""
    for i in range(0, len(ids), size):
        chunk = ids[i : i + size]
        yield chunk, ",".join("?" * len(chunk))


def due_groups(tx: Tx, at: float) -> list[str]:
    """Groups whose sync window ended by ``at`` (a read: the loop writes only if any)."""
    rows = tx.all(
        "SELECT id FROM groups WHERE hosts_due IS NOT NULL AND hosts_due <= ? "
        "AND deleted IS NULL ORDER BY hosts_due LIMIT 100",
        (at,),
    )
    return [r["id"] for r in rows]


def sync_due(tx: Tx, group_ids: list[str], at: float) -> Deliveries:
    """End the windows of ``group_ids`` that are (still: another replica may have) over
    by ``at``: sync what changed in them. A group that cannot be synced (it expired
    meanwhile) ends its window with nothing sent, and never blocks the others."""
    deliveries: Deliveries = []
    for group_id in group_ids:
        tx.execute("SAVEPOINT hosts_due")
        try:
            deliveries += auto_hosts_sync(tx, group_id, at)
        except CrcError as exc:
            tx.execute("ROLLBACK TO SAVEPOINT hosts_due")
            tx.execute(
                "UPDATE groups SET hosts_due = NULL, hosts_window = NULL WHERE id = ?",
                (group_id,),
            )
            log.warning("hosts sync of group %s: nothing sent: %s", group_id, exc)
        tx.execute("RELEASE SAVEPOINT hosts_due")
    return deliveries
