"""Shell session recordings in the store: chunks appended as the session goes, read back
in order by their owner, forgotten by age.

A recording is one ``recordings`` row (its owner, group, size, how many chunks) and its
``recording_chunks`` (``stream``, ``n``: 0, 1, ...). Each chunk is its own small write
(server/recorder.py), so a long session never makes one large transaction, and what was
recorded is in the database, on every replica, as soon as the chunk is written.
"""

from __future__ import annotations

from typing import Any

from ..store.base import Tx
from .sessions import session_record

__all__ = [
    "BATCH",
    "append_chunk",
    "prune_recordings",
    "read_chunk",
    "recorded_streams",
    "recording_info",
]

BATCH = 100  # recordings per prune statement (each up to 256 chunks)


def append_chunk(
    tx: Tx, stream: str, user_id: str, group_id: str, n: int, data: bytes, size: int, at: float
) -> None:
    """Write chunk ``n`` of ``stream``'s recording (``size``: its bytes through this
    chunk; the row is made with chunk 0). Writing a chunk again replaces it."""
    tx.send(
        "INSERT INTO recording_chunks (stream, n, data) VALUES (?, ?, ?) "
        "ON CONFLICT (stream, n) DO UPDATE SET data = excluded.data",
        (stream, n, data),
    )
    tx.send(
        "INSERT INTO recordings (stream, user_id, group_id, size, chunks, created, updated) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (stream) DO UPDATE SET "
        "size = excluded.size, chunks = excluded.chunks, "
        "updated = excluded.updated",
        (stream, user_id, group_id, size, n + 1, at, at),
    )


def recording_info(tx: Tx, user_id: str, stream: str) -> dict[str, Any] | None:
    """``{"size", "chunks"}`` of the caller's recording of ``stream`` in the database;
    None when there is none but the session is the caller's (a recording of an older
    version may be on a server's disk). NotFound, as for an unknown session, when the
    session is not the caller's."""
    row = tx.one(
        "SELECT size, chunks FROM recordings WHERE stream = ? AND user_id = ?", (stream, user_id)
    )
    if row is not None:
        return {"size": int(row["size"]), "chunks": int(row["chunks"])}
    session_record(tx, user_id, stream)  # raises NotFound unless it is the caller's
    return None


def read_chunk(tx: Tx, user_id: str, stream: str, n: int) -> bytes | None:
    """Chunk ``n`` of the caller's recording of ``stream`` (None: not there, pruned)."""
    row = tx.one(
        "SELECT c.data FROM recording_chunks c JOIN recordings r ON r.stream = c.stream "
        "WHERE c.stream = ? AND c.n = ? AND r.user_id = ?",
        (stream, n, user_id),
    )
    return bytes(row["data"]) if row else None


def recorded_streams(tx: Tx, user_id: str, streams: list[str]) -> set[str]:
    """Those of ``streams`` the caller has a recording of in the database."""
    found: set[str] = set()
    for i in range(0, len(streams), 500):
        part = streams[i : i + 500]
        marks = ", ".join("?" * len(part))
        found.update(
            str(r["stream"])
            for r in tx.all(
                f"SELECT stream FROM recordings WHERE user_id = ? AND stream IN ({marks})",  # noqa: S608 -- placeholders only
                (user_id, *part),
            )
        )
    return found


def _forget(tx: Tx, streams: list[str]) -> int:
    for stream in streams:
        tx.send("DELETE FROM recording_chunks WHERE stream = ?", (stream,))
        tx.send("DELETE FROM recordings WHERE stream = ?", (stream,))
    return len(streams)


def prune_recordings(tx: Tx, before: float | None, deleted_before: float | None) -> int:
    """Forget recordings whose last chunk is older than ``before``, and those of groups
    deleted before ``deleted_before`` (their jobs and key/value entries go then too,
    ops/retention.py); None: keep. At most ``BATCH``; returns how many went."""
    streams: list[str] = []
    if before is not None:
        rows = tx.all("SELECT stream FROM recordings WHERE updated < ? LIMIT ?", (before, BATCH))
        streams = [str(r["stream"]) for r in rows]
    if deleted_before is not None and len(streams) < BATCH:
        rows = tx.all(
            "SELECT r.stream FROM recordings r JOIN groups g ON g.id = r.group_id "
            "WHERE g.deleted IS NOT NULL AND g.deleted < ? LIMIT ?",
            (deleted_before, BATCH - len(streams)),
        )
        streams += [str(r["stream"]) for r in rows if str(r["stream"]) not in streams]
    return _forget(tx, streams)
