"""The ops' ``?`` placeholders become psycopg's ``%s``; nothing else changes meaning."""

from __future__ import annotations

import pytest

from cloudremotecontrol.server.store.postgres import known_count, to_pyformat


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT * FROM t WHERE a = ? AND b = ?", "SELECT * FROM t WHERE a = %s AND b = %s"),
        (
            "UPDATE t SET type = 'job.cancel' WHERE x = ?",
            "UPDATE t SET type = 'job.cancel' WHERE x = %s",
        ),
        (
            "SELECT '?' AS q, \"we?ird\" FROM t WHERE a = ?",
            "SELECT '?' AS q, \"we?ird\" FROM t WHERE a = %s",
        ),
        ("SELECT 'it''s ?' WHERE a = ?", "SELECT 'it''s ?' WHERE a = %s"),
        ("SELECT 5 % 2, '100%' WHERE a LIKE ?", "SELECT 5 %% 2, '100%%' WHERE a LIKE %s"),
        ("CREATE TABLE t (s TEXT DEFAULT '{}')", "CREATE TABLE t (s TEXT DEFAULT '{}')"),
    ],
)
def test_placeholders_are_rewritten_outside_quotes_only(sql: str, expected: str) -> None:
    assert to_pyformat(sql) == expected


@pytest.mark.parametrize(
    ("sql", "count"),
    [
        ("INSERT INTO events (group_id, data) VALUES (?, ?)", 1),
        ("SAVEPOINT apply_message", 0),
        ("RELEASE SAVEPOINT apply_message", 0),
        ("ROLLBACK TO SAVEPOINT apply_message", 0),
        # Counts that only the database knows: the op must wait for them.
        ("INSERT INTO t (a) VALUES (?) ON CONFLICT DO NOTHING", None),
        ("INSERT INTO t (a) VALUES (?), (?)", None),
        ("INSERT INTO t (a) SELECT a FROM u WHERE b = ?", None),
        ("INSERT INTO t (a) VALUES (?) RETURNING id", None),
        ("INSERT INTO t (a) VALUES (lower(?))", None),
        ("UPDATE t SET a = ? WHERE b = ?", None),
        ("DELETE FROM t WHERE a = ?", None),
        ("SELECT 1", None),
    ],
)
def test_only_statements_whose_row_count_is_certain_are_sent_without_waiting(
    sql: str, count: int | None
) -> None:
    assert known_count(sql) == count
