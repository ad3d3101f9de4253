"""SQLite backend: one writer thread with group commit, a few reader connections.

Why a thread and not aiosqlite: many small writes (acks, output lines, results from a
thousand agents) each pay a thread hop and an fsync if run one by one. Here every
operation waiting in the queue runs inside its own SAVEPOINT, then the whole batch is
committed once, and only then are the callers' futures resolved - so an operation is
never acknowledged before it is durable, and a failing operation rolls back alone.
Group commit by time: while the writer is busy (the batch it took holds more than one
operation, or the previous batch did and was committed less than ``COMMIT_WINDOW`` ago),
it keeps gathering operations for up to ``COMMIT_WINDOW`` seconds (at most ``_BATCH``)
before running them, as PostgreSQL's ``commit_delay`` with ``commit_siblings`` does: a
1,000-target job's results then take fewer, larger commits, and every commit rewrites
the pages it touched and wakes the event streams for a read. An operation that finds
the writer idle (a lone caller, one write after another) is never delayed; a busy one
waits at most the window more for its commit.
WAL with ``synchronous=NORMAL`` survives a process crash (kill -9) without losing a
committed transaction; only an OS crash or power loss can drop the last commits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from ...errors import InvalidInput, Unavailable
from .base import LogLimit, MissingColumn, Store, Tx, settle, star_row, star_rows
from .schema import migrate
from .serverlock import ServerLock

__all__ = ["SqliteStore"]

T = TypeVar("T")
log = logging.getLogger(__name__)
_BATCH = 256
#: Seconds a busy writer gathers operations before running a batch (see above).
COMMIT_WINDOW = 0.004
_READERS = 2
_BUSY_TIMEOUT = 30.0
#: The log says why the database failed an op at most this often (seconds), for each
#: reason (``LogLimit``).
_WARN_EVERY = 5.0
#: What SQLite says of a column a statement names that its table has not...
_NO_COLUMN = ("no such column", "has no column named")
#: ... and of a table that is not there.
_NO_TABLE = ("no such table",)
# A queued write: (op, args, future, loop); loop is None for write_sync's Future.
_Item = tuple[Callable[..., Any], tuple[Any, ...], Any, "asyncio.AbstractEventLoop | None"]


class _SqliteTx(Tx):
    database_errors = (sqlite3.Error, MissingColumn)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.conn.execute(sql, params).rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    def one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        row = self.conn.execute(sql, params).fetchone()
        return star_row(sql, dict(row) if row is not None else None)

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return star_rows(sql, [dict(r) for r in self.conn.execute(sql, params).fetchall()])


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT
    )
    conn.row_factory = sqlite3.Row
    _use_wal(conn)
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={int(_BUSY_TIMEOUT * 1000)}")
    return conn


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL, waiting for other connections that open the same file at once.

    Changing the journal mode takes an exclusive lock. SQLite answers "database is
    locked" at once, without calling the busy handler, when another connection that
    opens a new database at the same moment holds a lock it is waiting to upgrade
    (servers or ``crc server`` commands started together on one new file); so wait here.
    """
    deadline = time.monotonic() + _BUSY_TIMEOUT
    delay = 0.002
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


