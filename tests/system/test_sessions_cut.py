"""A shell session cut by a killed server (``kill -9``: no end is ever written) is
listed by `crc sessions list` after the restart, marked cut, with its recording."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

from wire_helpers import assert_no_traceback_in_server_log


def _chunks_of(db: Path, stream: str) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        try:
            row = conn.execute(
                "SELECT COUNT(*) FROM recording_chunks WHERE stream = ?", (stream,)
            ).fetchone()
        except sqlite3.OperationalError:  # no such table yet
            return 0
    return int(row[0])


def test_a_session_cut_by_a_killed_server_is_listed_after_restart(env: Any, crc: Any) -> None:
    env.group_with_agents("lab", ["dev"])
    with env.client.shell("lab", "dev", argv=["true"]) as s:  # one that ended normally
        assert s.wait(60) == 0
    shell = env.client.shell("lab", "dev", argv=["sh", "-c", "echo cut-me; sleep 600"])
    cut = shell.id
    received = b""
    while b"cut-me" not in received:
        received += shell.recv(60)
    deadline = time.monotonic() + 60
    while _chunks_of(env.server.data_dir / "crc.db", cut) == 0:
        assert time.monotonic() < deadline, "the recording never reached the database"
        time.sleep(0.2)
    env.server.kill(signal.SIGKILL)
    shell.close()
    env.server.start()
    out = crc("sessions", "list", "lab", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["stream"]: r for r in json.loads(out.stdout)["sessions"]}
    assert cut in rows, rows
    row = rows[cut]
    assert row["cut"] is True and row["recorded"] is True, row
    assert row["kind"] == "shell" and row["machine"] == "dev" and row["by"] == "alice", row
    assert "exit_code" not in row and "server stopped" in row["error"], row
    assert [r.get("cut", False) for r in rows.values()] == [False, True], rows
    # The table says so too, and the recording plays.
    table = crc("sessions", "list", "lab")
    assert table.returncode == 0, table.stderr
    line = next(x for x in table.stdout.splitlines() if x.startswith(cut))
    assert " cut " in f" {line} ", line
    assert "cut-me" in env.client.recording(cut)
    # Listed once: a second restart does not close it again.
    env.server.stop()
    env.server.start()
    again = env.client.sessions("lab")
    assert [r["stream"] for r in again].count(cut) == 1, again
    assert_no_traceback_in_server_log(env.server)


def test_a_stream_its_master_never_dials_is_listed_as_ended_not_cut(env: Any, crc: Any) -> None:
    from cloudremotecontrol.master import calls

    env.group_with_agents("lab", ["dev"])
    body = {"machine": "dev", "kind": "shell", "argv": ["true"]}
    info = env.client._do(calls.open_stream("lab", body))  # asked for, never dialled
    stream = info["stream"]
    deadline = time.monotonic() + 90  # the master has 30 s to dial
    rows: dict[str, Any] = {}
    while stream not in rows:
        assert time.monotonic() < deadline, f"{stream} was never listed: {rows}"
        time.sleep(1)
        rows = {r["stream"]: r for r in env.client.sessions("lab")}
    row = rows[stream]
    assert "did not connect within 30 s" in row["error"], row
    assert not row.get("cut") and row["recorded"] is False and row["machine"] == "dev", row
    # Its end is written once: a restart finds nothing left open to close as cut.
    env.server.stop()
    env.server.start()
    again = [r for r in env.client.sessions("lab") if r["stream"] == stream]
    assert len(again) == 1 and not again[0].get("cut"), again
    assert_no_traceback_in_server_log(env.server)


def test_a_stream_opened_before_open_streams_were_listed_is_not_closed_as_cut(
    env: Any, crc: Any
) -> None:
    # What a server of schema 11 left of a stream never dialled: its opening in the
    # audit, no close, and no row among the open streams. Its audit cannot tell it from a
    # cut one, so the start-up sweep leaves it alone rather than invent an end for it.
    env.client.create_group("lab", ["dev"])
    env.server.stop()
    db = env.server.data_dir / "crc.db"
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        user_id, actor = conn.execute(
            "SELECT user_id, actor FROM audit WHERE group_name = 'lab' LIMIT 1"
        ).fetchone()
        detail = {"machine": "dev", "kind": "shell", "stream": "st_" + "0" * 32}
        conn.execute(
            "INSERT INTO audit (created, user_id, actor, action, group_name, detail) "
            "VALUES (?, ?, ?, 'stream.open', 'lab', ?)",
            (time.time() - 3600, user_id, actor, json.dumps(detail)),
        )
    env.server.start()
    assert env.client.sessions("lab") == []
    out = crc("sessions", "list", "lab", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["sessions"] == [], out
    assert_no_traceback_in_server_log(env.server)
