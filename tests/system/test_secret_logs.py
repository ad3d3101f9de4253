"""No log line of the server or the agent shows a token, credential or key, at any
log level: real processes doing everything that handles a secret (enrollment, the
WebSocket handshake, a refused key, jobs, a Vultr key used by the server's teardown
through httpx), then every line of both logs searched."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from wire_helpers import forge, pinned_http

from cloudremotecontrol.master.client import Client
from cloudremotecontrol.master.localrun import AgentProcess, ServerProcess
from cloudremotecontrol.server.dashboard.sessions import COOKIE
from cloudremotecontrol.tlspin import client_context
from fakes.vultr_api import FakeVultr


def _secret_part(token: str) -> str:
    return token.split("_", 2)[2]  # crc<kind>_<id>_<secret>: the secret may hold "_"


def _dashboard_session(server: ServerProcess, token: str) -> str:
    """Log in to the dashboard, then dial a terminal's WebSocket with the session cookie
    as its page does (websockets logs the handshake's headers at debug)."""
    with pinned_http(server) as http:
        form_token = http.get("/dashboard/login").cookies["__Host-crc_login"]
        r = http.post(
            "/dashboard/login",
            data={"token": token, "form_token": form_token},
            headers={"Cookie": f"__Host-crc_login={form_token}"},
        )
        assert r.status_code == 303, r.text
        session = r.cookies[COOKIE]
        assert http.get("/v1/whoami", headers={"Cookie": f"{COOKIE}={session}"}).is_success

    async def dial() -> None:
        ctx, _ = client_context(server.url, server.fingerprint)
        url = "wss://" + server.url.split("://", 1)[1].rstrip("/") + "/v1/streams/st_nosuch"
        headers = {"Cookie": f"{COOKIE}={session}", "Origin": server.url.rstrip("/")}
        with contextlib.suppress(InvalidStatus, ConnectionClosed):
            async with connect(url, ssl=ctx, additional_headers=headers, open_timeout=10):
                pass

    asyncio.run(dial())
    return str(session)


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error"])
def test_no_log_level_shows_a_secret(tmp_path: Path, level: str) -> None:
    vultr_key = "VK" + secrets.token_hex(17).upper()  # shaped like Vultr's 36 characters
    fake = FakeVultr(boot=None, api_key=vultr_key, ready_delay=0.1).start()
    server = ServerProcess(
        tmp_path / "srv", env={"CRC_VULTR_API_URL": fake.url}, args=["--log-level", level]
    ).start()
    agent: AgentProcess | None = None
    try:
        token = server.add_user("alice")
        client = Client(server.url, token, server.fingerprint)
        key = client.create_group("lab", ["a"])["machines"][0]["key"]
        client.create_group("doomed", ["x"], ttl=3)
        client.arm_teardown("doomed", "vultr", vultr_key)
        forged = forge(key)
        with pinned_http(server) as http:
            assert http.post("/v1/agent/enroll", json={"key": forged}).status_code == 401
        agent = AgentProcess(
            tmp_path / "a", server.url, key, server.fingerprint, extra=["--log-level", level]
        ).start()
        deadline = time.monotonic() + 60
        while client.group("lab")["machines"][0]["state"] != "ready":
            assert time.monotonic() < deadline, agent.log()
            time.sleep(0.1)
        job = client.start_job("lab", "a", argv=["echo", "hello"])
        while client.job(job["job_id"])["targets"][0]["status"] != "succeeded":
            assert time.monotonic() < deadline, client.job(job["job_id"])
            time.sleep(0.1)
        while (client.group("doomed").get("teardown") or {}).get("status") != "done":
            assert time.monotonic() < deadline, client.group("doomed")
            time.sleep(0.2)
        credential = json.loads((tmp_path / "a" / "credential.json").read_text())["credential"]
        client.close()
        session = _dashboard_session(server, token)
    finally:
        if agent is not None:
            agent.stop()
        server.stop()
        fake.stop()
    logs = {"server": server.log_path.read_text(), "agent": agent.log() if agent else ""}
    for name, text in logs.items():
        for what, secret in {
            "master token": _secret_part(token),
            "enrollment key": _secret_part(key),
            "forged key": _secret_part(forged),
            "machine credential": _secret_part(credential),
            "dashboard session": _secret_part(session),
            "Vultr API key": vultr_key,
        }.items():
            assert secret not in text, f"the {name} log at {level} shows the {what}"
        assert "Traceback" not in text, text[-3000:]
    if level == "debug":  # the handshakes are logged, with their credential redacted
        assert "authorization: <redacted>" in logs["server"].lower(), logs["server"][-3000:]
        assert "Authorization: <redacted>" in logs["agent"], logs["agent"][-3000:]
        assert "httpx" in logs["server"] or "httpcore" in logs["server"], logs["server"][-3000:]
    if level in ("debug", "info", "warning"):  # a refused key is logged by its id only
        key_id = key.split("_")[1]
        assert f"key id {key_id}" in logs["server"], logs["server"][-3000:]
