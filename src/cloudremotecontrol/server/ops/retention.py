"""Retention: what the server forgets, and when (``ServerSettings.retain_*``).

* **Events** (progress, job output, messages, state changes) older than
  ``retain_events_days``. Cursors stay valid: a stream resumed from a pruned cursor
  simply starts at the oldest event kept.
* **Deleted groups**: once deleted longer than that, their jobs, job targets and
  key/value entries go too (the group and machine rows stay, so that names, credential
  ids and the audit record still resolve; they hold no secret).
* **Files** (``blob_owners``) uploaded or pulled more than ``retain_blobs_days`` ago
  that no open job still moves; content nobody owns any more is then removed from the
  database (replicas) and from each server's disk (``BlobStore.forget``).
* **Shell recordings** (ops/recordings.py ``prune_recordings``) whose last chunk is
  older than ``retain_recordings_days``, and those of a group deleted longer than
  ``retain_events_days`` (with its jobs).

The audit record is append-only and kept.
"""

from __future__ import annotations

from typing import Any

from ...protocol.states import JobStatus
from ..store.base import Tx

__all__ = ["BATCH", "drop_unowned", "orphan_blobs", "prune"]

_OPEN = (JobStatus.QUEUED.value, JobStatus.DELIVERED.value, JobStatus.RUNNING.value)
BATCH = 5000  # rows per statement, so one prune never holds the writer for long


def prune(tx: Tx, events_before: float | None, blobs_before: float | None) -> dict[str, Any]:
    """Delete what is older than the cutoffs (None: keep); return counts and the
    content hashes nobody owns any more (to remove from disk)."""
    out: dict[str, Any] = {"events": 0, "jobs": 0, "blob_owners": 0, "orphans": []}
    if events_before is not None:
        out["events"] = tx.execute(
            "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE created < ? LIMIT ?)",
            (events_before, BATCH),
        )
        gone = tx.all(
            "SELECT id FROM groups WHERE deleted IS NOT NULL AND deleted < ? AND EXISTS "
            "(SELECT 1 FROM jobs j WHERE j.group_id = groups.id) LIMIT 100",
            (events_before,),
        )
        for g in gone:
            tx.execute(
                "DELETE FROM job_targets WHERE job_id IN (SELECT id FROM jobs WHERE group_id = ?)",
                (g["id"],),
            )
            out["jobs"] += tx.execute("DELETE FROM jobs WHERE group_id = ?", (g["id"],))
            tx.execute("DELETE FROM kv WHERE group_id = ?", (g["id"],))
    if blobs_before is not None:
        # Owned content no open job moves: a push (jobs.blob) or a pull being uploaded.
        stale = tx.all(
            "SELECT b.user_id, b.sha FROM blob_owners b WHERE b.created < ? AND NOT EXISTS ("
            " SELECT 1 FROM jobs j JOIN job_targets t ON t.job_id = j.id"
            " JOIN groups g ON g.id = j.group_id"
            " WHERE g.user_id = b.user_id AND (j.blob = b.sha OR t.blob = b.sha)"
            " AND t.status IN (?, ?, ?)) LIMIT ?",
            (blobs_before, *_OPEN, BATCH),
        )
        for row in stale:
            out["blob_owners"] += tx.execute(
                "DELETE FROM blob_owners WHERE user_id = ? AND sha = ?",
                (row["user_id"], row["sha"]),
            )
        shas = sorted({r["sha"] for r in stale})
        out["orphans"] = [sha for sha in shas if drop_unowned(tx, sha)]
    return out


def drop_unowned(tx: Tx, sha: str) -> bool:
    """Whether nobody owns content ``sha``: then its copy in the database (for replicas)
    is removed here, and the caller may remove its file on disk."""
    if _owned(tx, sha):
        return False
    tx.execute("DELETE FROM blob_chunks WHERE sha = ?", (sha,))
    tx.execute("DELETE FROM blobs WHERE sha = ?", (sha,))
    return True


def _owned(tx: Tx, sha: str) -> bool:
    return tx.one("SELECT 1 AS x FROM blob_owners WHERE sha = ? LIMIT 1", (sha,)) is not None


def orphan_blobs(tx: Tx, shas: list[str]) -> list[str]:
    """Those of ``shas`` that nobody owns (content a server may remove from its disk)."""
    return [sha for sha in shas if not _owned(tx, sha)]
