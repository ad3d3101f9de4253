"""The server on PostgreSQL while its database refuses connections: requests are answered
503 promptly (not after minutes of the pool's retries), ``GET /v1/health`` says the
database is down, an agent's message is not acknowledged and its connection is closed
cleanly (it comes back and delivers the message), and everything works again once the
database is back."""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest
from wire_helpers import bearer, pinned_http

from cloudremotecontrol.master.localrun import ServerProcess
from cloudremotecontrol.server.api import HEALTH_PROBE_EVERY
from conftest import Env
from pg import PgCluster

# A client gives up on a request after this long: while the database is down, every
# answer must come before it (the server used to take 90-200 s to answer).
CLIENT_TIMEOUT = 25.0


def _allow(pg_cluster: PgCluster, url: str, yes: bool) -> None:
    name = urllib.parse.urlsplit(url).path.lstrip("/")
    with pg_cluster._admin() as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(yes).lower()}')
        if not yes:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )


@pytest.fixture
def server(pg_url: str, pg_cluster: PgCluster, tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path / "srv", database=pg_url).start()
    try:
        yield srv
    finally:
        _allow(pg_cluster, pg_url, True)  # the database can be dropped
        srv.stop()


def test_a_database_outage_is_answered_503_at_once_and_health_says_so(
    server: ServerProcess, pg_url: str, pg_cluster: PgCluster, tmp_path: Path
) -> None:
    env = Env(server, tmp_path)
    try:
        env.group_with_agents("lab", ["a"])
        token = env.cli_env["CRC_TOKEN"]
        auth = {"Authorization": bearer(token)}
        with pinned_http(server) as http:
            assert http.get("/v1/health").status_code == 200
            _allow(pg_cluster, pg_url, False)
            time.sleep(HEALTH_PROBE_EVERY + 0.1)  # the last probe's answer is kept that long
            for method, path, kw in (
                ("GET", "/v1/health", {}),
                ("GET", "/v1/groups", {"headers": auth}),
                ("POST", "/v1/groups", {"headers": auth, "json": {"name": "g2", "machines": []}}),
                ("POST", "/v1/agent/enroll", {"json": {"key": "crck_ab_cd"}}),
            ):
                try:
                    r = http.request(method, path, timeout=CLIENT_TIMEOUT, **kw)
                except httpx.TimeoutException:
                    pytest.fail(f"{method} {path}: no answer within {CLIENT_TIMEOUT} s")
                assert r.status_code == 503, (method, path, r.status_code, r.text)
                assert r.json()["error"]["code"] == "unavailable", r.text
            assert "database" in http.get("/v1/health").json()["error"]["message"]

            _allow(pg_cluster, pg_url, True)
            ok = None
            for _ in range(100):  # the pool connects again within seconds
                ok = http.get("/v1/health", timeout=CLIENT_TIMEOUT)
                if ok.status_code == 200:
                    break
                time.sleep(0.2)
            assert ok is not None and ok.status_code == 200, ok.text if ok else None
            assert http.get("/v1/groups", headers=auth).status_code == 200
        result = env.client.run_wait("lab", "a", argv=["echo", "back"])
        assert result.results["a"].status == "succeeded", result
    finally:
        env.close()
    assert "Traceback" not in server.log_path.read_text()


