"""Agent logins past the server's bound (server/admission.py): answered 503 with
Retry-After before any WebSocket exists; the real agent waits as told, then connects,
and nothing it or the server had acknowledged is lost. A real server with
``--max-logins 1``; the one place is held by a raw WebSocket that authenticated and
never says hello."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from wire_helpers import assert_no_traceback_in_server_log, bearer, enroll, pinned_http, ws_open

from cloudremotecontrol.master.client import Client
from cloudremotecontrol.master.localrun import AgentProcess, ServerProcess


@pytest.fixture
def busy_server(tmp_path: Path) -> Any:
    srv = ServerProcess(tmp_path / "srv", args=["--max-logins", "1"]).start()
    yield srv
    srv.stop()


def _wait(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached: {what}")
        time.sleep(0.05)


async def _refused(server: ServerProcess, auth: str | None) -> tuple[int, str | None, Any]:
    with pytest.raises(InvalidStatus) as exc:
        async with ws_open(server, auth):
            pass
    resp = exc.value.response
    return resp.status_code, resp.headers.get("Retry-After"), json.loads(resp.body or b"{}")


def test_over_the_bound_agents_are_told_to_retry_after_and_then_connect(
    busy_server: ServerProcess, tmp_path: Path
) -> None:
    server = busy_server
    token = server.add_user("alice")
    with Client(server.url, token, server.fingerprint) as client, pinned_http(server) as http:
        keys = {m["name"]: m["key"] for m in client.create_group("g", ["a", "hog"])["machines"]}
        hog = enroll(http, keys["hog"])
        agent = AgentProcess(tmp_path / "a", server.url, keys["a"], server.fingerprint).start()
        try:

            def state() -> str:
                return str({m["name"]: m["state"] for m in client.group("g")["machines"]}["a"])

            _wait("a ready", lambda: state() == "ready")
            first = client.run_wait("g", "a", argv=["echo", "one"])
            assert first.results["a"].status == "succeeded"
            agent.stop()
            _wait("a offline", lambda: state() == "offline")

            async def scenario() -> None:
                # The one login place: a machine that authenticated and never says hello.
                async with ws_open(server, bearer(hog)):
                    # Anyone else, credential or not, is turned away before any work.
                    for auth in (None, bearer(hog)):
                        status, retry_after, body = await _refused(server, auth)
                        assert status == 503, (status, body)
                        assert retry_after is not None and retry_after.isdigit(), retry_after
                        assert int(retry_after) >= 1
                        assert body["error"]["code"] == "unavailable", body
                    # A job for the offline agent: queued, acknowledged by the server.
                    job = client.start_job("g", "a", argv=["echo", "two"])
                    agent.start()  # refused while the place is taken
                    await asyncio.to_thread(
                        _wait,
                        "the agent was told to retry after",
                        lambda: "HTTP 503" in agent.log() and "retrying in" in agent.log(),
                    )
                    job_id.append(job["job_id"])
                # The hog is gone: the agent, waiting as told, now gets in.

            job_id: list[str] = []
            asyncio.run(scenario())
            _wait("a ready again", lambda: state() == "ready")
            results = _wait(
                "the queued job's result",
                lambda: client.job_results(job_id[0]).get("a"),
            )
            assert results.status == "succeeded"
            second = client.job(job_id[0])
            assert [t["status"] for t in second["targets"]] == ["succeeded"]
            # Nothing acknowledged before is lost: the first job's result is still there.
            assert client.job_results(first.job_id)["a"].status == "succeeded"
            # And the server still serves: a new job to the reconnected agent.
            third = client.run_wait("g", "a", argv=["echo", "three"])
            assert third.results["a"].status == "succeeded"
        finally:
            agent.stop()
    assert_no_traceback_in_server_log(server)
