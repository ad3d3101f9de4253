"""`crc run` and `crc shell` exit with a failing remote code a shell can show: one
outside 1-255 (256, a Windows NTSTATUS code, a negative one) is 1, never 0 as modulo
256 would make it; the real code is still printed."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from wire_helpers import assert_no_traceback_in_server_log, bearer, enroll, pinned_http, wire_agent

from cloudremotecontrol.tlspin import client_context
from conftest import Env


def _popen(env: Env, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env.cli_env},
    )


async def _agent_stream(env: Env, cred: str, sid: str) -> ClientConnection:
    server = env.server
    ctx, _ = client_context(server.url, server.fingerprint)
    url = "wss://" + server.url.split("://", 1)[1].rstrip("/") + f"/v1/agent/streams/{sid}"
    return await connect(
        url, ssl=ctx, additional_headers={"Authorization": bearer(cred)}, compression=None
    )


def _machine(env: Env) -> str:
    key = env.client.create_group("lab", ["a"])["machines"][0]["key"]
    with pinned_http(env.server) as http:
        return enroll(http, key)


@pytest.mark.parametrize(
    ("code", "rc"), [(256, 1), (512, 1), (3221225728, 1), (-256, 1), (-9, 137), (3, 3)]
)
def test_run_exits_with_a_code_a_shell_can_show(env: Env, code: int, rc: int) -> None:
    cred = _machine(env)

    async def main() -> tuple[int, str]:
        async with wire_agent(env.server, cred, "lab", "a") as a:
            p = _popen(env, "run", "lab", "--to", "a", "--", "false")
            job = (await a.next_msg())["body"]["job_id"]
            await a.send_msg("job.started", {"job_id": job})
            result = {"job_id": job, "status": "failed", "exit_code": code}
            await a.send_msg("job.result", result)
            _, err = await asyncio.to_thread(p.communicate, timeout=60)
            return p.returncode, err

    got, err = asyncio.run(main())
    assert got == rc, err
    assert f"[a] failed (exit {code})" in err  # the real code, as the machine said
    assert "Traceback" not in err
    assert_no_traceback_in_server_log(env.server)


@pytest.mark.parametrize(("code", "rc"), [(256, 1), (-256, 1), (512, 1), (-9, 137), (0, 0), (7, 7)])
def test_shell_exits_with_a_code_a_shell_can_show(env: Env, code: int, rc: int) -> None:
    cred = _machine(env)

    async def main() -> tuple[int, str, str]:
        async with wire_agent(env.server, cred, "lab", "a") as a:
            p = _popen(env, "shell", "lab", "a", "--json", "--", "false")
            while True:
                frame: dict[str, Any] = json.loads(await asyncio.wait_for(a.ws.recv(), 30))
                if frame.get("type") == "stream.open":
                    break
            ws = await _agent_stream(env, cred, frame["stream"])
            await ws.send(b"bye\r\n")
            await ws.send(json.dumps({"type": "stream.exit", "code": code}))
            out, err = await asyncio.to_thread(p.communicate, timeout=60)
            await ws.close()
            return p.returncode, out, err

    got, out, err = asyncio.run(main())
    assert got == rc, (out, err)
    assert json.loads(out.splitlines()[-1])["exit_code"] == code  # the real code
    assert "Traceback" not in err
