"""PostgreSQL's side of ``Tx``: placeholders, the statements a pipelined batch sends
without waiting, and the events it keeps until its end (see store/postgres.py, "How an
operation runs", "Pipelined batches" and "Event order")."""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from typing import Any

import psycopg

from ...errors import InvalidInput
from .base import (
    JOB_TARGET_SQL,
    OUTBOX_DROP_SQL,
    MissingColumn,
    Tx,
    read_job_target,
    read_outbox_drop,
    read_row,
    row_sql,
    star_row,
    star_rows,
)

__all__ = [
    "EVENT_LOCK_CLASS",
    "OutboxCache",
    "Outgoing",
    "PgTx",
    "RowCache",
    "TargetCache",
    "group_key",
    "insert_events",
    "known_count",
    "plain_update",
    "read_ahead",
    "to_pyformat",
]

EVENT_LOCK_CLASS = 7244102  # first key of the (int, int) advisory locks on groups


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


_ONE_ROW_INSERT = re.compile(r"INSERT INTO \w+ \([\w\s,]*\) VALUES \([?\s,]*\)", re.IGNORECASE)
_NO_COUNT = ("SAVEPOINT ", "RELEASE ", "ROLLBACK TO ")


@functools.lru_cache(maxsize=2048)
def known_count(sql: str) -> int | None:
    """The row count ``sql`` has if it succeeds, when that is known without running it:
    1 for an ``INSERT`` of one row of parameters (no ``ON CONFLICT``, no ``RETURNING``),
    0 for savepoint statements; None for anything else. Those statements go out in a
    pipeline without waiting for their result."""
    text = sql.strip()
    if text.upper().startswith(_NO_COUNT):
        return 0
    return 1 if _ONE_ROW_INSERT.fullmatch(text) else None


#: ``add_event``'s statement (ops/common.py): pipelined, its rows are kept in the
#: ``PgTx`` and inserted at the end of the batch, after the groups' locks.
_EVENT_INSERT = (
    "INSERT INTO events (group_id, created, type, machine, job_id, data) VALUES (?, ?, ?, ?, ?, ?)"
)
_EVENTS_INSERT_MANY = (
    "INSERT INTO events (group_id, created, type, machine, job_id, data) "
    "SELECT g, c, t, m, j, d FROM unnest(%b::text[], %b::float8[], %b::text[], %b::text[], "
    "%b::text[], %b::text[]) WITH ORDINALITY AS e(g, c, t, m, j, d, n) ORDER BY n"
)
_SAVEPOINT = re.compile(
    r"\s*(SAVEPOINT|RELEASE|ROLLBACK\s+TO)\s+(?:SAVEPOINT\s+)?(\w+)\s*", re.IGNORECASE
)


@functools.lru_cache(maxsize=256)
def _savepoint(sql: str) -> tuple[str, str] | None:
    """("SAVEPOINT" | "RELEASE" | "ROLLBACK", name) for a savepoint statement."""
    match = _SAVEPOINT.fullmatch(sql)
    if match is None:
        return None
    return match.group(1).split()[0].upper(), match.group(2)


@functools.lru_cache(maxsize=2048)
def _touches_events(sql: str) -> bool:
    return re.search(r"\b(INTO|UPDATE)\s+events\b", sql, re.IGNORECASE) is not None


#: ``UPDATE <table> SET ... WHERE id = ?`` or ``WHERE id IN (?, ...)``, perhaps with a
#: ``RETURNING`` list: the rows it changes are those of its last parameters. A ``SET``
#: clause with parentheses (a function, a subquery) is not looked into.
_ROW_UPDATE = re.compile(
    r"\s*UPDATE\s+(\w+)\s+SET\s+([^()]*?)\s+WHERE\s+id\s+"
    r"(?:=\s*\?|IN\s*\(([?,\s]*)\))(?:\s+RETURNING\s+[\w\s,]+)?\s*",
    re.IGNORECASE | re.DOTALL,
)
_CLAUSE = re.compile(r"\b(?:FROM|WHERE)\b", re.IGNORECASE)
_ASSIGNMENT = re.compile(r"\s*(\w+)\s*=\s*\?\s*")


