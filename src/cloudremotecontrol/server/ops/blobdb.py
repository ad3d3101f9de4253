"""File contents in the database, in chunks: what replicas share instead of a disk.

A blob is complete once its ``blobs`` row exists (written after every chunk); chunks
are immutable and keyed by content hash, so concurrent uploads of the same content are
harmless (``ON CONFLICT DO NOTHING``).
"""

from __future__ import annotations

from ..store.base import Tx
from .common import now

__all__ = ["blob_chunk", "blob_complete", "blob_info", "blob_put_chunk"]


def blob_put_chunk(tx: Tx, sha: str, n: int, data: bytes) -> None:
    tx.execute(
        "INSERT INTO blob_chunks (sha, n, data) VALUES (?, ?, ?) ON CONFLICT (sha, n) DO NOTHING",
        (sha, n, data),
    )


def blob_complete(tx: Tx, sha: str, size: int, chunks: int) -> None:
    tx.execute(
        "INSERT INTO blobs (sha, size, chunks, created) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (sha) DO NOTHING",
        (sha, size, chunks, now()),
    )


def blob_info(tx: Tx, sha: str) -> tuple[int, int] | None:
    """``(size, chunks)`` of a complete blob, else None."""
    row = tx.one("SELECT size, chunks FROM blobs WHERE sha = ?", (sha,))
    return (int(row["size"]), int(row["chunks"])) if row else None


def blob_chunk(tx: Tx, sha: str, n: int) -> bytes | None:
    row = tx.one("SELECT data FROM blob_chunks WHERE sha = ? AND n = ?", (sha, n))
    return bytes(row["data"]) if row else None
