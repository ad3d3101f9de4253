"""The ops' ``?`` placeholders become psycopg's ``%s``; nothing else changes meaning."""

from __future__ import annotations

import pytest

from cloudremotecontrol.server.store.postgres import to_pyformat


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
