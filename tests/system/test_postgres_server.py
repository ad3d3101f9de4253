"""The real server on PostgreSQL (`crc server run --database postgresql://…`), with a real
agent and the real CLI; and two servers sharing one database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cloudremotecontrol.master.localrun import ServerProcess
from conftest import Env


def crc(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloudremotecontrol", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env.cli_env},
    )


def test_server_on_postgresql_runs_a_job(pg_url: str, tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "srv", database=pg_url).start()
    env = Env(srv, tmp_path)
    try:
        env.group_with_agents("lab", ["a"])
        r = crc(env, "run", "lab", "--to", "a", "--", "echo", "hi")
        assert r.returncode == 0, r.stderr + srv.log_path.read_text()[-2000:]
        assert r.stdout == "[a] hi\n"
        r = crc(env, "run", "lab", "--to", "a", "--shell", "sh", "--", "exit 3")
        assert r.returncode == 3
        # The state is in PostgreSQL, not in the data dir: a restarted server has it all.
        srv.stop()
        srv.start()
        env.wait_state("lab", ["a"], "ready")  # the agent reconnected by itself
        r = crc(env, "run", "lab", "--to", "a", "--json", "--", "echo", "again")
        assert r.returncode == 0, r.stderr
        lines = [json.loads(x) for x in r.stdout.splitlines()]
        assert {"machine": "a", "stream": "stdout", "data": "again\n"}.items() <= next(
            x for x in lines if x.get("stream") == "stdout"
        ).items()
    finally:
        env.close()
        srv.stop()
    assert not (tmp_path / "srv" / "crc.db").exists()


def test_two_servers_share_users_groups_and_events(pg_url: str, tmp_path: Path) -> None:
    a = ServerProcess(tmp_path / "a", database=pg_url).start()
    b = ServerProcess(tmp_path / "b", database=pg_url).start()
    env = Env(a, tmp_path)  # alice's token is in the database: valid on both servers
    try:
        env.group_with_agents("lab", ["m"])  # the agent is connected to server a
        on_b = {**env.cli_env, "CRC_URL": b.url, "CRC_FINGERPRINT": b.fingerprint}
        r = subprocess.run(
            [sys.executable, "-m", "cloudremotecontrol", "status", "lab", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **on_b},
        )
        assert r.returncode == 0, r.stderr
        assert [(m["name"], m["state"]) for m in json.loads(r.stdout)["machines"]] == [
            ("m", "ready")
        ]
        # A job started through a (where the agent is) is seen through b's event stream.
        r = crc(env, "run", "lab", "--to", "m", "--", "echo", "hi")
        assert r.returncode == 0, r.stderr
        r = subprocess.run(
            [sys.executable, "-m", "cloudremotecontrol", "events", "lab", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **on_b},
        )
        assert r.returncode == 0, r.stderr
        events = [json.loads(x) for x in r.stdout.splitlines()]
        assert any(e["type"] == "job.output" and e["data"]["data"] == "hi\n" for e in events)
    finally:
        env.close()
        a.stop()
        b.stop()