@functools.lru_cache(maxsize=1024)
def _row_writes(sql: str, table: str) -> tuple[int, tuple[str, ...] | None] | None:
    """How ``sql`` may change rows of ``table``: None if it cannot; ``(n, columns)``
    if it updates only the rows whose ids are its last ``n`` parameters, ``columns``
    being the names its ``SET`` gives a parameter each, in order (None: other
    assignments); ``(-1, None)``: any row."""
    text = sql.lstrip()
    if text[:6].upper() == "SELECT" or not re.search(rf"\b{table}\b", text, re.IGNORECASE):
        return None  # a read, or a statement on other tables (the schema has no cascades)
    match = _ROW_UPDATE.fullmatch(text)
    if match is None or match.group(1).lower() != table or _CLAUSE.search(match.group(2)):
        return (-1, None)  # (UPDATE ... FROM: "id" may not be this table's)
    ids = 1 if match.group(3) is None else match.group(3).count("?")
    parts = match.group(2).split(",")
    columns = [_ASSIGNMENT.fullmatch(part) for part in parts]
    if all(columns) and sql.count("?") == len(parts) + ids:
        return (ids, tuple(c.group(1) for c in columns if c is not None))
    return (ids, None)


@functools.lru_cache(maxsize=1024)
def plain_update(sql: str) -> tuple[str, tuple[str, ...]] | None:
    """``(table, columns)`` for ``UPDATE <table> SET <column> = ?, ... WHERE id = ?``
    (plain assignments, one row by id), else None."""
    match = _ROW_UPDATE.fullmatch(sql)
    if match is None or match.group(3) is not None or "RETURNING" in sql.upper():
        return None
    table = match.group(1).lower()
    writes = _row_writes(sql, table)
    if writes is None or writes[0] != 1 or writes[1] is None:
        return None
    return table, writes[1]


#: Python types a merged update passes in an array (one type per column, or None).
_ARRAY_TYPES = (int, float, str, bool)


