"""One `crc server run` per SQLite database.

A server on SQLite is alone on its database: at start it marks every machine offline,
voids the teardown claims and cuts the streams it finds open (server/app.py). A second
server on the same file would do that to the first one's machines. So `crc server run`
takes an exclusive lock on ``DB-server.lock`` beside the database before it opens it,
and holds it until the store closes; a second one finds it taken and stops before it
changes anything (Conflict, exit 5). The admin commands take no lock: they run beside a
server. The lock is the operating system's (``flock``): released when the process ends,
however it ends. PostgreSQL replicas share their database by design and take none.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

from ...errors import Conflict

__all__ = ["LOCK_SUFFIX", "ServerLock"]

LOCK_SUFFIX = "-server.lock"


class ServerLock:
    """The lock of the database at ``db_path``, taken when made (Conflict if another
    process has it; OSError if its file cannot be made) and held until ``release`` or
    the end of the process."""

    def __init__(self, db_path: str) -> None:
        fd = os.open(db_path + LOCK_SUFFIX, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = _holder(fd)
            os.close(fd)
            by = f" (pid {pid})" if pid else ""
            raise Conflict(
                f"the database {db_path} is in use by another `crc server run`{by}: a "
                "SQLite database has one server; stop that one first (several servers "
                "share a PostgreSQL database: docs/postgresql.md)",
                code="database_in_use",
            ) from None
        with contextlib.suppress(OSError):  # who holds it, for the next one and a person
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _holder(fd: int) -> int | None:
    """The pid the holder wrote, if it did."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None
