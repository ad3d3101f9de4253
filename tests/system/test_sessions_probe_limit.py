"""Forward probes (the connection `crc forward` makes at its start to check the remote
end) are left out of the session lists by the server, so that a limit counts what is
listed: `crc sessions list --limit N`, ``GET /v1/groups/G/sessions?limit=N`` and the
SDK's ``sessions`` answer the latest N sessions that are not probes; with ``--probes``
(``probes=true``, ``probes=True``) probes are listed and counted. The real server,
agent and `crc` CLI, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from store_fixtures import anyio_backend_fixture, db_url_fixture  # noqa: F401 -- fixtures
from wire_helpers import assert_error, pinned_http

from cloudremotecontrol.master.aclient import AsyncClient
from cloudremotecontrol.server.ops import events, groups, users
from cloudremotecontrol.server.ops import sessions as session_ops
from cloudremotecontrol.server.store.base import open_store
from held_service import HeldService

CRC = [sys.executable, "-m", "cloudremotecontrol"]


def _crc(env: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CRC, *args],
        env={**os.environ, **env.cli_env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=90,
    )


@pytest.fixture
def service() -> Iterator[HeldService]:
    s = HeldService()
    yield s
    s.close()


def _forward_started(env: Any, port: int) -> None:
    """`crc forward` up to its first line (its probe made), then ended."""
    with subprocess.Popen(
        [*CRC, "forward", "lab", "dev", f"0:{port}"],
        env={**os.environ, **env.cli_env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as fwd:
        try:
            assert fwd.stdout is not None
            assert "-> dev:127.0.0.1:" in fwd.stdout.readline()
        finally:
            fwd.terminate()
            fwd.wait(30)


def _listed(env: Any, *args: str) -> list[dict[str, Any]]:
    r = _crc(env, "sessions", "list", "lab", "--json", *args)
    assert r.returncode == 0, r
    rows: list[dict[str, Any]] = json.loads(r.stdout)["sessions"]
    return rows


def test_probes_are_left_out_by_the_server_so_the_limit_counts_sessions(
    db_env: Any, service: HeldService
) -> None:
    env = db_env
    env.group_with_agents("lab", ["dev"])
    r = _crc(env, "shell", "lab", "dev", "--", "sh", "-c", "exit 7")
    assert r.returncode == 7, r
    for _ in range(2):
        _forward_started(env, service.port)
    deadline = time.monotonic() + 30  # each end is written as its stream closes
    while len(_listed(env, "--probes")) < 3:
        assert time.monotonic() < deadline, _listed(env, "--probes")
        time.sleep(0.2)

    # The CLI: the latest session that is not a probe, though two probes came after it.
    (shell,) = _listed(env, "--limit", "1")
    assert (shell["kind"], shell["exit_code"]) == ("shell", 7), shell
    r = _crc(env, "sessions", "list", "lab", "--limit", "1")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2, r
    assert "(probe)" not in r.stdout and " shell " in r.stdout, r.stdout
    probes = _listed(env, "--limit", "2", "--probes")
    assert [(p["kind"], p.get("probe")) for p in probes] == [("forward", True)] * 2, probes

    # The API: left out unless probes=true.
    with pinned_http(env.server) as http:
        http.headers["Authorization"] = f"Bearer {env.token}"
        answer = http.get("/v1/groups/lab/sessions", params={"limit": 1})
        assert answer.status_code == 200, answer.text
        assert [s["stream"] for s in answer.json()["sessions"]] == [shell["stream"]]
        answer = http.get("/v1/groups/lab/sessions", params={"limit": 3, "probes": "true"})
        assert [s.get("probe") for s in answer.json()["sessions"]] == [None, True, True]
        answer = http.get("/v1/groups/lab/sessions", params={"probes": "maybe"})
        assert_error(answer, 400, "invalid_input")

    # The SDK, sync and async.
    assert [s["stream"] for s in env.client.sessions("lab", 1)] == [shell["stream"]]
    assert len(env.client.sessions("lab", 2, probes=True)) == 2

    async def from_async() -> list[dict[str, Any]]:
        async with AsyncClient(env.server.url, env.token, env.server.fingerprint) as c:
            return await c.sessions("lab", 1)

    assert [s["stream"] for s in anyio.run(from_async)] == [shell["stream"]]


@pytest.mark.anyio
async def test_probes_past_a_batch_are_skipped_and_each_stream_listed_once(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read back a few audit rows at a time (batches of 2 here): the latest sessions
    that are not probes are found however many probes ended after them, and a stream
    closed twice (cut by a killed replica, then its real end) is listed once."""
    monkeypatch.setattr(session_ops, "_SESSION_BATCH", 2, raising=False)
    store = open_store(db_url)
    await store.start()
    try:
        token = await store.write(users.create_user, "alice")
        user = await store.read(users.authenticate_master, token)
        await store.write(groups.create_group, user["user_id"], "lab", [{"name": "dev"}])
        gid = (await store.read(events.group_cursor, user["user_id"], "lab"))["group_id"]

        async def ended(stream: str, **detail: Any) -> None:
            await store.write(
                session_ops.close_stream, user, "lab", gid, "dev", {"stream": stream, **detail}
            )

        await ended("s1", kind="shell")
        await ended("s2", kind="shell", cut=True)  # cut, then its real end
        await ended("s2", kind="shell", exit_code=0)
        for n in range(5):
            await ended(f"p{n}", kind="forward", probe=True)
        listed = await store.read(session_ops.list_sessions, user["user_id"], "lab", 2)
        assert [(s["stream"], s.get("exit_code")) for s in listed] == [("s1", None), ("s2", 0)]
        listed = await store.read(session_ops.list_sessions, user["user_id"], "lab", 10)
        assert [s["stream"] for s in listed] == ["s1", "s2"]
        listed = await store.read(session_ops.list_sessions, user["user_id"], "lab", 3, True)
        assert [s["stream"] for s in listed] == ["p2", "p3", "p4"]
    finally:
        await store.close()
