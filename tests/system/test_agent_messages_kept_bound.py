"""A machine's disk is not filled with `user.*` messages (docs/security.md): a real
agent started with `--keep-messages-mib 1` is sent far more than that; it takes every
message (the server's delivery goes on), keeps at most 1 MiB of them in agent.db,
forgetting the oldest, and a script on the machine still reads the newest."""

from __future__ import annotations

import json
import sqlite3
import time

MIB = 1 << 20
BODY = "y" * 190_000  # close to the largest body a message may carry (256 KiB)


def _stored(db) -> tuple[int, int]:
    """The messages agent.db keeps and their bytes (read beside the running agent)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(length(CAST(envelope AS BLOB))), 0) FROM messages"
        ).fetchone()
    finally:
        conn.close()
    return int(row[0]), int(row[1])


def test_an_agent_keeps_at_most_its_bound_of_messages(env) -> None:
    agents = env.group_with_agents("lab", ["a"], extra=["--keep-messages-mib", "1"])
    db = agents["a"].state_dir / "agent.db"
    for n in range(30):  # about 5.7 MB
        out = env.client.send_message("lab", "a", "user.blob", {"n": n, "pad": BODY})
        assert out["targets"] == ["a"], out
    env.client.send_message("lab", "a", "user.last", {"n": "last"})
    # Delivered in order: once the last is read, every blob was stored (or forgotten).
    r = env.agent_cli("a", "wait-message", "user.last", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"n": "last"}
    count, size = _stored(db)
    assert 0 < count <= 6 and size <= MIB, (count, size)
    # The oldest went: the first blob a script reads is one of the last five sent.
    r = env.agent_cli("a", "wait-message", "user.blob", "--timeout", "10")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n"] >= 25
    # The file itself stays near the bound (SQLite reuses the pages freed).
    assert db.stat().st_size < 4 * MIB, db.stat().st_size
    # The agent said once (not once a message) that it forgot some, naming the bound.
    deadline = time.monotonic() + 10
    while "forgot" not in agents["a"].log_path.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    log = agents["a"].log_path.read_text()
    assert log.count("forgot") == 1 and "at most 1 MiB" in log, log
    assert "yyyy" not in log and "Traceback" not in log
    assert env.client.group("lab")["machines"][0]["state"] == "ready"
