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

from .base import Tx

__all__ = ["EVENT_LOCK_CLASS", "PgTx", "group_key", "insert_events", "known_count", "to_pyformat"]

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
    "SELECT g, c, t, m, j, d FROM unnest(%s::text[], %s::float8[], %s::text[], %s::text[], "
    "%s::text[], %s::text[]) WITH ORDINALITY AS e(g, c, t, m, j, d, n) ORDER BY n"
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


def group_key(group_id: str) -> int:
    """A stable signed 32-bit key (Python's hash() differs between processes)."""
    return int.from_bytes(
        hashlib.blake2b(group_id.encode(), digest_size=4).digest(), "big", signed=True
    )


class PgTx(Tx):
    database_errors = (psycopg.Error,)

    def __init__(
        self,
        cur: psycopg.Cursor[dict[str, Any]],
        held: set[str] | None = None,
        pipeline: psycopg.Pipeline | None = None,
        reader: psycopg.Cursor[dict[str, Any]] | None = None,
    ) -> None:
        self.cur = cur
        self.held = held if held is not None else set()  # group locks the batch holds
        # Pipeline mode (see "Pipelined batches"): statements whose outcome the op does
        # not read go out on ``cur`` without waiting; those it reads run on ``reader``,
        # which never has another statement's result pending.
        self.pipeline = pipeline
        self.reader = reader if reader is not None else cur
        self.events: list[tuple[Any, ...]] = []  # pipelined: rows of add_event, kept
        self._marks: list[tuple[str, int]] = []  # open savepoints: (name, len(events))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        if self.pipeline is not None:
            count = known_count(sql)
            if count is not None:
                self.send(sql, params)
                return count
            self._lock_events_now(sql)
            self.reader.execute(to_pyformat(sql), tuple(params))
            self.pipeline.sync()  # the row count is known once the result is in
            return self.reader.rowcount
        self.cur.execute(to_pyformat(sql), tuple(params))
        return self.cur.rowcount

    def send(self, sql: str, params: Sequence[Any] = ()) -> None:
        if self.pipeline is None:
            self.execute(sql, params)
            return
        if sql == _EVENT_INSERT:  # kept for the end of the batch ("Event order")
            self.events.append(tuple(params))
            return
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
        self.cur.execute(to_pyformat(sql), tuple(params))

    def one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        self._lock_events_now(sql)
        self.reader.execute(to_pyformat(sql), tuple(params))
        return self.reader.fetchone()

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        self._lock_events_now(sql)
        self.reader.execute(to_pyformat(sql), tuple(params))
        return self.reader.fetchall()

    def notify(self, group_id: str) -> None:
        # Called before the group's first event is inserted: see "Event order" above.
        # Pipelined, the lock is taken at the end of the batch, before the kept events.
        if self.pipeline is None and group_id not in self.notified and group_id not in self.held:
            self._lock(group_id)
        super().notify(group_id)

    def _lock(self, group_id: str) -> None:
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
