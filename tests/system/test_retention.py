"""What the server and the agent forget, and when (server/ops/retention.py,
AgentState.prune_messages); and that their databases are readable by their owner only."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from pathlib import Path

from cloudremotecontrol.agent.state import AgentState
from cloudremotecontrol.master.client import Client
from cloudremotecontrol.master.localrun import AgentProcess, ServerProcess
from cloudremotecontrol.protocol.messages import Envelope

DAY = 86400.0


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_old_events_jobs_of_deleted_groups_and_unused_files_are_pruned(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "srv").start()
    db_path = server.data_dir / "crc.db"
    assert _mode(db_path) == 0o600
    token = server.add_user("alice")
    c = Client(server.url, token, server.fingerprint)
    key = c.create_group("lab", ["a", "offline"])["machines"][0]["key"]
    agent = AgentProcess(tmp_path / "a", server.url, key, server.fingerprint).start()
    try:
        deadline = time.monotonic() + 60
        while c.group("lab")["machines"][0]["state"] != "ready":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        job = c.start_job("lab", "a", argv=["echo", "old output"])["job_id"]
        while c.job(job)["targets"][0]["status"] != "succeeded":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        old_file, kept_file = tmp_path / "old.bin", tmp_path / "kept.bin"
        old_file.write_bytes(b"old content\n")
        kept_file.write_bytes(b"content a push still moves\n")
        old_sha = c.upload(str(old_file))["sha256"]
        kept_sha = c.upload(str(kept_file))["sha256"]
        # A push to a machine that is not there stays open: its file must stay.
        c.push("lab", "offline", str(kept_file), "/tmp/kept.bin")
        # Two recorded shell sessions: the first will be old.
        for word in ("old", "new"):
            with c.shell("lab", "a", argv=["echo", f"{word} session"]) as s:
                assert s.wait(60) == 0
        recorded = [x["stream"] for x in c.sessions("lab") if x["recorded"]]
        assert len(recorded) == 2, recorded
        gone = c.create_group("gone", ["x"])
        c.start_job("gone", "x", argv=["true"])
        c.delete_group("gone")
        assert gone
    finally:
        agent.stop()
        server.stop()
    # Forty days pass for everything so far (ten for the files).
    with sqlite3.connect(db_path) as db:
        events_before = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        db.execute("UPDATE events SET created = created - ?", (40 * DAY,))
        db.execute("UPDATE groups SET deleted = deleted - ? WHERE deleted IS NOT NULL", (40 * DAY,))
        db.execute("UPDATE blob_owners SET created = created - ?", (10 * DAY,))
        db.execute(
            "UPDATE recordings SET updated = updated - ? WHERE stream = ?", (31 * DAY, recorded[0])
        )
        # A recent recording of the deleted group: it goes with the group's jobs.
        db.execute(
            "INSERT INTO recordings (stream, user_id, group_id, size, chunks, created, updated)"
            " SELECT 'st_deletedgroup0000000000', user_id, id, 4, 1, ?, ? FROM groups"
            " WHERE name = 'gone'",
            (time.time(), time.time()),
        )
        db.execute(
            "INSERT INTO recording_chunks (stream, n, data) VALUES (?, 0, ?)",
            ("st_deletedgroup0000000000", b"cast"),
        )
        audit_before = db.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
    blobs = server.data_dir / "blobs"
    for sha in (old_sha, kept_sha):
        path = blobs / sha[:2] / sha
        os.utime(path, (time.time() - 10 * DAY, time.time() - 10 * DAY))
    assert events_before > 5
    restarted = time.time()
    server.start()
    try:
        c.create_group("fresh", ["f"])  # a new event, which stays
        deadline = time.monotonic() + 30
        while True:
            with sqlite3.connect(db_path) as db:
                left = db.execute("SELECT type, created FROM events").fetchall()
                jobs = db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
                owners = {r[0] for r in db.execute("SELECT sha FROM blob_owners")}
                audit = db.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
                kept = {r[0] for r in db.execute("SELECT stream FROM recordings")}
                kept_chunks = {r[0] for r in db.execute("SELECT stream FROM recording_chunks")}
            if not (blobs / old_sha[:2] / old_sha).exists() and kept == {recorded[1]}:
                break
            assert time.monotonic() < deadline, (left, jobs, owners)
            time.sleep(0.2)
        # Only what happened since the restart is left ("fresh" was created then).
        assert any(t == "group.created" for t, _ in left) and len(left) < events_before, left
        assert all(created >= restarted - 1 for _, created in left), left
        assert jobs == 2, jobs  # lab's job and push stay; the deleted group's job went
        assert owners == {kept_sha}, owners
        assert (blobs / kept_sha[:2] / kept_sha).exists()
        assert audit >= audit_before  # the audit record is append-only, kept
        assert c.group("lab")["machines"][0]["state"] in ("offline", "ready")
        # The old recording went (its row and its chunks); the recent one stays.
        assert kept_chunks == {recorded[1]}, kept_chunks
        assert [x["recorded"] for x in c.sessions("lab") if x["kind"] == "shell"] == [False, True]
        assert "new session" in c.recording(recorded[1])
    finally:
        c.close()
        server.stop()
    assert "Traceback" not in server.log_path.read_text()


def test_the_agent_forgets_stored_messages_after_their_retention(tmp_path: Path) -> None:
    state = AgentState(tmp_path / "agent")
    assert _mode(tmp_path / "agent" / "agent.db") == 0o600

    def note(i: int) -> Envelope:
        return Envelope(f"id{i}", "lab", "peer", "a", "user.note", {"i": i})

    for i in range(3):
        state.mark_processed(i + 1, message=note(i))
    t0 = time.time()
    assert state.prune_messages(7, now=t0) == 0  # stamped now, nothing old yet
    assert state.take_message("user.note", None)["body"] == {"i": 0}
    state.mark_processed(4, message=note(3))
    assert state.prune_messages(7, now=t0 + 6 * 86400) == 0
    # Eight days after the first three arrived: they go (consumed or not); the fourth
    # was first seen six days in, so it stays.
    assert state.prune_messages(7, now=t0 + 8 * 86400) == 3
    assert state.take_message("user.note", None)["body"] == {"i": 3}
    assert state.prune_messages(0, now=t0 + 1000 * 86400) == 0  # 0 keeps for ever
    state.close()


def test_retention_prunes_on_postgresql_too(tmp_path: Path, pg_url: str) -> None:
    import psycopg

    server = ServerProcess(tmp_path / "srv", database=pg_url).start()
    c = Client(server.url, server.add_user("alice"), server.fingerprint)
    try:
        c.create_group("lab", ["a"])
        f = tmp_path / "f.bin"
        f.write_bytes(b"content\n")
        sha = c.upload(str(f))["sha256"]
    finally:
        server.stop()
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute("UPDATE events SET created = created - %s", (40 * DAY,))
        db.execute("UPDATE blob_owners SET created = created - %s", (10 * DAY,))
        for stream, age in (
            ("st_oldrecording0000000000", 31 * DAY),
            ("st_newrecording0000000000", 0),
        ):
            at = time.time() - age
            db.execute(
                "INSERT INTO recordings (stream, user_id, group_id, size, chunks, created,"
                " updated) SELECT %s, user_id, id, 4, 1, %s, %s FROM groups",
                (stream, at, at),
            )
            db.execute(
                "INSERT INTO recording_chunks (stream, n, data) VALUES (%s, 0, %s)",
                (stream, b"\x00\xffca"),
            )
    server.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            with psycopg.connect(pg_url, autocommit=True) as db:
                events = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
                owners = db.execute("SELECT COUNT(*) FROM blob_owners").fetchone()[0]
                chunks = db.execute(
                    "SELECT COUNT(*) FROM blob_chunks WHERE sha = %s", (sha,)
                ).fetchone()[0]
                recordings = db.execute(
                    "SELECT r.stream, c.data FROM recordings r"
                    " JOIN recording_chunks c ON c.stream = r.stream"
                ).fetchall()
            if events == 0 and owners == 0 and chunks == 0 and len(recordings) == 1:
                break
            assert time.monotonic() < deadline, (events, owners, chunks, recordings)
            time.sleep(0.2)
        assert [m["name"] for m in c.group("lab")["machines"]] == ["a"]  # the group stays
        assert recordings == [("st_newrecording0000000000", b"\x00\xffca")]
    finally:
        c.close()
        server.stop()
    log = server.log_path.read_text()
    assert "Traceback" not in log and "retention" not in log, log[-2000:]