class Outgoing:
    """The statements of a pipelined batch that no op waits for, kept until something
    must see them (a read, a waited row count, the batch's end) and then sent in order.
    Kept, they cost nothing when they need not run at all, and several cost one:

    - a ``SAVEPOINT`` still kept when its ``RELEASE`` comes is dropped with it, and one
      still kept when a ``ROLLBACK TO`` it comes drops what was kept after it: in a
      pipelined batch a savepoint matters only to a rollback (a failing statement fails
      the whole batch, which runs again one statement at a time), so the batch's
      savepoint per op and an op's own are sent only when a statement ran inside them
      before their end (an op that reads after writing);
    - consecutive plain updates of rows by id with the same text (``plain_update``: the
      inbox's ``in_done`` of one message after another's) go out as one ``UPDATE ...
      FROM unnest(...)`` per run of distinct ids: each row changes as one statement
      after the other would change it, and a value its constraints refuse still fails
      (a row updated twice is in two statements, so the first value is checked too).
      Columns of a unique index are not updated so (one statement could swap values
      that one row at a time could not).

    ``types``: the column types of the tables (``column_types``); a column missing there
    is updated one statement per row."""

    def __init__(
        self, cur: psycopg.Cursor[dict[str, Any]], types: dict[str, dict[str, str]]
    ) -> None:
        self.cur = cur
        self.types = types
        self.kept: list[tuple[str, tuple[Any, ...]]] = []  # (SQL with ?, params)
        self.savepoints: list[tuple[str, int]] = []  # kept SAVEPOINTs: (name, index)
        self.sent = 0  # statements sent (for tests and benchmarks)

    def add(self, sql: str, params: Sequence[Any] = ()) -> None:
        savepoint = _savepoint(sql)
        if savepoint is None:
            self.kept.append((sql, tuple(params)))
            return
        verb, name = savepoint
        if verb == "SAVEPOINT":
            self.savepoints.append((name, len(self.kept)))
            self.kept.append((sql, ()))
            return
        at = next(
            (i for i in reversed(range(len(self.savepoints))) if self.savepoints[i][0] == name),
            None,
        )
        if at is None:  # established before what is kept: it and the later ones end here
            self.savepoints.clear()
            self.kept.append((sql, ()))
        elif verb == "RELEASE":  # with the savepoints after it, all kept
            for _, index in reversed(self.savepoints[at:]):
                del self.kept[index]
            del self.savepoints[at:]
        else:  # ROLLBACK TO: the savepoint stays, what came after it goes
            del self.kept[self.savepoints[at][1] + 1 :]
            del self.savepoints[at + 1 :]

    def flush(self) -> None:
        """Send what is kept, in order."""
        kept, self.kept = self.kept, []
        self.savepoints.clear()
        i = 0
        while i < len(kept):
            sql, params = kept[i]
            j = i + 1
            while j < len(kept) and kept[j][0] == sql:
                j += 1
            if j - i > 1 and self._mergeable(sql, [p for _, p in kept[i:j]]):
                ids: set[Any] = set()
                run: list[tuple[Any, ...]] = []
                for _, row in kept[i:j]:
                    if row[-1] in ids:  # updated again: in the next statement
                        self._send_merged(sql, run)
                        ids.clear()
                        run = []
                    ids.add(row[-1])
                    run.append(row)
                self._send_merged(sql, run)
                i = j
                continue
            self._send(to_pyformat(sql), params)
            i += 1

    def _send(self, sql: str, params: Sequence[Any]) -> None:
        self.cur.execute(sql, params)
        self.sent += 1

    def _mergeable(self, sql: str, rows: list[tuple[Any, ...]]) -> bool:
        """Whether ``sql`` with each of ``rows`` may go out as ``_send_merged``."""
        update = plain_update(sql)
        if update is None:
            return False
        table, columns = update
        types = self.types.get(table, {})
        if any(name not in types for name in (*columns, "id")):
            return False
        for name, column in zip((*columns, "id"), zip(*rows, strict=True), strict=True):
            kinds = {type(v) for v in column if v is not None}
            if len(kinds) > 1 or not kinds <= set(_ARRAY_TYPES):
                return False
            if bool in kinds and types[name] != "boolean":
                return False  # one statement would refuse it; an array cast would not
        return True

    def _send_merged(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """``sql`` (``_mergeable``) once per row of ``rows`` (distinct ids), as one."""
        if len(rows) == 1:
            self._send(to_pyformat(sql), rows[0])
            return
        update = plain_update(sql)
        assert update is not None
        table, columns = update
        types = self.types[table]
        names = (*columns, "id")
        sets = ", ".join(f"{c} = v.{c}" for c in columns)
        arrays = ", ".join(f"%b::{types[n]}[]" for n in names)
        self._send(
            f"UPDATE {table} SET {sets} FROM unnest({arrays}) AS v({', '.join(names)}) "  # noqa: S608 -- names of the ops' own SQL
            f"WHERE {table}.id = v.id",
            [list(column) for column in zip(*rows, strict=True)],
        )


def column_types(cur: psycopg.Cursor[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """``{table: {column: type}}`` of the tables on the search path (for ``Outgoing``),
    without the columns of a unique index other than ``id`` (all of them where one has
    an expression or a predicate)."""
    cur.execute(
        "SELECT c.relname AS t, a.attname AS c, format_type(a.atttypid, a.atttypmod) AS ty "
        "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "WHERE c.relkind = 'r' AND pg_table_is_visible(c.oid) AND a.attnum > 0 "
        "AND NOT a.attisdropped AND (a.attname = 'id' OR NOT EXISTS ("
        "SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisunique "
        "AND (a.attnum = ANY(i.indkey) OR i.indexprs IS NOT NULL OR i.indpred IS NOT NULL)))"
    )
    types: dict[str, dict[str, str]] = {}
    for row in cur.fetchall():
        types.setdefault(row["t"], {})[row["c"]] = row["ty"]
    return types


#: The table whose rows ``RowCache`` reads ahead (the one ops declare today).
PREFETCHED = "machines"


class _Kept:
    """What the caches of rows read ahead share: ``rows`` by key, emptied by a rollback
    to a savepoint once a kept row was changed (what it undid is not known here)."""

    rows: dict[Any, Any]
    changed: bool  # a kept row was changed since the batch began
    served: int  # reads answered from here

    def _changes_rows(self, sql: str) -> bool:
        """Whether ``wrote`` must look at ``sql`` further: rows are kept and it is not a
        savepoint statement (a rollback to one is handled here)."""
        if not self.rows:
            return False
        savepoint = _savepoint(sql)
        if savepoint is None:
            return True
        if savepoint[0] == "ROLLBACK":
            self.rolled_back()
        return False

    def rolled_back(self) -> None:
        """A rollback to a savepoint: what it undid is not known here."""
        if self.changed:
            self.rows.clear()

    def _serve(self, key: Any) -> tuple[bool, dict[str, Any] | None]:
        row = self.rows[key]
        self.served += 1
        return True, (dict(row) if row is not None else None)


class RowCache(_Kept):
    """The rows an op reads with ``row_sql`` (declared with ``reads_row``), for a whole
    pipelined batch read in one statement at its start, instead of one round trip per
    op. A row is served only as the transaction would read it at that point: a
    statement of the batch that updates it with plain ``column = ?`` assignments is
    applied to the kept row (when each value has the type the column came back with, so
    the database would return it unchanged), any other change to the row drops it, any
    change the statement's text does not tie to ids drops them all, and so does a
    rollback to a savepoint once a kept row was changed. What is dropped is read from
    the database again; ids are kept with None when they have no row."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.sql = row_sql(table)
        self.rows: dict[Any, dict[str, Any] | None] = {}
        self.changed = False  # a kept row was changed since the batch began
        self.served = 0  # reads answered from here

    @classmethod
    def prefetch(
        cls, reader: psycopg.Cursor[dict[str, Any]], ops: Sequence[tuple[Any, Sequence[Any]]]
    ) -> RowCache | None:
        """Read the rows of ``PREFETCHED`` that ``ops`` (``(op, args)``) declare, in one
        statement on ``reader``; None when none declares one."""
        ids = []
        for op, args in ops:
            read = read_row(op, args)
            if read is not None and read[0] == PREFETCHED and isinstance(read[1], str):
                if _sendable(read[1]):
                    ids.append(read[1])
        if not ids:
            return None
        cache = cls(PREFETCHED)
        unique = sorted(set(ids))
        reader.execute(f"SELECT * FROM {PREFETCHED} WHERE id = ANY(%s)", (unique,))  # noqa: S608
        found = {row["id"]: row for row in reader.fetchall()}
        cache.rows = {i: found.get(i) for i in unique}
        return cache

    def get(self, sql: str, params: Sequence[Any]) -> tuple[bool, dict[str, Any] | None]:
        """``(True, row or None)`` when ``sql`` is served from here, else ``(False, None)``."""
        if sql != self.sql or len(params) != 1 or params[0] not in self.rows:
            return False, None
        return self._serve(params[0])

    def wrote(self, sql: str, params: Sequence[Any]) -> None:
        """``sql`` is about to run with ``params``: keep the rows current."""
        if not self._changes_rows(sql):
            return
        writes = _row_writes(sql, self.table)
        if writes is None:
            return
        count, columns = writes
        if count < 0 or count > len(params):
            self.rows.clear()
            return
        for key in params[len(params) - count :]:
            if not isinstance(key, str):
                self.rows.clear()  # not an id as the rows are kept: nothing is known
                return
            if key not in self.rows:
                continue
            row = self.rows[key]
            self.changed = True
            if row is None or columns is None or count != 1:
                del self.rows[key]
                continue
            values = params[: len(columns)]
            if all(
                value is None or (row.get(column) is not None and type(row[column]) is type(value))
                for column, value in zip(columns, values, strict=True)
            ) and all(column in row for column in columns):
                row.update(zip(columns, values, strict=True))
            else:
                del self.rows[key]


#: Python types psycopg gives for the column types of the tables (the others are not
#: guessed: a cached row whose column gets another value is dropped).
_PY_TYPES: dict[str, type] = {
    "integer": int,
    "bigint": int,
    "smallint": int,
    "text": str,
    "double precision": float,
    "real": float,
    "boolean": bool,
}
#: The columns of ``job_targets`` that ``JOB_TARGET_SQL`` reads (``rollout`` is the job's).
_TARGET_COLUMNS = ("status", "exit_code", "reason", "output_bytes", "held")
_TARGET_TABLES = re.compile(r"\b(?:job_targets|jobs)\b", re.IGNORECASE)
_TARGET_INSERT = re.compile(r"\s*INSERT\s+INTO\s+(?:job_targets|jobs)\b", re.IGNORECASE)
#: ``UPDATE job_targets SET ... WHERE job_id = ? AND machine_id = ?``: one target.
_TARGET_UPDATE = re.compile(
    r"\s*UPDATE\s+job_targets\s+SET\s+([^()]*?)\s+"
    r"WHERE\s+job_id\s*=\s*\?\s+AND\s+machine_id\s*=\s*\?\s*",
    re.IGNORECASE | re.DOTALL,
)
_TARGETS_AHEAD = (
    "SELECT t.job_id AS key_job, t.machine_id AS key_machine, t.status, t.exit_code, "
    "t.reason, t.output_bytes, t.held, j.rollout FROM job_targets t "
    "JOIN jobs j ON j.id = t.job_id "
    "WHERE (t.job_id, t.machine_id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
)


class TargetCache(_Kept):
    """``RowCache`` for the job targets ops read with ``JOB_TARGET_SQL`` (declared with
    ``reads_job_target``), keyed by ``(job_id, machine_id)``: read for a whole pipelined
    batch in one statement at its start, each served as the transaction would read it
    at that point. An update of one target by its key with plain ``column = ?``
    assignments (``job_steps``') is applied to the kept row when each value it reads
    back has the column's type (columns the statement does not read are ignored); an
    ``INSERT`` into ``job_targets`` or ``jobs`` (rows are added, none changed) drops the
    targets kept as absent; any other statement on either table drops them all, and so
    does a rollback to a savepoint once a kept target was changed."""

    sql = JOB_TARGET_SQL

    def __init__(self, types: dict[str, dict[str, str]] | None = None) -> None:
        self.types = (types or {}).get("job_targets", {})
        self.rows: dict[tuple[str, str], dict[str, Any] | None] = {}
        self.changed = False
        self.served = 0

    @staticmethod
    def keys(ops: Sequence[tuple[Any, Sequence[Any]]]) -> list[tuple[str, str]]:
        """The targets ``ops`` (``(op, args)``) declare, each once, sorted."""
        found = set()
        for op, args in ops:
            key = read_job_target(op, args)
            if key is not None and all(_sendable(part) for part in key):
                found.add(key)  # (text cannot hold NUL: such an id is nobody's)
        return sorted(found)

    def start(self, cur: psycopg.Cursor[dict[str, Any]], keys: list[tuple[str, str]]) -> None:
        """Send the read of ``keys`` on ``cur`` (``finish`` takes its rows)."""
        self.rows = dict.fromkeys(keys)
        cur.execute(_TARGETS_AHEAD, ([k[0] for k in keys], [k[1] for k in keys]))

    def finish(self, cur: psycopg.Cursor[dict[str, Any]]) -> None:
        for row in cur.fetchall():
            key = (row.pop("key_job"), row.pop("key_machine"))
            if key in self.rows:
                self.rows[key] = row

    def get(self, sql: str, params: Sequence[Any]) -> tuple[bool, dict[str, Any] | None]:
        """``(True, row or None)`` when ``sql`` is served from here, else ``(False, None)``."""
        if sql != self.sql or len(params) != 2 or not all(isinstance(p, str) for p in params):
            return False, None
        key = (params[0], params[1])
        if key not in self.rows:
            return False, None
        return self._serve(key)

    def wrote(self, sql: str, params: Sequence[Any]) -> None:
        """``sql`` is about to run with ``params``: keep the rows current."""
        if not self._changes_rows(sql):
            return
        text = sql.lstrip()
        if text[:6].upper() == "SELECT" or not _TARGET_TABLES.search(text):
            return  # a read, or a statement on other tables (the schema has no cascades)
        if _TARGET_INSERT.match(text) and "ON CONFLICT" not in text.upper():
            for key in [k for k, row in self.rows.items() if row is None]:
                del self.rows[key]  # may be there now
            return
        self.changed = True
        match = _TARGET_UPDATE.fullmatch(text)
        columns = None
        if match is not None and not _CLAUSE.search(match.group(1)):
            parts = [_ASSIGNMENT.fullmatch(part) for part in match.group(1).split(",")]
            if all(parts) and sql.count("?") == len(parts) + 2 == len(params):
                columns = [p.group(1).lower() for p in parts if p is not None]
        key = tuple(params[-2:])
        if columns is None or not all(isinstance(part, str) for part in key):
            self.rows.clear()  # which targets it changes is not known here
            return
        if key not in self.rows:
            return  # another target
        row = self.rows[key]
        if row is None:
            return  # no such target: the update changes nothing
        for column, value in zip(columns, params, strict=False):
            if column not in _TARGET_COLUMNS:
                continue  # not read back
            if value is not None and type(value) is not self._type(column, row):
                del self.rows[key]
                return
        row.update((c, v) for c, v in zip(columns, params, strict=False) if c in _TARGET_COLUMNS)

    def _type(self, column: str, row: dict[str, Any]) -> type | None:
        """The Python type the database gives ``column`` (that of the kept value when
        the column's type is not known here)."""
        known = _PY_TYPES.get(self.types.get(column, ""))
        if known is not None:
            return known
        return type(row[column]) if row.get(column) is not None else None


#: The statement that adds a message to an outbox (ops/streams.py ``put``,
#: ``enqueue_many``).
_OUTBOX_PUT = "INSERT INTO outbox (machine_id, seq, type, job_id, envelope) VALUES (?, ?, ?, ?, ?)"
_OUTBOX = re.compile(r"\boutbox\b", re.IGNORECASE)
_OUTBOX_AHEAD = (
    "SELECT o.machine_id AS key_machine, o.seq, o.type, o.job_id FROM outbox o "
    "JOIN unnest(%s::text[], %s::bigint[]) AS k(m, s) ON o.machine_id = k.m AND o.seq <= k.s "
    "ORDER BY o.machine_id, o.seq"
)


class OutboxCache(_Kept):
    """What ``OUTBOX_DROP_SQL`` (declared with ``reads_outbox_drop``) would return, for
    a whole pipelined batch: each machine's outbox rows up to the highest seq the
    batch's ops declare, read in one statement at its start. A drop through a seq no
    higher is answered from here as the ``DELETE`` would answer it at that point, and
    the ``DELETE`` itself goes out without being waited for (``PgTx.all``). Kept
    current: a drop (answered or not) removes the machine's rows it covers, an insert
    of one message (``_OUTBOX_PUT``) adds its row; any other statement on ``outbox``
    drops every machine, and so does a rollback to a savepoint once a kept row was
    changed. What is dropped runs and is waited for as before."""

    sql = OUTBOX_DROP_SQL

    def __init__(self) -> None:
        self.rows: dict[str, list[dict[str, Any]]] = {}  # by machine, in seq order
        self.through: dict[str, int] = {}  # each machine's rows are kept up to this seq
        self.changed = False
        self.served = 0

    @staticmethod
    def keys(ops: Sequence[tuple[Any, Sequence[Any]]]) -> dict[str, int]:
        """The highest seq ``ops`` (``(op, args)``) declare they drop through, by machine."""
        through: dict[str, int] = {}
        for op, args in ops:
            key = read_outbox_drop(op, args)
            if key is None or not _sendable(key[0]) or not 0 <= key[1] < 2**62:
                continue
            machine_id, seq = key
            through[machine_id] = max(seq, through.get(machine_id, seq))
        return through

    def start(self, cur: psycopg.Cursor[dict[str, Any]], through: dict[str, int]) -> None:
        """Send the read of ``through`` on ``cur`` (``finish`` takes its rows)."""
        machines = sorted(through)
        self.through = {m: through[m] for m in machines}
        self.rows = {m: [] for m in machines}
        cur.execute(_OUTBOX_AHEAD, (machines, [through[m] for m in machines]))

    def finish(self, cur: psycopg.Cursor[dict[str, Any]]) -> None:
        for row in cur.fetchall():
            machine_id = row.pop("key_machine")
            if machine_id in self.rows:
                self.rows[machine_id].append(row)

    def get(self, sql: str, params: Sequence[Any]) -> tuple[bool, dict[str, Any] | None]:
        return False, None  # no single-row read of its own

    def drop(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]] | None:
        """The rows ``sql`` (``OUTBOX_DROP_SQL``) would return with ``params`` now, in
        seq order; None when not known here. ``wrote`` removes them when it is sent."""
        if sql != self.sql or len(params) != 2:
            return None
        machine_id, seq = params
        if not isinstance(machine_id, str) or type(seq) is not int:
            return None
        if machine_id not in self.rows or seq > self.through[machine_id]:
            return None
        self.served += 1
        return [dict(r) for r in self.rows[machine_id] if r["seq"] <= seq]

    def wrote(self, sql: str, params: Sequence[Any]) -> None:
        """``sql`` is about to run with ``params``: keep the rows current."""
        if not self._changes_rows(sql):
            return
        text = sql.lstrip()
        if text[:6].upper() == "SELECT" or not _OUTBOX.search(text):
            return  # a read, or a statement on other tables (the schema has no cascades)
        self.changed = True
        if sql == self.sql and len(params) == 2:
            machine_id, seq = params
            if isinstance(machine_id, str) and type(seq) is int:
                if machine_id in self.rows:
                    self.rows[machine_id] = [r for r in self.rows[machine_id] if r["seq"] > seq]
                return
        elif sql == _OUTBOX_PUT and len(params) == 5:
            machine_id, seq, kind, job_id = params[:4]
            if (
                isinstance(machine_id, str)
                and type(seq) is int
                and isinstance(kind, str)
                and (job_id is None or isinstance(job_id, str))
            ):
                kept = self.rows.get(machine_id)
                if kept is None or seq > self.through[machine_id]:
                    return  # not kept here: no drop is answered beyond ``through``
                if any(r["seq"] == seq for r in kept):
                    del self.rows[machine_id]  # the insert will fail: let the database say
                    return
                kept.append({"seq": seq, "type": kind, "job_id": job_id})
                kept.sort(key=lambda r: int(r["seq"]))
                return
        self.rows.clear()  # which rows it changes is not known here


#: What a pipelined batch reads ahead: the caches ``PgTx`` answers reads from.
ReadAhead = RowCache | TargetCache | OutboxCache


def read_ahead(
    conn: psycopg.Connection[dict[str, Any]],
    ops: Sequence[tuple[Any, Sequence[Any]]],
    types: dict[str, dict[str, str]] | None = None,
) -> list[ReadAhead]:
    """The rows ``ops`` (``(op, args)``) declare they read (``reads_row`` on
    ``PREFETCHED``, ``reads_job_target``), read in one round trip: each kind in one
    statement, sent together on ``conn`` (in pipeline mode) before waiting for either."""
    caches: list[ReadAhead] = []
    pending: list[tuple[TargetCache | OutboxCache, psycopg.Cursor[dict[str, Any]]]] = []
    keys = TargetCache.keys(ops)
    if keys:
        targets = TargetCache(types)
        cur = conn.cursor()
        targets.start(cur, keys)
        pending.append((targets, cur))
    through = OutboxCache.keys(ops)
    if through:
        outbox = OutboxCache()
        cur = conn.cursor()
        outbox.start(cur, through)
        pending.append((outbox, cur))
    rows = RowCache.prefetch(conn.cursor(), ops)  # waits: the others' rows are in too
    if rows is not None:
        caches.append(rows)
    for cache, cur in pending:
        cache.finish(cur)
        caches.append(cache)
    return caches


def group_key(group_id: str) -> int:
    """A stable signed 32-bit key (Python's hash() differs between processes)."""
    return int.from_bytes(
        hashlib.blake2b(group_id.encode(), digest_size=4).digest(), "big", signed=True
    )


def _sendable(text: str) -> bool:
    """Whether PostgreSQL text can hold ``text``: no NUL character, and valid Unicode (a
    lone surrogate, which JSON can carry, has no UTF-8 form)."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _no_nul(params: Sequence[Any]) -> None:
    """PostgreSQL text cannot hold a NUL character or a lone surrogate (psycopg refuses
    to send them, the latter with an error that is no database error): a value with one,
    which can only come from input, is refused as such, as a 400, not a 500. (SQLite
    stores and compares them: a name with one there is merely not found.)"""
    for value in params:
        if isinstance(value, str) and not _sendable(value):
            if "\x00" in value:
                raise InvalidInput(
                    "text with a NUL character (\\x00) cannot be stored or looked up"
                )
            raise InvalidInput("text that is not valid Unicode cannot be stored or looked up")


class PgTx(Tx):
    database_errors = (psycopg.Error, MissingColumn)

    def __init__(
        self,
        cur: psycopg.Cursor[dict[str, Any]],
        held: set[str] | None = None,
        pipeline: psycopg.Pipeline | None = None,
        reader: psycopg.Cursor[dict[str, Any]] | None = None,
        rows: Sequence[ReadAhead] = (),
        out: Outgoing | None = None,
    ) -> None:
        self.cur = cur
        self.held = held if held is not None else set()  # group locks the batch holds
        # Pipeline mode (see "Pipelined batches"): statements whose outcome the op does
        # not read go out on ``cur`` without waiting; those it reads run on ``reader``,
        # which never has another statement's result pending.
        self.pipeline = pipeline
        self.reader = reader if reader is not None else cur
        self.rows = rows  # pipelined: rows read for the whole batch (``read_ahead``)
        # Pipelined: what goes out on ``cur`` is kept there until something waits.
        self.out = out
        self.events: list[tuple[Any, ...]] = []  # pipelined: rows of add_event, kept
        self._marks: list[tuple[str, int]] = []  # open savepoints: (name, len(events))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        _no_nul(params)
        if self.pipeline is not None:
            count = known_count(sql)
            if count is not None:
                self.send(sql, params)
                return count
            self._lock_events_now(sql)
            self._wrote(sql, params)
            self._flush()
            self.reader.execute(to_pyformat(sql), tuple(params))
            self.pipeline.sync()  # the row count is known once the result is in
            return self.reader.rowcount
        self.cur.execute(to_pyformat(sql), tuple(params))
        return self.cur.rowcount

    def send(self, sql: str, params: Sequence[Any] = ()) -> None:
        _no_nul(params)
        if self.pipeline is None:
            self.execute(sql, params)
            return
        if sql == _EVENT_INSERT:  # kept for the end of the batch ("Event order")
            self.events.append(tuple(params))
            return
        self._wrote(sql, params)
        savepoint = _savepoint(sql)
        if savepoint is not None:  # the op's own savepoints also cover its kept events
            verb, name = savepoint
            while self._marks and verb != "SAVEPOINT" and self._marks[-1][0] != name:
                self._marks.pop()  # nested savepoints end with the one named
            if verb == "SAVEPOINT":
                self._marks.append((name, len(self.events)))
            elif self._marks:
                if verb == "ROLLBACK":
                    del self.events[self._marks[-1][1] :]
                else:
                    self._marks.pop()
        else:
            self._lock_events_now(sql)
        if self.out is not None:
            self.out.add(sql, params)
        else:
            self.cur.execute(to_pyformat(sql), tuple(params))

    def one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        _no_nul(params)
        for cache in self.rows:
            served, row = cache.get(sql, params)
            if served:
                return star_row(sql, row)
        self._lock_events_now(sql)
        self._wrote(sql, params)
        self._flush()
        self.reader.execute(to_pyformat(sql), tuple(params))
        return star_row(sql, self.reader.fetchone())

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        _no_nul(params)
        for cache in self.rows:
            if isinstance(cache, OutboxCache):
                rows = cache.drop(sql, params)
                if rows is not None:  # known: the DELETE need not be waited for
                    self.send(sql, params)
                    return rows
        self._lock_events_now(sql)
        self._wrote(sql, params)
        self._flush()
        self.reader.execute(to_pyformat(sql), tuple(params))
        return star_rows(sql, self.reader.fetchall())

    def _wrote(self, sql: str, params: Sequence[Any]) -> None:
        for cache in self.rows:
            cache.wrote(sql, params)

    def _flush(self) -> None:
        """A statement is about to be waited for: what is kept goes out first."""
        if self.out is not None:
            self.out.flush()

    def notify(self, group_id: str) -> None:
        # Called before the group's first event is inserted: see "Event order" above.
        # Pipelined, the lock is taken at the end of the batch, before the kept events.
        if self.pipeline is None and group_id not in self.notified and group_id not in self.held:
            self._lock(group_id)
        super().notify(group_id)

    def _lock(self, group_id: str) -> None:
        self._flush()
        self.cur.execute(
            "SELECT pg_advisory_xact_lock(%s::integer, %s::integer)",
            (EVENT_LOCK_CLASS, group_key(group_id)),
        )
        self.held.add(group_id)

    def _lock_events_now(self, sql: str) -> None:
        """A statement on ``events`` that is not ``add_event``'s insert (none today) runs
        as it comes: the groups' locks first, as when one statement at a time."""
        if "events" in sql and _touches_events(sql):
            for group_id in sorted(self.notified - self.held):
                self._lock(group_id)


def insert_events(cur: psycopg.Cursor[dict[str, Any]], events: list[tuple[Any, ...]]) -> None:
    """The batch's events, in the order the ops added them, in one statement; first the
    locks of their groups, in one order for every replica (so two cannot deadlock)."""
    if not events:
        return
    keys = sorted({group_key(str(e[0])) for e in events})
    cur.execute(
        "SELECT pg_advisory_xact_lock(%s::integer, k) FROM unnest(%s::integer[]) AS k",
        (EVENT_LOCK_CLASS, keys),
    )
    cur.execute(_EVENTS_INSERT_MANY, [list(column) for column in zip(*events, strict=True)])