class SqliteStore(Store):
    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._conn: sqlite3.Connection | None = None
        self.commit_window = COMMIT_WINDOW
        self.batch_limit = _BATCH
        #: Batches committed, and how many times the writer waited for its window.
        self.batches = 0
        self.window_waits = 0
        self._warnings = LogLimit(_WARN_EVERY)  # what _failed logs, per reason
        #: Set by `crc server run`: hold the database's server lock while open, alone on
        #: it (serverlock.py); the admin commands run beside a server and take none.
        self.serving = False
        self._lock: ServerLock | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def open_sync(self) -> None:
        """Open (and make, or bring up to date) the database. A file that cannot be used
        is one clear error, not sqlite3's or the OS's exception: InvalidInput (exit 2)
        for a path that cannot be made or opened and for a file that is not a database
        (damaged, or another program's); Unavailable (exit 6) for one locked too long or
        an I/O error."""
        try:
            self._open()
        except BaseException:
            self._close_connections()
            raise
        self._writer = threading.Thread(
            target=self._write_loop, name="crc-sqlite-writer", daemon=True
        )
        self._writer.start()

    def _open(self) -> None:
        on_disk = self.path != ":memory:" and not self.path.startswith("file:")
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            if self.serving and on_disk:  # before anything is read or changed
                self._lock = ServerLock(self.path)
            if on_disk:
                # Hashes, encrypted provider keys, job output: owner only. SQLite gives
                # its -wal and -shm files the database file's mode.
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
                os.chmod(self.path, 0o600)
        except OSError as exc:
            raise InvalidInput(
                f"cannot use the database {self.path}: {exc.strerror or exc}: check the "
                "path and its permissions"
            ) from None
        try:
            self._conn = _connect(self.path)
            migrate(_SqliteTx(self._conn), "sqlite", self._conn)
            for _ in range(_READERS):
                self._readers.put(_connect(self.path))
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if "locked" in text or "disk I/O" in text:
                raise Unavailable(f"cannot use the database {self.path}: {text}") from None
            raise InvalidInput(
                f"cannot use the database {self.path}: {text}: check the path and its permissions"
            ) from None
        except sqlite3.DatabaseError as exc:  # not a database: damaged, or not ours
            raise InvalidInput(
                f"{self.path} is damaged or not a CloudRemoteControl database ({exc}): "
                "restore it from a backup, or give another --database"
            ) from None

    def _close_connections(self) -> None:
        """Those a failed open made (none is used yet), and the server lock."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        while not self._readers.empty():
            self._readers.get().close()
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    async def start(self) -> None:
        await asyncio.to_thread(self.open_sync)

    async def close(self) -> None:
        await asyncio.to_thread(self.close_sync)

    def close_sync(self) -> None:
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None
        while not self._readers.empty():
            self._readers.get().close()
        self._release_lock()

    # -- running operations -------------------------------------------------------------
    async def write(self, op: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put((op, args, fut, loop))
        try:
            return await fut
        except (sqlite3.OperationalError, MissingColumn) as exc:
            failure = self._failed(exc)
            if failure is None:
                raise
            raise failure from exc

    def write_sync(self, op: Callable[..., T], *args: Any) -> T:
        if self._writer is None:
            self.open_sync()
        fut: Future[T] = Future()
        self._queue.put((op, args, fut, None))
        return fut.result()

    async def read(self, op: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(self._read_sync, op, args)
        except (sqlite3.OperationalError, MissingColumn) as exc:
            failure = self._failed(exc)
            if failure is None:
                raise
            raise failure from exc

    def _failed(self, exc: sqlite3.OperationalError | MissingColumn) -> Unavailable | None:
        """A column or table of crc's that is not there (changed by hand, or by a newer
        crc server): the caller is told the database is unavailable (503), the log says
        which, at most once per ``_WARN_EVERY`` seconds for each missing column or table.
        None: another error, raised as it is."""
        text = str(exc)
        gone = isinstance(exc, sqlite3.OperationalError) and any(t in text for t in _NO_TABLE)
        if not (isinstance(exc, MissingColumn) or gone or any(t in text for t in _NO_COLUMN)):
            return None
        reason = f"column {exc.column}" if isinstance(exc, MissingColumn) else text[:200]
        if self._warnings.due(reason):
            if gone:
                log.error(
                    "the SQLite database %s has lost crc's tables (replaced, or changed by "
                    "hand): restart the server to set them up again, or restore the "
                    "database: %s",
                    self.path,
                    text,
                )
            else:
                log.error(
                    "the SQLite database %s has crc's tables without a column this server "
                    "uses (changed by hand, or by a newer crc server's migration): run the "
                    "crc version that set it up, or restore the database: %s",
                    self.path,
                    text,
                )
        return Unavailable("the server's database is unavailable; try again later")

    def _read_sync(self, op: Callable[..., T], args: tuple[Any, ...]) -> T:
        conn = self._readers.get()
        try:
            conn.execute("BEGIN")
            try:
                return op(_SqliteTx(conn), *args)
            finally:
                conn.execute("ROLLBACK")
        finally:
            self._readers.put(conn)

    def _write_loop(self) -> None:
        assert self._conn is not None
        conn = self._conn
        stop = False
        busy_until = 0.0  # the previous batch held more than one op: busy until then
        while not stop:
            item = self._queue.get()
            if item is None:
                break
            batch = [item]
            stop = self._take_queued(batch, None)
            if (
                not stop
                and len(batch) < self.batch_limit
                and (len(batch) > 1 or time.monotonic() < busy_until)
            ):
                self.window_waits += 1
                stop = self._take_queued(batch, time.monotonic() + self.commit_window)
            self._run_batch(conn, batch)
            if len(batch) > 1:
                busy_until = time.monotonic() + self.commit_window
        conn.close()

    def _take_queued(self, batch: list[_Item], deadline: float | None) -> bool:
        """Add queued operations to ``batch`` up to the batch limit: those queued now
        (``deadline`` None) or those arriving until ``deadline``. True: stop after it."""
        while len(batch) < self.batch_limit:
            try:
                if deadline is None:
                    nxt = self._queue.get_nowait()
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    nxt = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if nxt is None:
                return True
            batch.append(nxt)
        return False

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Item]) -> None:
        # Skip what a caller cancelled while it waited in the queue (a client went away,
        # shutdown), as an executor would. (Reading the flag from this thread is a benign
        # race: an operation cancelled a moment later runs; its result is dropped.)
        batch = [item for item in batch if not item[2].cancelled()]
        if not batch:
            return
        results: list[tuple[_Item, bool, Any]] = []
        groups: set[str] = set()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for item in batch:
                op, args = item[0], item[1]
                tx = _SqliteTx(conn)
                conn.execute("SAVEPOINT op")
                try:
                    value = op(tx, *args)
                except BaseException as exc:  # noqa: BLE001 -- handed to the caller
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    results.append((item, False, exc))
                else:
                    conn.execute("RELEASE op")
                    groups |= tx.notified
                    results.append((item, True, value))
            conn.execute("COMMIT")
            self.batches += 1
        except sqlite3.Error as exc:
            # The commit itself failed (disk full, I/O error): nothing is durable.
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            _settle([(item, False, exc) for item in batch])
            return
        self._fire(groups)
        _settle(results)


def _settle(results: list[tuple[_Item, bool, Any]]) -> None:
    settle((fut, loop, ok, value) for (_, _, fut, loop), ok, value in results)
