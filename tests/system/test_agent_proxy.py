"""An agent behind an HTTP proxy given by the environment (``https_proxy``), as on a
machine that reaches the internet only through one, connects through it: the lean
entry point skips websockets' proxy lookup only where there is no proxy to find
(agent/deferred.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tcp_relay import ConnectProxy

from conftest import Env


def _lean_agent(env: Env, state: Path, extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    with open(state.with_suffix(".log"), "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "cloudremotecontrol.agent", "run", "--state-dir", str(state)],
            env={
                **clean,
                "CRC_URL": env.server.url,
                "CRC_FINGERPRINT": env.server.fingerprint,
                **extra_env,
            },
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def _stop(proc: subprocess.Popen[bytes], env: Env) -> None:
    proc.terminate()
    proc.wait(30)
    deadline = time.monotonic() + 30
    while env.client.group("lab")["machines"][0]["state"] == "ready":
        assert time.monotonic() < deadline, "the machine did not go offline"
        time.sleep(0.05)


def test_agent_connects_through_the_proxy_its_environment_names(env: Env, tmp_path: Path) -> None:
    proxy = ConnectProxy()
    server = f"CONNECT 127.0.0.1:{env.server.port} HTTP/1.1"
    key = env.client.create_group("lab", ["a"])["machines"][0]["key"]
    state = tmp_path / "a"
    try:
        # Enrollment (HTTPS) and the connection (WebSocket) both go through the proxy.
        proc = _lean_agent(env, state, {"CRC_KEY": key, "https_proxy": proxy.url})
        try:
            env.wait_state("lab", ["a"], "ready")
        finally:
            _stop(proc, env)
        assert server in proxy.requests
        # Enrolled, it makes no HTTPS call: the connection alone goes through it.
        proxy.requests.clear()
        proc = _lean_agent(env, state, {"HTTPS_PROXY": proxy.url})
        try:
            env.wait_state("lab", ["a"], "ready")
            assert proxy.requests == [server]
        finally:
            _stop(proc, env)
        # Without a proxy in its environment it connects directly.
        proxy.requests.clear()
        proc = _lean_agent(env, state, {})
        try:
            env.wait_state("lab", ["a"], "ready")
            assert proxy.requests == []
        finally:
            _stop(proc, env)
    finally:
        proxy.close()
