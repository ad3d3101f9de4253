"""The ops' ``?`` placeholders become psycopg's ``%s``; nothing else changes meaning."""

from __future__ import annotations

import pytest

from cloudremotecontrol.server.store.base import JOB_TARGET_SQL, OUTBOX_DROP_SQL
from cloudremotecontrol.server.store.pg_tx import OutboxCache, RowCache, TargetCache, _row_writes
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


@pytest.mark.parametrize(
    ("sql", "writes"),
    [
        ("SELECT * FROM machines WHERE id = ?", None),
        ("INSERT INTO events (group_id) VALUES (?)", None),
        ("UPDATE groups SET settings = ? WHERE id = ?", None),
        ("DELETE FROM outbox WHERE machine_id = ? AND seq <= ?", None),
        (
            "UPDATE machines SET in_done = ?, last_seen = ? WHERE id = ?",
            (1, ("in_done", "last_seen")),
        ),
        ("UPDATE machines SET out_next = out_next + 1 WHERE id = ? RETURNING out_next", (1, None)),
        ("UPDATE machines SET out_next = out_next + 1 WHERE id IN (?,?,?) RETURNING id", (3, None)),
        # Not tied to ids: any row may change.
        ("UPDATE machines SET key_id = ? WHERE id = ? AND state = ?", (-1, None)),
        ("UPDATE machines SET a = COALESCE(b, ?) WHERE id = ?", (-1, None)),
        ("UPDATE machines SET a = ? FROM groups g WHERE id = ?", (-1, None)),
        ("UPDATE machines SET state = 'x' WHERE group_id = ?", (-1, None)),
        ("INSERT INTO machines (id, name) VALUES (?, ?)", (-1, None)),
        ("DELETE FROM machines WHERE id = ?", (-1, None)),
        ("UPDATE groups SET x = ? FROM machines m WHERE m.id = ?", (-1, None)),
        ('UPDATE "machines" SET in_done = ? WHERE group_id = ?', (-1, None)),
        ("UPDATE public.machines SET in_done = ? WHERE group_id = ?", (-1, None)),
        ("DELETE FROM outbox WHERE machine_id IN (SELECT id FROM machines)", (-1, None)),
    ],
)
def test_rows_read_ahead_know_which_statements_change_which_rows(
    sql: str, writes: tuple[int, tuple[str, ...] | None] | None
) -> None:
    assert _row_writes(sql, "machines") == writes


def test_rows_read_ahead_follow_updates_and_drop_what_they_cannot_follow() -> None:
    rows = RowCache("machines")
    rows.rows = {
        "a": {"id": "a", "in_done": 1, "last_seen": 1.5, "peer_ip": None},
        "b": {"id": "b", "in_done": 7, "last_seen": 2.5, "peer_ip": None},
        "gone": None,
    }
    sql = "SELECT * FROM machines WHERE id = ?"
    assert rows.get(sql, ("gone",)) == (True, None)
    assert rows.get(sql, ("other",)) == (False, None)  # not read ahead: read as usual
    assert rows.get("SELECT in_done FROM machines WHERE id = ?", ("a",)) == (False, None)
    rows.wrote("UPDATE machines SET in_done = ?, last_seen = ? WHERE id = ?", (2, 3.0, "a"))
    served, row = rows.get(sql, ("a",))
    assert served and row == {"id": "a", "in_done": 2, "last_seen": 3.0, "peer_ip": None}
    assert row is not None
    row["in_done"] = 99  # a copy: the op's changes to its dict stay its own
    assert rows.get(sql, ("a",))[1] == {"id": "a", "in_done": 2, "last_seen": 3.0, "peer_ip": None}
    # A value of another type than the column gave (or into a NULL) is not guessed.
    rows.wrote("UPDATE machines SET peer_ip = ? WHERE id = ?", ("10.0.0.1", "a"))
    assert rows.get(sql, ("a",)) == (False, None)
    rows.wrote("UPDATE machines SET in_done = ? WHERE id = ?", (8.0, "b"))
    assert rows.get(sql, ("b",)) == (False, None)
    rows.rows["b"] = {"id": "b", "in_done": 7}
    rows.wrote("ROLLBACK TO SAVEPOINT op", ())  # after a change: what it undid is unknown
    assert rows.rows == {}


def test_rows_read_ahead_survive_a_rollback_when_nothing_kept_changed() -> None:
    rows = RowCache("machines")
    rows.rows = {"a": {"id": "a", "in_done": 1}}
    rows.wrote("UPDATE groups SET settings = ? WHERE id = ?", ("{}", "g"))
    rows.wrote("ROLLBACK TO SAVEPOINT apply_message", ())
    assert rows.get("SELECT * FROM machines WHERE id = ?", ("a",)) == (
        True,
        {"id": "a", "in_done": 1},
    )
    rows.wrote("UPDATE machines SET state = ? WHERE group_id = ?", ("x", "g"))
    assert rows.rows == {}


