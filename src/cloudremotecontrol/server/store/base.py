"""The store seam: what the server needs from a database."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .identity import ReplicaIdentity

__all__ = [
    "ALL_GROUPS",
    "JOB_TARGET_SQL",
    "OUTBOX_DROP_SQL",
    "LogLimit",
    "MissingColumn",
    "Row",
    "Store",
    "Tx",
    "open_store",
    "read_job_target",
    "read_outbox_drop",
    "read_row",
    "reads_job_target",
    "reads_outbox_drop",
    "reads_row",
    "row_sql",
    "settle",
    "shown_database",
    "star_row",
    "star_rows",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: In the set given to ``on_commit`` listeners: "any group may have new events" (sent
#: when a backend may have missed notifications, e.g. after its LISTEN reconnected).
ALL_GROUPS = "*"


class MissingColumn(KeyError):
    """An op read a column that a row read with ``SELECT *`` has not: crc's table lost
    it (dropped by hand, or by a newer crc server's migration). A backend answers the
    op's caller as for a column a statement names that is not there: the database is
    unavailable (503), its log names the column."""

    def __init__(self, column: str) -> None:
        super().__init__(column)
        self.column = column

    def __str__(self) -> str:
        return f'column "{self.column}" is missing from a row read with SELECT *'


class LogLimit:
    """When a backend's log says why the database failed an op: at most once per
    ``every`` seconds for each reason (a missing column, a lost table, a connection
    failure), so that a reason said often never holds back another one (a column dropped
    after another, whose line a background task's repeated failure would otherwise keep
    out of the log). At most ``keep`` reasons are remembered (the one met longest ago
    is forgotten first), so that varied error text cannot grow it."""

    def __init__(self, every: float, keep: int = 64) -> None:
        self.every = every
        self.keep = keep
        self._said: dict[str, float] = {}  # reason -> when last said; last met last
        self._lock = threading.Lock()  # ops fail on the loop and on database threads

    def due(self, reason: str) -> bool:
        """Whether the log says ``reason`` now (and, if so, count it as said)."""
        now = time.monotonic()
        with self._lock:
            said = self._said.pop(reason, None)
            if said is not None and now - said < self.every:
                self._said[reason] = said
                return False
            self._said[reason] = now
            while len(self._said) > self.keep:
                del self._said[next(iter(self._said))]
            return True


class Row(dict[str, Any]):
    """A row read with ``SELECT *``: reading a column it has not raises
    ``MissingColumn`` (a ``KeyError``), not a bare ``KeyError``."""

    __slots__ = ()

    def __missing__(self, key: str) -> Any:
        raise MissingColumn(key)


_SELECT_LIST = re.compile(r"\s*SELECT\s+(.*?)\bFROM\b", re.IGNORECASE | re.DOTALL)
_STAR_ITEM = re.compile(r"(?:^|,)\s*(?:\w+\.)?\*\s*(?=,|$)")
_RETURNING_ALL = re.compile(r"\bRETURNING\s+\*", re.IGNORECASE)


@functools.lru_cache(maxsize=1024)
def _reads_all_columns(sql: str) -> bool:
    """Whether ``sql``'s rows have every column of a table: ``SELECT *``, ``SELECT
    t.*, ...`` or ``RETURNING *`` (not ``COUNT(*)``)."""
    if _RETURNING_ALL.search(sql):
        return True
    found = _SELECT_LIST.match(sql)
    if found is None:
        return False
    items = re.sub(r"\([^()]*\)", "()", found.group(1)).strip()
    return _STAR_ITEM.search(items) is not None


def star_row(sql: str, row: dict[str, Any] | None) -> dict[str, Any] | None:
    """``row`` as a ``Row`` when ``sql`` reads every column of a table (see ``Row``)."""
    return Row(row) if row is not None and _reads_all_columns(sql) else row


def star_rows(sql: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` as ``Row``s when ``sql`` reads every column of a table."""
    return [Row(r) for r in rows] if rows and _reads_all_columns(sql) else rows


class Tx(abc.ABC):
    """One transaction. SQL uses ``?`` placeholders and portable syntax (SQLite >= 3.35,
    PostgreSQL >= 12): ``ON CONFLICT``, ``RETURNING``; backends translate placeholders.
    An op may use ``SAVEPOINT`` inside its transaction (both backends nest them)."""

    #: The backend's own exceptions: an op that catches broad errors lets these through
    #: (the store retries a conflict, reports a lost connection).
    database_errors: tuple[type[Exception], ...] = ()

    @abc.abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; return the number of rows changed."""

    def send(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run a statement whose outcome the op does not read (no rows, no count). A
        backend may send it without waiting for its result (PostgreSQL pipelines it):
        if it fails, the op fails, though perhaps only when it returns."""
        self.execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement once per row of parameters, in order (like ``send``: a
        backend may send them without waiting, or at once)."""
        for params in rows:
            self.send(sql, params)

    @abc.abstractmethod
    def one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        """The first row as a dict, or None."""

    @abc.abstractmethod
    def all(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Every row as a dict."""

    def notify(self, group_id: str) -> None:
        """Ask the backend to wake event followers of ``group_id`` after commit. Call it
        *before* inserting the group's events: PostgreSQL takes the group's event lock
        here, so that event ids become visible in order (see store/postgres.py)."""
        self.notified.add(group_id)

    def notify_machine(self, machine_id: str) -> None:
        """Tell other replicas, after commit, that ``machine_id``'s outbox grew (the
        replica holding its connection sends it). Within one process the hub is told
        directly."""
        self.machines_notified.add(machine_id)

    @property
    def machines_notified(self) -> set[str]:
        if not hasattr(self, "_machines_notified"):
            self._machines_notified: set[str] = set()
        return self._machines_notified

    @property
    def notified(self) -> set[str]:
        if not hasattr(self, "_notified"):
            self._notified: set[str] = set()
        return self._notified


def reads_row(table: str, arg: int = 0) -> Callable[[F], F]:
    """Declare that an op reads ``SELECT * FROM <table> WHERE id = ?`` (``row_sql``)
    with its positional argument ``arg`` (after ``tx``) as the id. A backend whose every
    read is a round trip (PostgreSQL) may read the rows of a whole batch's ops in one
    statement before running them; the op reads the same either way (see
    store/pg_tx.py, ``RowCache``)."""

    def mark(op: F) -> F:
        setattr(op, "_crc_reads_row", (table, arg))  # noqa: B010 -- a function's attribute
        return op

    return mark


def read_row(op: Callable[..., Any], args: Sequence[Any]) -> tuple[str, Any] | None:
    """``(table, id)`` for an op marked with ``reads_row``, else None."""
    mark = getattr(op, "_crc_reads_row", None)
    if mark is None:
        return None
    table, arg = mark
    return (table, args[arg]) if arg < len(args) else None


def row_sql(table: str) -> str:
    """The statement ``reads_row`` declares (ops must spell it exactly so)."""
    return f"SELECT * FROM {table} WHERE id = ?"  # noqa: S608 -- a table of the ops' own


def _declare(attr: str, key: Callable[..., Any]) -> Callable[[F], F]:
    """A decorator that keeps ``key`` on the op as ``attr`` (read by ``_declared``)."""

    def mark(op: F) -> F:
        setattr(op, attr, key)
        return op

    return mark


def _declared(op: Callable[..., Any], attr: str, args: Sequence[Any]) -> Any:
    """What the op's ``attr`` key says for ``args``: None when it has none, or it raised."""
    key = getattr(op, attr, None)
    if key is None:
        return None
    try:
        return key(*args)
    except Exception:  # noqa: BLE001 -- a declaration's guess must never fail the op
        return None


#: How ops read a job's target with its job's rate control (ops/streams.py ``job_steps``),
#: with ``(job_id, machine_id)`` as parameters: the statement ``reads_job_target``
#: declares.
JOB_TARGET_SQL = (
    "SELECT t.status, t.exit_code, t.reason, t.output_bytes, t.held, j.rollout "
    "FROM job_targets t "
    "JOIN jobs j ON j.id = t.job_id WHERE t.job_id = ? AND t.machine_id = ?"
)


def reads_job_target(key: Callable[..., tuple[str, str] | None]) -> Callable[[F], F]:
    """Declare that an op may read ``JOB_TARGET_SQL`` with ``key(*args)`` (its
    arguments after ``tx``) as ``(job_id, machine_id)``; ``key`` returns None when it
    will not. Like ``reads_row``: a backend may read the targets of a whole batch's ops
    in one statement, and the op reads the same either way. ``key`` looks at the
    arguments only (it may be given input the op will refuse) and must not raise."""

    return _declare("_crc_reads_job_target", key)


def read_job_target(op: Callable[..., Any], args: Sequence[Any]) -> tuple[str, str] | None:
    """``(job_id, machine_id)`` for an op marked with ``reads_job_target``, else None."""
    found = _declared(op, "_crc_reads_job_target", args)
    if (
        not isinstance(found, tuple)
        or len(found) != 2
        or not all(isinstance(part, str) for part in found)
    ):
        return None
    return found


#: How ops drop what a machine acknowledged from its outbox (ops/streams.py
#: ``drop_through``), with ``(machine_id, seq)`` as parameters: the statement
#: ``reads_outbox_drop`` declares.
OUTBOX_DROP_SQL = "DELETE FROM outbox WHERE machine_id = ? AND seq <= ? RETURNING seq, type, job_id"


def reads_outbox_drop(key: Callable[..., tuple[str, int] | None]) -> Callable[[F], F]:
    """Declare that an op may run ``OUTBOX_DROP_SQL`` with ``key(*args)`` (its
    arguments after ``tx``) as ``(machine_id, seq)``; ``key`` returns None when it will
    not. As ``reads_job_target``: a backend may read the rows such statements would
    return for a whole batch in one statement, then answer each from there as the
    statement would (it still runs, without being waited for)."""

    return _declare("_crc_reads_outbox_drop", key)


def read_outbox_drop(op: Callable[..., Any], args: Sequence[Any]) -> tuple[str, int] | None:
    """``(machine_id, seq)`` for an op marked with ``reads_outbox_drop``, else None."""
    found = _declared(op, "_crc_reads_outbox_drop", args)
    if (
        not isinstance(found, tuple)
        or len(found) != 2
        or not isinstance(found[0], str)
        or type(found[1]) is not int
    ):
        return None
    return found


class Store(abc.ABC):
    """Runs operations. ``write`` is durable when it returns; ``read`` sees commits."""

    dialect: str = ""

    def __init__(self) -> None:
        self._listeners: list[Callable[[set[str]], None]] = []
        self._outbox_listeners: list[Callable[[set[str]], None]] = []
        self.replica = ""  # set by the server: tells this process's notifications apart
        #: Set by ``crc server run``: what this replica must share with the others of its
        #: database, checked (and recorded by the first) at start (store/identity.py).
        self.identity: ReplicaIdentity | None = None

    def on_commit(self, listener: Callable[[set[str]], None]) -> None:
        """Call ``listener(group_ids)`` after commits that produced events (any replica);
        ``group_ids`` may hold ``ALL_GROUPS``. Called from a backend thread."""
        self._listeners.append(listener)

    def on_outbox(self, listener: Callable[[set[str]], None]) -> None:
        """Call ``listener(machine_ids)`` when another replica queued messages for them
        (``ALL_GROUPS`` in the set: any machine may have). Called from a backend thread."""
        self._outbox_listeners.append(listener)

    def _fire_outbox(self, machines: set[str]) -> None:
        if machines:
            for listener in self._outbox_listeners:
                listener(machines)

    def _fire(self, groups: set[str]) -> None:
        if groups:
            for listener in self._listeners:
                listener(groups)

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def write(self, op: Callable[..., T], *args: Any) -> T:
        """Run ``op(tx, *args)`` in a transaction; committed when this returns."""

    @abc.abstractmethod
    async def read(self, op: Callable[..., T], *args: Any) -> T:
        """Run ``op(tx, *args)`` read-only."""

    @abc.abstractmethod
    def write_sync(self, op: Callable[..., T], *args: Any) -> T:
        """Blocking variant for admin commands (``crc server add-user``)."""


def shown_database(url: str) -> str:
    """The database URL as a message or the log may show it: without its password."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:  # refused when the store is made (open_store)
        return "(an invalid URL)"
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def open_store(url: str, *, existing_only: bool = False) -> Store:
    """``sqlite:///path/to/file.db`` or ``postgresql://user@host/db``. ``existing_only``
    (an admin command that only reads): a PostgreSQL database without crc's tables is
    refused, not set up (the caller checks that a SQLite file exists)."""
    from ...errors import InvalidInput

    if url.startswith("sqlite:///"):
        from .sqlite import SqliteStore

        return SqliteStore(url[len("sqlite:///") :])
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from .postgres import PostgresStore
        except ImportError:
            raise InvalidInput(
                "this server has no PostgreSQL support installed: use the "
                "default SQLite database (omit --database)"
            ) from None
        return PostgresStore(url, existing_only=existing_only)
    raise InvalidInput(
        f"unsupported database URL {shown_database(url)!r}: use sqlite:///PATH or postgresql://…"
    )


#: One write's outcome for its caller: its future, the loop that waits on it (None: a
#: ``concurrent.futures.Future`` of ``write_sync``), whether it succeeded, its value.
Outcome = tuple[Any, "asyncio.AbstractEventLoop | None", bool, Any]


def settle(outcomes: Iterable[Outcome]) -> None:
    """Hand a batch's results to their callers (from a backend's writer thread): a
    ``write_sync`` Future directly, asyncio futures with one wake-up of their loop per
    batch (not one thread hop per operation)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
    for fut, loop, ok, value in outcomes:
        if loop is not None:
            by_loop.setdefault(loop, []).append((fut, ok, value))
        elif ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(_settle_in_loop, items)


def _settle_in_loop(items: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, value in items:
        if fut.done():  # its caller was cancelled meanwhile: the operation ran regardless
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