def test_a_database_made_again_empty_under_the_server_is_unavailable_not_an_error(
    server: ServerProcess, pg_url: str, tmp_path: Path
) -> None:
    """The database dropped and made again (or its tables dropped) while the server
    runs: it answers, without crc's tables. Health says the database is unavailable
    (a load balancer stops sending requests here), requests are 503 (not a 500 per
    request), the log says what happened and what to do; a restart sets the tables up."""
    env = Env(server, tmp_path)
    try:
        env.group_with_agents("lab", ["a"])
        auth = {"Authorization": bearer(env.cli_env["CRC_TOKEN"])}
        with pinned_http(server) as http:
            assert http.get("/v1/health").status_code == 200
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute("DROP SCHEMA public CASCADE")
                conn.execute("CREATE SCHEMA public")
            time.sleep(HEALTH_PROBE_EVERY + 0.1)  # the last probe's answer is kept that long
            for method, path, kw in (
                ("GET", "/v1/health", {}),
                ("GET", "/v1/groups", {"headers": auth}),
                ("POST", "/v1/groups", {"headers": auth, "json": {"name": "g2", "machines": []}}),
                ("POST", "/v1/agent/enroll", {"json": {"key": "crck_ab_cd"}}),
            ):
                r = http.request(method, path, timeout=CLIENT_TIMEOUT, **kw)
                assert r.status_code == 503, (method, path, r.status_code, r.text)
                assert r.json()["error"]["code"] == "unavailable", r.text
    finally:
        env.close()
    log = server.log_path.read_text()
    assert "has lost crc's tables" in log and "restart the server" in log, log[-4000:]
    assert "Traceback" not in log, log[-6000:]
    server.stop()
    server.start()
    with pinned_http(server) as http:
        assert http.get("/v1/health").status_code == 200


def _progress(env: Env) -> str | None:
    return (env.client.group("lab")["machines"][0]["progress"] or {}).get("text")


def test_a_message_sent_while_the_database_is_down_arrives_once_it_is_back(
    server: ServerProcess, pg_url: str, pg_cluster: PgCluster, tmp_path: Path
) -> None:
    env = Env(server, tmp_path)
    try:
        env.group_with_agents("lab", ["a"])
        _allow(pg_cluster, pg_url, False)
        r = env.agent_cli("a", "progress", "sent during the outage")
        assert r.returncode == 0, r.stderr  # queued on the machine
        time.sleep(8)  # the server tries to store it, fails, closes the connection
        _allow(pg_cluster, pg_url, True)
        deadline = time.monotonic() + 120
        text = None
        while time.monotonic() < deadline:
            try:
                text = _progress(env)
            except Exception:  # noqa: BLE001 - the server may still be reconnecting
                text = None
            if text == "sent during the outage":
                break
            time.sleep(0.5)
        agent_log = env.agents[0].log()
        assert text == "sent during the outage", agent_log[-3000:]
        # The server closed the connection rather than acknowledge what it had not stored.
        assert "1013" in agent_log, agent_log[-3000:]
        sent = [
            e
            for e in env.client.events("lab")
            if e["type"] == "progress" and e["data"]["text"] == "sent during the outage"
        ]
        assert len(sent) == 1, sent  # stored once
        result = env.client.run_wait("lab", "a", argv=["echo", "back"])
        assert result.results["a"].status == "succeeded", result
    finally:
        env.close()
    log = server.log_path.read_text()
    assert "Traceback" not in log, log[-6000:]


def test_a_crowd_of_requests_during_an_outage_is_answered_503_at_once(
    server: ServerProcess, pg_url: str, pg_cluster: PgCluster, tmp_path: Path
) -> None:
    """Many callers at once (a fleet of agents reconnecting, say): once a wait for a
    connection failed, the others are answered without waiting as long each (the
    readers are few: one after another, 40 requests took 50 s)."""
    env = Env(server, tmp_path)
    try:
        auth = {"Authorization": bearer(env.cli_env["CRC_TOKEN"])}
        _allow(pg_cluster, pg_url, False)

        def one(_: int) -> int:
            with pinned_http(server) as http:
                try:
                    return http.get("/v1/groups", headers=auth, timeout=CLIENT_TIMEOUT).status_code
                except httpx.TimeoutException:
                    return -1

        with ThreadPoolExecutor(40) as pool:
            codes = list(pool.map(one, range(40)))
        assert codes == [503] * 40, codes  # -1: no answer within CLIENT_TIMEOUT
        _allow(pg_cluster, pg_url, True)
        ok = None
        for _ in range(100):
            with pinned_http(server) as http:
                ok = http.get("/v1/groups", headers=auth, timeout=CLIENT_TIMEOUT)
            if ok.status_code == 200:
                break
            time.sleep(0.2)
        assert ok is not None and ok.status_code == 200, ok.text if ok else None
    finally:
        env.close()
    assert "Traceback" not in server.log_path.read_text()