def test_targets_read_ahead_follow_their_updates_and_drop_what_they_cannot_follow() -> None:
    types = {"job_targets": {"status": "text", "exit_code": "bigint", "output_bytes": "bigint"}}
    targets = TargetCache(types)
    queued = {"status": "queued", "exit_code": None, "reason": None, "output_bytes": 0}
    targets.rows = {
        ("j", "a"): dict(queued, rollout=None),
        ("j", "b"): dict(queued),
        ("k", "a"): None,
    }
    sql = JOB_TARGET_SQL
    assert targets.get(sql, ("k", "a")) == (True, None)
    assert targets.get(sql, ("k", "b")) == (False, None)  # not read ahead: read as usual
    assert targets.get(sql, ("j", 1)) == (False, None)
    set_all = (
        "UPDATE job_targets SET status = ?, exit_code = ?, reason = ?, output_bytes = ?, "
        "updated = ? WHERE job_id = ? AND machine_id = ?"
    )
    targets.wrote(set_all, ("succeeded", 0, None, 3, 1.5, "j", "a"))
    assert targets.get(sql, ("j", "a")) == (
        True,
        {"status": "succeeded", "exit_code": 0, "reason": None, "output_bytes": 3, "rollout": None},
    )
    assert targets.get(sql, ("j", "b"))[1] == queued  # another target: unchanged
    # The column's type decides (an int into a NULL is followed; a float is not).
    targets.wrote(set_all, ("failed", 2.0, None, 3, 1.5, "j", "b"))
    assert targets.get(sql, ("j", "b")) == (False, None)
    # Only what the statement reads back matters; an update by something else than the
    # target's key drops every target, and so does any other statement on the tables.
    targets.wrote(
        "UPDATE job_targets SET blob = ? WHERE job_id = ? AND machine_id = ?", ("x", "j", "a")
    )
    assert targets.get(sql, ("j", "a"))[0]
    targets.rows[("j", "c")] = None
    targets.wrote("INSERT INTO job_targets (job_id, machine_id) VALUES (?, ?)", ("j", "c"))
    assert ("j", "c") not in targets.rows and ("j", "a") in targets.rows
    targets.wrote("UPDATE outbox SET job_id = ? WHERE machine_id = ?", ("j", "a"))
    assert ("j", "a") in targets.rows
    targets.wrote("UPDATE jobs SET rollout = ? WHERE id = ?", ("{}", "j"))
    assert targets.rows == {}


def test_targets_read_ahead_are_dropped_by_a_rollback_after_a_change_only() -> None:
    targets = TargetCache()
    row = {
        "status": "running",
        "exit_code": None,
        "reason": None,
        "output_bytes": 0,
        "rollout": None,
    }
    targets.rows = {("j", "a"): dict(row)}
    targets.wrote("UPDATE machines SET in_done = ? WHERE id = ?", (1, "a"))
    targets.wrote("ROLLBACK TO SAVEPOINT apply_message", ())
    assert targets.get(JOB_TARGET_SQL, ("j", "a")) == (True, row)
    targets.wrote(
        "UPDATE job_targets SET output_bytes = ? WHERE job_id = ? AND machine_id = ?", (4, "j", "a")
    )
    assert targets.get(JOB_TARGET_SQL, ("j", "a"))[1] == dict(row, output_bytes=4)
    targets.wrote("ROLLBACK TO SAVEPOINT op", ())
    assert targets.rows == {}


def test_outbox_rows_read_ahead_answer_drops_as_the_batch_left_them() -> None:
    box = OutboxCache()
    box.through = {"a": 3, "b": 1}
    box.rows = {
        "a": [{"seq": 1, "type": "job.run", "job_id": "j"}],
        "b": [{"seq": 1, "type": "job.cancel", "job_id": "k"}],
    }
    put = "INSERT INTO outbox (machine_id, seq, type, job_id, envelope) VALUES (?, ?, ?, ?, ?)"
    box.wrote(put, ("a", 2, "hosts.sync", None, "{}"))
    box.wrote(put, ("a", 4, "job.run", "x", "{}"))  # beyond what is kept: no drop reaches it
    assert box.drop(OUTBOX_DROP_SQL, ("a", 4)) is None  # read from the database
    assert box.drop(OUTBOX_DROP_SQL, ("a", 1.0)) is None
    assert box.drop(OUTBOX_DROP_SQL, ("c", 1)) is None
    assert box.drop(OUTBOX_DROP_SQL, ("a", 2)) == [
        {"seq": 1, "type": "job.run", "job_id": "j"},
        {"seq": 2, "type": "hosts.sync", "job_id": None},
    ]
    box.wrote(OUTBOX_DROP_SQL, ("a", 1))  # sent: what it dropped is gone
    assert box.drop(OUTBOX_DROP_SQL, ("a", 3)) == [{"seq": 2, "type": "hosts.sync", "job_id": None}]
    box.wrote("UPDATE machines SET out_next = ? WHERE id = ?", (5, "a"))
    assert "a" in box.rows
    box.wrote(
        "UPDATE outbox SET seq = ?, envelope = ? WHERE machine_id = ? AND seq = ?", (9, "", "b", 1)
    )
    assert box.rows == {}  # not followed: everything is read again
    box.rows = {"b": []}
    box.wrote("ROLLBACK TO SAVEPOINT op", ())  # after a change: what it undid is unknown
    assert box.rows == {}
