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

Pipelined batches
    Run one statement at a time, a batch spends most of its time in round trips: a
    message from an agent is eight statements (savepoint, read the machine, take the
    group's event lock, a savepoint of its own, update the inbox, insert the event, two
    releases), and psycopg waits for each one's answer before the op goes on. So a batch
    runs in pipeline mode (``conn.pipeline()``, libpq >= 14): a statement whose outcome
    the op does not read - savepoints, one-row ``INSERT``s (``known_count``), what it
    runs with ``Tx.send``, the advisory lock - goes out without waiting, and the op waits
    only for what it reads (``one``, ``all``, and ``execute`` of other statements, whose
    row count it may look at). A message costs one round trip instead of eight. Before
    COMMIT the store syncs the pipeline: every statement's outcome is then known, and if
    none failed it commits and answers the callers as above.
    A statement that fails in a pipeline reports its error with the results of later
    ones (and PostgreSQL skips what follows until the sync), so the op it belonged to is
    not known: the store rolls the whole transaction back and runs the same batch again
    one statement at a time, where each failure is its own op's (conflicts re-run, other
    errors go to their caller, the rest commit). Ops may be run twice this way for the
    same reason they may be re-run after a conflict: they have no effect outside ``tx``.
    An op that raises an error of its own (bad input, not found) needs no fallback: it
    is rolled back to its savepoint in the pipeline and the others go on.

