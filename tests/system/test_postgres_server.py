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
        users = srv.admin("list-users")["users"]  # the admin commands read it there too
        assert [(u["user"], u["tokens"], u["groups"]) for u in users] == [("alice", 1, 1)]
        assert [t["name"] for t in srv.admin("list-tokens", "alice")["tokens"]] == ["default"]
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
    b = a.replica(tmp_path / "b").start()  # its certificate and teardown key
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


def test_a_nul_character_in_any_input_is_a_clear_error_on_postgresql(
    pg_url: str, tmp_path: Path
) -> None:
    """PostgreSQL text cannot hold a NUL character: a name, id, key or cookie with one is
    refused as bad input (4xx, the error shape), never a 500, and the server carries on."""
    from wire_helpers import assert_no_traceback_in_server_log, bearer, pinned_http

    srv = ServerProcess(tmp_path / "srv", database=pg_url).start()
    env = Env(srv, tmp_path)
    try:
        env.client.create_group("lab", ["a"])
        alice = {"Authorization": bearer(env.token)}
        nul_cookie = {"Cookie": '__Host-crc_session="crcs_0123456789abcdef\\000_x"'}
        requests = [
            ("GET", "/v1/groups/%00", {"headers": alice}, 400),
            ("GET", "/v1/groups/lab%00", {"headers": alice}, 400),
            ("GET", "/v1/groups/%00/events", {"headers": alice}, 400),
            ("GET", "/v1/jobs/%00", {"headers": alice}, 400),
            ("GET", "/v1/jobs/%00/events", {"headers": alice}, 400),
            ("GET", "/v1/groups/lab/kv/%00", {"headers": alice}, 400),
            ("GET", "/v1/audit?group=%00", {"headers": alice}, 400),
            ("POST", "/v1/agent/enroll", {"json": {"key": "crck_0123\x00cdef_x"}}, 401),
            ("GET", "/v1/whoami", {"headers": nul_cookie}, 401),
            (
                "POST",
                "/v1/groups/lab/streams",
                {"headers": alice, "json": {"machine": "a\x00", "kind": "shell"}},
                400,
            ),
        ]
        with pinned_http(srv) as http:
            for method, path, kwargs, status in requests:
                r = http.request(method, path, **kwargs)
                assert r.status_code == status, f"{method} {path}: {r.status_code} {r.text}"
                assert r.json()["error"]["message"], r.text
            assert http.get("/v1/groups/lab", headers=alice).status_code == 200
        assert_no_traceback_in_server_log(srv)
    finally:
        env.close()
        srv.stop()
