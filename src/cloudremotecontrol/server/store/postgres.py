"""PostgreSQL backend: the same operations as SQLite; several server processes
(replicas) may share one database.

How an operation runs
    Writes go to one writer thread per process, as with SQLite: it takes every op waiting
    in the queue (up to 256), runs each in its own SAVEPOINT on one psycopg 3 connection,
    commits once, and only then resolves the callers' futures - so nothing is
    acknowledged before it is durable, a failing op rolls back alone, and one WAL flush
    covers the batch (~50 ops per commit under load). Measured on the 2-core development
    machine, 2,000 agent messages from 100 concurrent senders, runs alternated on a busy
    host: 760-1,270 writes/s, against 400-630/s with one transaction per op on a pool of
    8 connections (each commit waits for its own fsync; SQLite: 6,000-7,500/s).
    Reads run on a small pool in worker threads at REPEATABLE READ READ ONLY (one
    snapshot for all of an op's statements), so they never queue behind writes.

    Write transactions are REPEATABLE READ: a transaction that updates a row another one
    changed since its snapshot gets serialization_failure instead of overwriting it, so
    the ops' read-check-update steps (burn a key once, apply seq N once, take the next
    outbox seq) stay correct when several replicas write at once. An op that fails with
    serialization_failure or deadlock_detected, or hits a unique index a concurrent
    commit just filled (two replicas create the same group: the re-run answers
    Conflict), is rolled back to its savepoint and run again in the next transaction;
    ops therefore must have no effect outside ``tx`` (they have none). A connection lost
    before COMMIT is sent re-runs the batch; one lost *during* COMMIT is ambiguous and is
    reported as Unavailable, never retried.

    Statements use ``?`` placeholders; they are rewritten to psycopg's ``%s`` (and a
    literal ``%`` to ``%%``), leaving quoted literals and identifiers alone.

Event order (why ``Tx.notify`` takes a lock)
    ``events.id`` is a BIGSERIAL: ids are handed out when rows are inserted, not when
    transactions commit. If T1 takes id 10 and T2 id 11 and T2 commits first, a follower
    that reads ``id > cursor`` sees 11, moves its cursor past 10 and never sees 10 when T1
    commits. So before a transaction inserts its first event of a group, ``notify`` takes
    a transaction-level advisory lock on that group (held until commit or rollback):
    writers of one group's events take ids and commit one after the other, and an event
    is visible only once every smaller id of its group is (PostgreSQL makes a commit
    visible before it releases the transaction's locks). Other groups are unaffected.
    Within one process the single writer never waits for itself; batches of two
    replicas that wrote events of the same groups in opposite order can deadlock, and
    PostgreSQL then fails one statement (after ``deadlock_timeout``, 1 s by default):
    that op rolls back to its savepoint, which also releases the locks it took, and is
    run again in the next batch.
    Outbox sequence numbers need nothing more: ``enqueue`` takes them with ``UPDATE
    machines ... RETURNING out_next``, and the row lock orders them the same way.

Wake-ups across replicas (a hint only)
    A transaction that wrote events sends ``NOTIFY crc_events, '<group_id>'`` before it
    commits (PostgreSQL delivers it at commit, to every listening session). Each store
    keeps one extra connection that LISTENs and calls the ``on_commit`` listeners with the
    group id; the committing store also calls them itself right after COMMIT, so followers
    on the same replica do not wait for the round trip (a second wake-up is harmless).
    Notifications sent while the LISTEN connection is down are lost: after it reconnects
    the store fires ``{ALL_GROUPS}``, so every follower re-reads from its cursor. Nothing
    depends on a notification arriving; it only saves followers their keep-alive wait.

Migrations
    ``schema.migrate`` runs in one READ COMMITTED transaction that first takes
    ``pg_advisory_xact_lock``: replicas starting together apply each migration once, and
    one that waited reads the version the other committed (a fresh snapshot per statement;
    at REPEATABLE READ the snapshot would predate the wait).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg import IsolationLevel, errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from ...errors import Unavailable
from .base import ALL_GROUPS, Store, Tx
from .schema import migrate

__all__ = ["CHANNEL", "PostgresStore", "to_pyformat"]

T = TypeVar("T")
log = logging.getLogger(__name__)

CHANNEL = "crc_events"
_EVENT_LOCK_CLASS = 7244102  # first key of the (int, int) advisory locks on groups
_BATCH = 256
_RETRIES = 50
_UNIQUE_RETRIES = 3
_CONNECTION_RETRIES = 3
# Failures that roll back one op whose transaction lost a race with another one: the
# op is run again in a new transaction (see "How an operation runs").
_CONFLICTS = (errors.SerializationFailure, errors.DeadlockDetected, errors.UniqueViolation)
_CONNECT: dict[str, Any] = {
    "autocommit": True,  # transactions are opened explicitly with conn.transaction()
    "row_factory": dict_row,
    "connect_timeout": 10,
    # A dead peer (database host gone, NAT dropped the flow) is noticed in ~1 min
    # instead of the kernel's 2 h, which matters most for the idle LISTEN connection.
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


def _connect(url: str) -> psycopg.Connection[dict[str, Any]]:
    """One connection outside the pools, with the options of theirs."""
    conn: psycopg.Connection[dict[str, Any]] = psycopg.connect(url, **_CONNECT)
    return conn


@functools.lru_cache(maxsize=2048)
def to_pyformat(sql: str) -> str:
    """``?`` -> ``%s`` and ``%`` -> ``%%``, except ``?`` inside '...' or "..." (the SQL
    of the ops has no comments or dollar quotes; do not add ``?`` in those)."""
    out: list[str] = []
    quote = ""
    for ch in sql:
        if ch == "%":
            out.append("%%")  # psycopg reads % everywhere, quoted or not
        elif quote:
            if ch == quote:
                quote = ""  # a doubled quote ('') closes and reopens: same result
            out.append(ch)
        elif ch in "'\"":
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        else:
            out.append(ch)
    return "".join(out)


def _group_key(group_id: str) -> int:
    """A stable signed 32-bit key (Python's hash() differs between processes)."""
    return int.from_bytes(
        hashlib.blake2b(group_id.encode(), digest_size=4).digest(), "big", signed=True
    )


class _PgTx(Tx):
    database_errors = (psycopg.Error,)

    def __init__(self, cur: psycopg.Cursor[dict[str, Any]], held: set[str] | None = None) -> None:
        self.cur = cur
        self.held = held if held is not None else set()  # group locks the batch holds

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self.cur.execute(to_pyformat(sql), tuple(params))
        return self.cur.rowcount

    def one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        self.cur.execute(to_pyformat(sql), tuple(params))
        return self.cur.fetchone()

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        self.cur.execute(to_pyformat(sql), tuple(params))
        return self.cur.fetchall()

    def notify(self, group_id: str) -> None:
        # Called before the group's first event is inserted: see "Event order" above.
        if group_id not in self.notified and group_id not in self.held:
            self.cur.execute(
                "SELECT pg_advisory_xact_lock(%s::integer, %s::integer)",
                (_EVENT_LOCK_CLASS, _group_key(group_id)),
            )
        super().notify(group_id)


def _where(url: str) -> str:
    """host:port/dbname of ``url`` for messages: never the password."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.Error:
        return "(unparsable URL)"
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


@dataclass
class _Pending:
    op: Callable[..., Any]
    args: tuple[Any, ...]
    fut: Future[Any]
    attempts: int = 0
    unique_violations: int = 0


class PostgresStore(Store):
    dialect = "postgresql"

    def __init__(self, url: str, *, readers: int = 4) -> None:
        super().__init__()
        self.url = url
        self._readers = readers
        self._pools: dict[str, ConnectionPool[psycopg.Connection[dict[str, Any]]]] = {}
        self._read_executor: ThreadPoolExecutor | None = None
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._listener: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.retries = 0  # operations re-run after a conflict (for benchmarks and tests)
        self.batches = 0  # write transactions committed

    # -- lifecycle ---------------------------------------------------------------------
    def open_sync(self) -> None:
        with self._lock:
            if self._pools:
                return
            self._migrate()
            self._stopping.clear()
            try:
                for kind, size in (("write", 1), ("read", self._readers)):
                    pool: ConnectionPool[psycopg.Connection[dict[str, Any]]] = ConnectionPool(
                        self.url,
                        kwargs=_CONNECT,
                        min_size=min(2, size),
                        max_size=size,
                        open=False,
                        name=f"crc-{kind}",
                    )
                    self._pools[kind] = pool
                    pool.open(wait=True, timeout=30)
            except psycopg.OperationalError as exc:
                self._close_pools()
                raise Unavailable(
                    f"cannot connect to PostgreSQL at {_where(self.url)}: {exc}"
                ) from exc
            self._read_executor = ThreadPoolExecutor(
                max_workers=self._readers, thread_name_prefix="crc-pg-read"
            )
            self._writer = threading.Thread(
                target=self._write_loop, name="crc-pg-writer", daemon=True
            )
            self._writer.start()
            ready = threading.Event()
            self._listener = threading.Thread(
                target=self._listen_loop, args=(ready,), name="crc-pg-listen", daemon=True
            )
            self._listener.start()
            ready.wait(30)

    def _migrate(self) -> None:
        try:
            conn = _connect(self.url)
        except psycopg.OperationalError as exc:
            raise Unavailable(f"cannot connect to PostgreSQL at {_where(self.url)}: {exc}") from exc
        with conn:
            conn.isolation_level = IsolationLevel.READ_COMMITTED
            with conn.transaction():
                migrate(_PgTx(conn.cursor()), self.dialect)

    async def start(self) -> None:
        await asyncio.to_thread(self.open_sync)

    async def close(self) -> None:
        await asyncio.to_thread(self.close_sync)

    def close_sync(self) -> None:
        with self._lock:
            self._stopping.set()
            if self._writer is not None:
                self._queue.put(None)  # after what is queued: pending writes complete
                self._writer.join()
                self._writer = None
            if self._listener is not None:
                self._wake_listener()
                self._listener.join()
                self._listener = None
            if self._read_executor is not None:
                self._read_executor.shutdown(wait=True)
                self._read_executor = None
            self._close_pools()

    def _close_pools(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    # -- running operations -------------------------------------------------------------
    async def write(self, op: Callable[..., T], *args: Any) -> T:
        if self._writer is None:
            raise Unavailable("the database is closed (server starting or stopping)")
        fut: Future[T] = Future()
        self._queue.put(_Pending(op, args, fut))
        return await asyncio.wrap_future(fut)

    def write_sync(self, op: Callable[..., T], *args: Any) -> T:
        self.open_sync()
        fut: Future[T] = Future()
        self._queue.put(_Pending(op, args, fut))
        return fut.result()

    async def read(self, op: Callable[..., T], *args: Any) -> T:
        if self._read_executor is None:
            raise Unavailable("the database is closed (server starting or stopping)")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._read_executor, self._read_sync, op, args)

    def _read_sync(self, op: Callable[..., T], args: tuple[Any, ...]) -> T:
        pool = self._pools["read"]
        for attempt in range(3):
            try:
                with pool.connection() as conn:
                    conn.isolation_level = IsolationLevel.REPEATABLE_READ
                    conn.read_only = True
                    with conn.transaction():
                        return op(_PgTx(conn.cursor()), *args)
            except psycopg.OperationalError as exc:  # also PoolTimeout
                if attempt == 2:
                    raise Unavailable(f"database error ({_where(self.url)}): {exc}") from exc
                pool.check()  # drop every connection that died with this one (restart)
        raise AssertionError("unreachable")

    def _write_loop(self) -> None:
        retry: list[_Pending] = []
        stop = False
        while not stop or retry:
            batch, retry = retry, []
            if not batch:
                item = self._queue.get()
                if item is None:
                    break
                batch = [item]
            while not stop and len(batch) < _BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                else:
                    batch.append(nxt)
            retry = self._run_batch(batch)
            if retry:
                self.retries += len(retry)
                wait = min(0.05, 0.001 * 2 ** max(p.attempts for p in retry))
                time.sleep(random.uniform(0, wait))  # noqa: S311 -- jitter, not crypto

    def _run_batch(self, batch: list[_Pending]) -> list[_Pending]:
        """Run ``batch`` in one transaction, each op in its own savepoint; commit once,
        then resolve the futures. Returns the ops to run again in a new transaction."""
        # Skip ops whose caller was cancelled while they were queued (as an executor
        # would): resolving a cancelled Future raises and would kill this thread.
        batch = [p for p in batch if p.fut.running() or p.fut.set_running_or_notify_cancel()]
        if not batch:
            return []
        done: list[tuple[_Pending, bool, Any]] = []
        retry: list[_Pending] = []
        groups: set[str] = set()  # also the group locks held by the transaction
        machines: set[str] = set()  # outboxes that grew: other replicas may hold them
        committing = False
        try:
            with self._pools["write"].connection() as conn:
                conn.isolation_level = IsolationLevel.REPEATABLE_READ
                cur = conn.cursor()
                with conn.transaction():
                    for p in batch:
                        tx = _PgTx(cur, groups)
                        try:
                            with conn.transaction():  # SAVEPOINT: a failing op rolls back alone
                                value = p.op(tx, *p.args)
                        except _CONFLICTS as exc:
                            # Another replica's commit conflicts with our snapshot (or a
                            # deadlock): only a new transaction can run this op.
                            p.attempts += 1
                            if isinstance(exc, errors.UniqueViolation):
                                p.unique_violations += 1
                            if p.unique_violations >= _UNIQUE_RETRIES:
                                done.append((p, False, exc))  # not a race: a bug
                            elif p.attempts >= _RETRIES:
                                busy = Unavailable(
                                    "the database stayed too busy for this operation; retry"
                                )
                                busy.__cause__ = exc
                                done.append((p, False, busy))
                            else:
                                retry.append(p)
                        except psycopg.OperationalError:
                            raise  # the connection is gone: the whole batch rolled back
                        except BaseException as exc:  # noqa: BLE001 -- handed to the caller
                            done.append((p, False, exc))
                        else:
                            groups |= tx.notified
                            machines |= tx.machines_notified
                            done.append((p, True, value))
                    # Machine payloads carry this replica's id, so it ignores its own.
                    payloads = sorted(groups) + [f"m:{self.replica}:{m}" for m in machines]
                    if payloads:
                        cur.execute(
                            "SELECT pg_notify(%s, g) FROM unnest(%s::text[]) g", (CHANNEL, payloads)
                        )
                    committing = True
        except psycopg.Error as exc:  # also PoolTimeout
            failure = Unavailable(f"database error ({_where(self.url)}): {exc}")
            failure.__cause__ = exc
            if committing:  # COMMIT was sent: it may or may not have happened
                for p in batch:
                    p.fut.set_exception(failure)
                return []
            self._pools["write"].check()  # before COMMIT: rolled back, safe to re-run
            again = []
            for p in batch:
                p.attempts += 1
                if p.attempts >= _CONNECTION_RETRIES:
                    p.fut.set_exception(failure)
                else:
                    again.append(p)
            return again
        self.batches += 1
        self._wake(groups)
        for p, ok, value in done:
            if ok:
                p.fut.set_result(value)
            else:
                p.fut.set_exception(value)
        return retry

    # -- wake-ups from other replicas ---------------------------------------------------
    def _listen_loop(self, ready: threading.Event) -> None:
        delay = 0.1
        while not self._stopping.is_set():
            try:
                with _connect(self.url) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    # What was committed while we were not listening was never announced:
                    # every follower re-reads from its cursor (at start there are none).
                    self._wake({ALL_GROUPS})
                    self._fire_outbox({ALL_GROUPS})
                    ready.set()
                    delay = 0.1
                    while not self._stopping.is_set():
                        for n in conn.notifies(timeout=1.0):
                            if self._stopping.is_set():
                                break
                            if n.payload.startswith("m:"):
                                _, replica, machine = n.payload.split(":", 2)
                                if replica != self.replica:
                                    self._fire_outbox({machine})
                            elif n.payload:
                                self._wake({n.payload})
            except psycopg.Error as exc:
                if self._stopping.is_set():
                    break
                log.warning(
                    "PostgreSQL LISTEN connection lost (%s); reconnecting in %.1f s", exc, delay
                )
                ready.set()  # start() does not wait for a database that is down
                self._stopping.wait(delay)
                delay = min(delay * 2, 5.0)

    def _wake(self, groups: set[str]) -> None:
        try:
            self._fire(groups)
        except Exception:  # a listener's bug must not stop the writer or the listener
            log.exception("on_commit listener failed")

    def _wake_listener(self) -> None:
        """An empty notification ends the listener's wait at once (ignored by all)."""
        pool = self._pools.get("read")
        if pool is None:
            return
        try:
            with pool.connection(timeout=2) as conn:
                conn.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
        except psycopg.Error:
            pass  # the listener notices _stopping within a second anyway