Rows read ahead
    A pipelined batch still waits for every read, and most ops begin with one: a
    message from an agent reads its machine's row, so a batch of 200 messages waited
    200 times. Ops declare that read (``reads_row`` in store/base.py: the op, the table,
    which argument is the id), and a batch first reads the rows of all its ops in one
    statement (``RowCache``, store/pg_tx.py); an op's read of that row is then answered
    from there, with no round trip, as the transaction would answer it at that point:
    the batch's own updates of the row (plain ``column = ?`` assignments by id, e.g. the
    inbox's ``in_done``) are applied to it, and any change the cache cannot follow
    (another statement on the table, a rollback to a savepoint after a change) drops
    the rows concerned, which are then read from the database as before. The snapshot
    is the same (REPEATABLE READ: the whole transaction reads one), and reading takes
    no lock, so a conflict with another replica fails the same update it failed before.
    The one-statement-at-a-time fallback reads every row where the op reads it.
    A job's report (``job.started``, ``job.output``, ``job.result``) reads its target
    joined with its job (``job_steps``), and an ack drops the messages it covers with a
    ``DELETE ... RETURNING`` whose rows it reads (``drop_through``): two more waits per
    result. Ops declare those too (``reads_job_target``, ``reads_outbox_drop``: the
    target from the message's ``job_id``, the machine and seq an ack drops through),
    and the batch reads the targets (``TargetCache``) and each machine's outbox rows up
    to the highest seq its ops drop through (``OutboxCache``) in the same round trip as
    the machines. A target is kept current like a machine (``job_steps``' updates of it
    by ``(job_id, machine_id)`` applied, anything else on ``job_targets`` or ``jobs``
    drops the targets); a drop is answered from the kept rows, which it then leaves
    without those rows, a one-message ``INSERT`` adds its row, and the ``DELETE``
    itself is kept and sent like a statement nothing waits for (its rows are known).
    A batch of results, each acknowledging its ``job.run``, then waits for no read but
    the one ahead: measured by ``bench/pg_job_results.py``, 0.02 waits per result
    instead of 2.01.

Statements kept
    What an op sends without waiting is not sent at once either: the batch keeps it
    (``Outgoing``, store/pg_tx.py) until a statement must be waited for (a read the rows
    read ahead do not answer, a row count, the batch's end), then sends it, in order.
    So the batch's savepoint around each op, and an op's own savepoints, cost nothing
    unless a statement ran inside them: in a pipelined batch a savepoint matters only to
    a rollback to it (a failing statement fails the whole batch, which then runs one
    statement at a time), so a ``SAVEPOINT`` still kept when its ``RELEASE`` comes is
    dropped with it, and a ``ROLLBACK TO`` one still kept drops what was kept after it
    (never sent, such a statement cannot fail its op; its effects are undone either
    way). Consecutive plain updates of rows by id with the same text (the inboxes'
    ``in_done`` of a batch of messages) go out as one ``UPDATE ... FROM unnest(...)``
    per run of distinct ids, so the database still checks every value; not for columns
    of a unique index (one statement may swap values one row at a time could not).
    A batch of messages from many machines is then a few statements whatever its size
    (the rows read ahead, the inboxes' update, the events' locks and insert, the
    notification, COMMIT), and writes no subtransaction: one transaction id per batch
    instead of two per message. Measured by driving ``apply_agent_message`` directly
    (200 machines, 4 messages in flight each): 0.09-0.11 ms of process CPU per message,
    against 0.15-0.17 ms before.

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
    A pipelined batch holds the lock for less: it keeps the rows of ``add_event`` (in
    the ``PgTx``, with its own savepoints' rollbacks applied) and, after its last op,
    takes the locks of their groups in one order (so two replicas cannot deadlock on
    them) and inserts them all in one statement, in the order the ops added them. So a
    group's lock is held from that insert to COMMIT, not for the whole batch, and the
    other replica's batch runs its ops meanwhile. Ops never read events in a write
    transaction, so none sees the difference; a statement on ``events`` other than
    ``add_event``'s takes the locks where it stands, as above.
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
    at REPEATABLE READ the snapshot would predate the wait). In the same transaction,
    under the same lock, ``crc server run`` records what every replica must share (its
    certificate's fingerprint, its teardown key's check value) or checks its own against
    what is recorded (store/identity.py): a replica that differs does not start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg import IsolationLevel, errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from ...errors import Conflict, InvalidInput, NotFound, Unavailable
from .base import ALL_GROUPS, LogLimit, MissingColumn, Store, settle
from .identity import ReplicaIdentity, check_identity
from .pg_tx import (
    Outgoing,
    PgTx,
    column_types,
    insert_events,
    known_count,
    read_ahead,
    to_pyformat,
)
from .schema import MIGRATIONS, migrate

_JITTER = random.Random()  # noqa: S311 -- retry jitter, not cryptography

__all__ = ["CHANNEL", "PostgresStore", "known_count", "to_pyformat"]

T = TypeVar("T")
log = logging.getLogger(__name__)

CHANNEL = "crc_events"
_BATCH = 256
_RETRIES = 50
_UNIQUE_RETRIES = 3
_CONNECTION_RETRIES = 3
#: How long an op waits for a connection of its pool. A pool grows to as many
#: connections as its threads use (the writer one, each reader one), so an op waits only
#: while the pool cannot connect (the database is down or refuses connections): the op
#: then fails with 503 instead of after the pool's default 30 s, times every retry (a
#: request used to take 90-200 s to fail).
_POOL_WAIT = 5.0
#: Once a wait for a connection failed, the database counts as down for this long
#: (seconds, renewed by each failure, ended by a connection): ops then wait
#: ``_DOWN_WAIT`` at most, so that a crowd of requests (a fleet of agents reconnecting)
#: is answered 503 within moments, not one by one after ``_POOL_WAIT`` each.
_DOWN_FOR = 2.0
_DOWN_WAIT = 0.1
#: A pool that lost a connection tries to make a new one with growing pauses (1, 2, 4,
#: ... s) for this long, then leaves it to the next op, which tries at once: after an
#: outage the pool connects again within seconds, not after a pause of minutes.
_RECONNECT_WINDOW = 10.0
#: The log says why the database failed an op at most this often (seconds), for each
#: reason (``LogLimit``).
_WARN_EVERY = 5.0
# Failures that roll back one op whose transaction lost a race with another one: the
# op is run again in a new transaction (see "How an operation runs").
# crc's tables are not there (the database was dropped and made again, or replaced), or
# not as this server set them up (a column gone).
_SCHEMA_GONE = (errors.UndefinedTable, errors.UndefinedColumn)
# ... and a column missing from a row read with ``SELECT *`` (store/base.py ``Row``).
_SCHEMA_CHANGED = (*_SCHEMA_GONE, MissingColumn)
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


def _where(url: str) -> str:
    """host:port/dbname of ``url`` for messages: never the password."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.Error:
        return "(unparsable URL)"
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


#: libpq's values of ``sslmode`` (any other is refused when connecting, after a wait).
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_EXPECTED = "expected postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"


def _check_url_values(info: dict[str, Any]) -> None:
    """What libpq would only refuse when connecting (exit 6, "cannot connect"), or
    look up as a host name: a port that is not 1-65535, an ``sslmode`` it does not
    know, a ``connect_timeout`` that is not a number. Input errors, said before any
    connection; never with the URL (its password)."""
    port = str(info.get("port") or "")
    for one in port.split(",") if port else []:  # libpq: one port per host, or one for all
        one = one.strip()
        if one and not (one.isascii() and one.isdigit() and 0 < int(one) < 65536):
            raise InvalidInput(
                f"invalid PostgreSQL database URL: the port {one!r} is not a number "
                f"from 1 to 65535 ({_EXPECTED})"
            )
    mode = info.get("sslmode")
    if mode is not None and mode not in _SSLMODES:
        raise InvalidInput(
            f"invalid PostgreSQL database URL: sslmode={mode!r} is not one of "
            f"{', '.join(_SSLMODES)}"
        )
    timeout = str(info.get("connect_timeout") or "").strip()
    if timeout and not (timeout.isascii() and timeout.isdigit()):
        raise InvalidInput(
            f"invalid PostgreSQL database URL: connect_timeout={timeout!r} is not a "
            "whole number of seconds"
        )


def _up_to_date(conn: psycopg.Connection[dict[str, Any]]) -> bool:
    """Whether crc's tables are there at this crc's schema version: nothing to set up
    (a role with no right to create tables may use them)."""
    if not _holds_crc(conn):
        return False
    row = conn.execute("SELECT MAX(version) AS v FROM schema_version").fetchone()
    return bool(row and row["v"] is not None and int(row["v"]) == MIGRATIONS[-1][0])


def _no_rights(url: str, where: str, exc: psycopg.Error) -> InvalidInput:
    """A role without the privileges crc needs on a database it did not set up."""
    try:
        role = conninfo_to_dict(url).get("user") or os.environ.get("PGUSER") or "(default)"
    except psycopg.Error:
        role = "(default)"
    return InvalidInput(
        f"cannot use crc's tables in database {where}: {_one_line(exc)}: the role "
        f"{role} lacks privileges there; connect as the role that set the database up "
        "(the owner of crc's tables), or have that role GRANT this one its rights "
        "(GRANT CREATE ON SCHEMA public, and SELECT, INSERT, UPDATE, DELETE ON ALL "
        "TABLES IN SCHEMA public)"
    )


def _holds_crc(conn: psycopg.Connection[dict[str, Any]]) -> bool:
    """Whether crc's schema is in the database (on the connection's search path)."""
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL AS ours").fetchone()
    return bool(row and row["ours"])


def _one_line(exc: Exception) -> str:
    """libpq's message on one line: it puts hints on lines of their own ("Connection
    refused\\n\\tIs the server running on that host...")."""
    return " ".join(str(exc).split())


class _PipelineFailed(Exception):
    """A statement of a pipelined batch failed. Its error arrives with the results of
    later statements, so which op sent it is not known: the batch is run again one
    statement at a time, where each failure belongs to its op."""


@dataclass
class _Pending:
    op: Callable[..., Any]
    args: tuple[Any, ...]
    fut: Future[Any] | asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop | None = None  # None: ``fut`` is write_sync's Future
    attempts: int = 0
    unique_violations: int = 0


class PostgresStore(Store):
    dialect = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        readers: int = 4,
        pipelined: bool | None = None,
        existing_only: bool = False,
    ) -> None:
        super().__init__()
        try:
            info = conninfo_to_dict(url)
        except psycopg.Error:
            # Not libpq's message: it quotes the URL, password included.
            raise InvalidInput(
                "invalid PostgreSQL database URL: expected "
                "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
            ) from None
        _check_url_values(info)
        if not info.get("dbname") and not os.environ.get("PGDATABASE"):
            # libpq would take the user's name: crc's tables in `postgres`, say.
            raise InvalidInput(
                "the PostgreSQL database URL names no database: expected "
                "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE (crc keeps its tables in "
                "a database of their own: createdb one)"
            )
        self.url = url
        self._existing_only = existing_only  # an admin command that only reads
        # Pipeline mode needs libpq >= 14 (psycopg's binary wheels bundle a newer one).
        self.pipelined = psycopg.Pipeline.is_supported() if pipelined is None else pipelined
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
        self.pipelined_batches = 0  # of which committed in pipeline mode
        self.fallbacks = 0  # pipelined batches rolled back and run one statement at a time
        self._warnings = LogLimit(_WARN_EVERY)  # what _failed logs, per reason
        self._down_until = 0.0  # the database counts as down until then (_DOWN_FOR)
        self.rows_read_ahead = 0  # reads answered from rows read ahead (committed batches)
        self.statements_sent = 0  # by pipelined batches' ops, kept and sent (``Outgoing``)
        self._types: dict[str, dict[str, str]] = {}  # column types, for ``Outgoing``

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
                        reconnect_timeout=_RECONNECT_WINDOW,
                    )
                    self._pools[kind] = pool
                    pool.open(wait=True, timeout=30)
            except psycopg.OperationalError as exc:
                self._close_pools()
                raise Unavailable(
                    f"cannot connect to PostgreSQL at {_where(self.url)}: {_one_line(exc)}"
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
            self._migrate_once()
        except BaseException:
            if self.identity is not None:  # a refused start leaves no key file it made
                from ..teardown import forget_made_key

                forget_made_key(self.identity.data_dir)
            raise

    def _check_key_file(
        self, conn: psycopg.Connection[dict[str, Any]], me: ReplicaIdentity
    ) -> None:
        """A teardown key made just now (its file was missing) is refused where the
        database holds provider keys sealed with another (or records the replicas'
        key), unless ``--new-teardown-key``: they would turn unreadable unsaid."""
        from ..teardown import KEY_FILE, key_made_now, missing_key_message

        if me.new_teardown_key or not key_made_now(me.data_dir):
            return
        sealed = conn.execute(
            "SELECT COUNT(*) AS n FROM teardowns WHERE secret IS NOT NULL"
        ).fetchone()
        n = int(sealed["n"]) if sealed else 0
        recorded = conn.execute(
            "SELECT 1 AS one FROM replica_identity WHERE name = 'teardown_key'"
        ).fetchone()
        if n or recorded:
            raise Conflict(
                missing_key_message(Path(me.data_dir) / KEY_FILE, _where(self.url), n, "replica"),
                code="teardown_key",
            )

    def _migrate_once(self) -> None:
        try:
            conn = _connect(self.url)
        except psycopg.OperationalError as exc:
            raise Unavailable(
                f"cannot connect to PostgreSQL at {_where(self.url)}: {_one_line(exc)}"
            ) from exc
        renewed: list[str] = []  # what this replica recorded in place of another's
        with conn:
            conn.isolation_level = IsolationLevel.READ_COMMITTED
            try:
                with conn.transaction():
                    if self._existing_only and not _holds_crc(conn):
                        raise NotFound(
                            f"database {_where(self.url)} holds no CloudRemoteControl "
                            "data: check the URL; `crc server run` sets up a new database, "
                            "the admin commands that only read never do"
                        )
                    # Under the migrations' lock: a replica setting the schema up
                    # meanwhile is waited for. Up to date, nothing is created (a role
                    # that may only use the tables need not create them).
                    conn.execute("SELECT pg_advisory_xact_lock(7244101)")
                    if not _up_to_date(conn):
                        migrate(PgTx(conn.cursor()), self.dialect)
                    if self.identity is not None:  # `crc server run`: see store/identity.py
                        self._check_key_file(conn, self.identity)
                        renewed = check_identity(
                            PgTx(conn.cursor()), self.identity, time.time(), _where(self.url)
                        )
            except psycopg.errors.InsufficientPrivilege as exc:
                raise _no_rights(self.url, _where(self.url), exc) from None
            except psycopg.OperationalError as exc:
                raise Unavailable(
                    f"PostgreSQL at {_where(self.url)} failed setting up crc's tables: "
                    f"{_one_line(exc)}"
                ) from exc
            except psycopg.Error as exc:  # a table of another application, no rights
                raise InvalidInput(
                    f"cannot set up crc's tables in database {_where(self.url)}: "
                    f"{_one_line(exc)}: give crc a database of its own (createdb)"
                ) from None
            self._types = column_types(conn.cursor())
        for what in renewed:
            log.warning(
                "recorded %s in database %s as the one of every replica: start the other "
                "replicas with the same file",
                what,
                _where(self.url),
            )

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
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Pending(op, args, fut, loop=loop))
        try:
            return await fut
        except _SCHEMA_CHANGED as exc:
            raise self._failed(exc) from exc

    def write_sync(self, op: Callable[..., T], *args: Any) -> T:
        self.open_sync()
        fut: Future[T] = Future()
        self._queue.put(_Pending(op, args, fut))
        return fut.result()

    async def read(self, op: Callable[..., T], *args: Any) -> T:
        if self._read_executor is None:
            raise Unavailable("the database is closed (server starting or stopping)")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._read_executor, self._read_sync, op, args)
        except _SCHEMA_CHANGED as exc:
            raise self._failed(exc) from exc

    def _read_sync(self, op: Callable[..., T], args: tuple[Any, ...]) -> T:
        pool = self._pools["read"]
        for attempt in range(3):
            try:
                with pool.connection(timeout=self._pool_wait()) as conn:
                    self._down_until = 0.0
                    conn.isolation_level = IsolationLevel.REPEATABLE_READ
                    conn.read_only = True
                    with conn.transaction():
                        return op(PgTx(conn.cursor()), *args)
            except PoolTimeout as exc:  # the pool tried to connect all along: no retry
                raise self._failed(exc) from exc
            except psycopg.OperationalError as exc:
                if attempt == 2:
                    raise self._failed(exc) from exc
                pool.check()  # drop every connection that died with this one (restart)
        raise AssertionError("unreachable")

    def _pool_wait(self) -> float:
        """How long an op waits for a connection now (see ``_DOWN_FOR``)."""
        return _DOWN_WAIT if time.monotonic() < self._down_until else _POOL_WAIT

    def _failed(self, exc: psycopg.Error | MissingColumn) -> Unavailable:
        """What the caller of an op the database failed is told: that it is unavailable,
        not where it is or what it said (an agent or an anonymous caller may be told):
        that goes to the log, at most once per ``_WARN_EVERY`` seconds for each reason
        (each missing column or table by name). A wait for a connection that failed
        marks the database down (``_DOWN_FOR``)."""
        if isinstance(exc, PoolTimeout):
            self._down_until = time.monotonic() + _DOWN_FOR
        if isinstance(exc, MissingColumn):
            reason = f"column {exc.column}"
        elif isinstance(exc, _SCHEMA_GONE):  # its first line names the column or table
            reason = f"{type(exc).__name__} {str(exc).partition(chr(10))[0]}"
        else:
            reason = type(exc).__name__
        if self._warnings.due(reason):
            if isinstance(exc, (errors.UndefinedColumn, MissingColumn)):
                log.error(
                    "PostgreSQL at %s has crc's tables without a column this server uses "
                    "(changed by hand, or by a newer crc server's migration): run one crc "
                    "version on every replica, or restore the database: %s",
                    _where(self.url),
                    exc,
                )
            elif isinstance(exc, _SCHEMA_GONE):
                log.error(
                    "PostgreSQL at %s has lost crc's tables (the database was dropped "
                    "and made again, or replaced): restart the server to set them up "
                    "again, or restore the database: %s",
                    _where(self.url),
                    exc,
                )
            else:
                log.warning("PostgreSQL at %s failed an operation: %s", _where(self.url), exc)
        return Unavailable("the server's database is unavailable; try again later")

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
            try:
                retry = self._run_batch(batch)
            except Exception:
                # A fault of this server: the batch fails and this thread goes on (else
                # every write of every user would wait for ever on a dead thread).
                log.exception("PostgreSQL writer: a batch of %d operations failed", len(batch))
                failure = Unavailable("the server failed to store this; try again later")
                _answer([(p, False, failure) for p in batch])
                retry = []
            if retry:
                self.retries += len(retry)
                wait = min(0.05, 0.001 * 2 ** max(p.attempts for p in retry))
                time.sleep(_JITTER.uniform(0, wait))

    def _run_batch(self, batch: list[_Pending]) -> list[_Pending]:
        """Run ``batch`` in one transaction, each op in its own savepoint; commit once,
        then resolve the futures. Returns the ops to run again in a new transaction."""
        # Skip ops whose caller was cancelled while they were queued (as an executor
        # would): resolving a cancelled Future raises and would kill this thread.
        # (Reading an asyncio future's flag from this thread is a benign race: an op
        # cancelled a moment later runs, and its result is dropped.)
        batch = [p for p in batch if not p.fut.cancelled()]
        if not batch:
            return []
        if self.pipelined:
            try:
                return self._run_pipelined(batch)
            except _PipelineFailed:
                self.fallbacks += 1  # rolled back: the same ops, one statement at a time
        return self._run_one_by_one(batch)

    def _run_pipelined(self, batch: list[_Pending]) -> list[_Pending]:
        """The fast path of ``_run_batch`` (see "Pipelined batches"). Raises
        ``_PipelineFailed`` when any statement failed: the transaction is rolled back
        and nothing was resolved."""
        done: list[tuple[_Pending, bool, Any]] = []
        groups: set[str] = set()
        machines: set[str] = set()
        events: list[tuple[Any, ...]] = []
        committing = False
        try:
            with self._pools["write"].connection(timeout=self._pool_wait()) as conn:
                self._down_until = 0.0
                conn.isolation_level = IsolationLevel.REPEATABLE_READ
                with conn.pipeline() as pipeline, conn.transaction():
                    cur, reader = conn.cursor(), conn.cursor()
                    held: set[str] = set()  # locks taken early (_lock_events_now)
                    # The rows the ops declare they read, in one round trip ("Rows
                    # read ahead").
                    rows = read_ahead(conn, [(p.op, p.args) for p in batch], self._types)
                    # The ops' statements that nothing waits for, kept until something
                    # does ("Statements kept").
                    out = Outgoing(cur, self._types)
                    for p in batch:
                        tx = PgTx(cur, held, pipeline, reader, rows, out)
                        out.add("SAVEPOINT op")
                        try:
                            value = p.op(tx, *p.args)
                        except psycopg.Error:
                            raise  # which op failed is not known: see _PipelineFailed
                        except BaseException as exc:  # noqa: BLE001 -- handed to the caller
                            for cache in rows:
                                cache.rolled_back()
                            out.add("ROLLBACK TO SAVEPOINT op")
                            out.add("RELEASE SAVEPOINT op")
                            done.append((p, False, exc))
                        else:
                            out.add("RELEASE SAVEPOINT op")
                            groups |= tx.notified
                            machines |= tx.machines_notified
                            events += tx.events
                            done.append((p, True, value))
                    out.flush()
                    sent = out.sent
                    insert_events(cur, events)
                    self._send_notifications(cur, groups, machines)
                    pipeline.sync()  # every statement's outcome is in: none failed
                    committing = True
        except psycopg.Error as exc:
            if not committing and not isinstance(exc, PoolTimeout):
                raise _PipelineFailed from exc
            failure = self._failed(exc)
            failure.__cause__ = exc
            # No connection (nothing was sent), or COMMIT was sent: it may or may not
            # have happened.
            _answer([(p, False, failure) for p in batch])
            return []
        except Exception as exc:
            # A fault of this code, not of an op (those are answered above) nor of the
            # database: rolled back unless COMMIT was sent; then the ops run one by one,
            # each answered its own outcome.
            if committing:
                raise
            log.exception("PostgreSQL writer: a pipelined batch failed; running it again")
            raise _PipelineFailed from exc
        self.batches += 1
        self.pipelined_batches += 1
        self.rows_read_ahead += sum(cache.served for cache in rows)
        self.statements_sent += sent
        self._settle(groups, done)
        return []

    def _send_notifications(
        self, cur: psycopg.Cursor[dict[str, Any]], groups: set[str], machines: set[str]
    ) -> None:
        # Machine payloads carry this replica's id, so it ignores its own.
        payloads = sorted(groups) + [f"m:{self.replica}:{m}" for m in machines]
        if payloads:
            cur.execute("SELECT pg_notify(%s, g) FROM unnest(%s::text[]) g", (CHANNEL, payloads))

    def _settle(self, groups: set[str], done: list[tuple[_Pending, bool, Any]]) -> None:
        """After COMMIT: wake this replica's followers, then answer the callers."""
        self._wake(groups)
        _answer(done)

    def _run_one_by_one(self, batch: list[_Pending]) -> list[_Pending]:
        """``_run_batch`` with each statement waited for: a failing statement fails its
        own op, which is rolled back alone (and run again if it lost a race)."""
        done: list[tuple[_Pending, bool, Any]] = []
        retry: list[_Pending] = []
        groups: set[str] = set()  # also the group locks held by the transaction
        machines: set[str] = set()  # outboxes that grew: other replicas may hold them
        committing = False
        try:
            with self._pools["write"].connection(timeout=self._pool_wait()) as conn:
                self._down_until = 0.0
                conn.isolation_level = IsolationLevel.REPEATABLE_READ
                cur = conn.cursor()
                with conn.transaction():
                    for p in batch:
                        tx = PgTx(cur, groups)
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
                    self._send_notifications(cur, groups, machines)
                    committing = True
        except psycopg.Error as exc:  # also PoolTimeout
            failure = self._failed(exc)
            failure.__cause__ = exc
            # COMMIT was sent: it may or may not have happened; or no connection came
            # while the pool tried to make one: trying again would wait as long again.
            if committing or isinstance(exc, PoolTimeout):
                _answer([(p, False, failure) for p in batch])
                return []
            self._pools["write"].check()  # before COMMIT: rolled back, safe to re-run
            again = []
            failed: list[tuple[_Pending, bool, Any]] = []
            for p in batch:
                p.attempts += 1
                if p.attempts >= _CONNECTION_RETRIES:
                    failed.append((p, False, failure))
                else:
                    again.append(p)
            _answer(failed)
            return again
        self.batches += 1
        self._settle(groups, done)
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


def _answer(results: list[tuple[_Pending, bool, Any]]) -> None:
    settle((p.fut, p.loop, ok, value) for p, ok, value in results)