def _back(server: ServerProcess) -> None:
    with pinned_http(server) as http:
        for _ in range(150):  # the pool connects again within seconds
            if http.get("/v1/health", timeout=CLIENT_TIMEOUT).status_code == 200:
                return
            time.sleep(0.2)
    pytest.fail("the server did not see its database back")


def test_an_event_stream_open_when_the_database_fails_is_cut_cleanly(
    server: ServerProcess, pg_url: str, pg_cluster: PgCluster, tmp_path: Path
) -> None:
    """A follower's stream (``crc events -f``, ``crc run``) whose next read of the
    database fails: the stream is cut (the client resumes from its cursor), the log says
    so in one line, with no traceback and no "Exception in ASGI application"."""
    env = Env(server, tmp_path)
    try:
        env.client.create_group("lab", ["a"])
        auth = {"Authorization": bearer(env.cli_env["CRC_TOKEN"])}
        with (
            pinned_http(server) as http,
            http.stream(
                "GET", "/v1/groups/lab/events", params={"follow": "true"}, headers=auth
            ) as r,
        ):
            assert r.status_code == 200
            _allow(pg_cluster, pg_url, False)
            start = time.monotonic()
            with pytest.raises(httpx.RemoteProtocolError):  # cut: not a finished answer
                for _ in r.iter_raw():  # keepalives, then the cut (5 s of silence)
                    assert time.monotonic() - start < CLIENT_TIMEOUT
        _allow(pg_cluster, pg_url, True)
        _back(server)
        assert env.client.events("lab")  # the follower resumes
    finally:
        env.close()
    log = server.log_path.read_text()
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-6000:]
    assert " ERROR " not in log, log[-6000:]
    assert log.count("event stream cut: ") == 1, log[-6000:]


def test_background_loops_log_an_outage_in_a_few_lines_not_one_per_attempt(
    server: ServerProcess, pg_url: str, pg_cluster: PgCluster, tmp_path: Path
) -> None:
    """Rate control tries again 4 times a second, hosts sync once a second: during an
    outage each logs its first failure, then a line every 30 s at most, and one line
    once it works again (77 lines in 25 s of outage before)."""
    _allow(pg_cluster, pg_url, False)
    time.sleep(6)
    _allow(pg_cluster, pg_url, True)
    _back(server)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        log = server.log_path.read_text()
        if "rate control: working again" in log and "hosts sync: working again" in log:
            break
        time.sleep(0.2)
    lines = server.log_path.read_text().splitlines()
    for what in ("rate control", "hosts sync"):
        said = [line for line in lines if f"{what}: " in line]
        assert 2 <= len(said) <= 3, said  # the first failure, (still failing), back
        assert "trying again: " in said[0] and "working again after" in said[-1], said
    assert not [line for line in lines if " ERROR " in line], lines[-40:]


def test_a_column_gone_under_the_server_is_said_as_such_not_as_tables_lost(
    server: ServerProcess, pg_url: str, tmp_path: Path
) -> None:
    """A column of crc's dropped while the server runs (by hand, or a newer server's
    migration): requests are 503, and the log says a column is missing, not that the
    tables were lost (whose advice, a restart, would not bring a column back)."""
    env = Env(server, tmp_path)
    try:
        env.group_with_agents("lab", ["a"])
        auth = {"Authorization": bearer(env.cli_env["CRC_TOKEN"])}
        with pinned_http(server) as http:
            assert http.get("/v1/groups", headers=auth).status_code == 200
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute("ALTER TABLE groups DROP COLUMN deleted CASCADE")
            r = http.get("/v1/groups/lab", headers=auth, timeout=CLIENT_TIMEOUT)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "unavailable", r.text
    finally:
        env.close()
    log = server.log_path.read_text()
    assert "has crc's tables without a column this server uses" in log, log[-4000:]
    assert "has lost crc's tables" not in log and "Traceback" not in log, log[-6000:]
