"""How an agent's connection notices a peer that is gone (server/wsprotocol.py,
keepalive.py): TCP keepalive on both ends for a machine or server that vanished, the
agent's WebSocket pings and the server's silence timeout for one that hangs.

A real server and real agents; the kernel's own view of the sockets (`ss`); a network
namespace the machine vanishes from (its link cut, so nothing answers and nothing says
goodbye)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from wire_helpers import assert_no_traceback_in_server_log, bearer, enroll, pinned_http, ws_url

from cloudremotecontrol import keepalive
from cloudremotecontrol.master.localrun import ServerProcess, crc_argv, free_port
from cloudremotecontrol.protocol.limits import AGENT_SILENCE_SECONDS
from cloudremotecontrol.tlspin import client_context
from conftest import Env

_KEEPALIVE = re.compile(r"timer:\(keepalive,(?:(\d+)min)?(\d+(?:\.\d+)?)(m?s)ec")


def _sockets(filter_: str) -> list[str]:
    """Established TCP sockets matching an `ss` filter, one line each (with owner)."""
    out = subprocess.run(
        ["ss", "-tnopH", "state", "established", filter_],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [line for line in out.splitlines() if line.strip()]


def _keepalive_seconds(line: str) -> float | None:
    """Seconds until the socket's next keepalive probe, or None without keepalive."""
    m = _KEEPALIVE.search(line)
    if m is None:
        return None
    minutes, value, unit = m.groups()
    seconds = float(value) / (1000 if unit == "ms" else 1)
    return seconds + 60 * int(minutes or 0)


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss(8) to read the sockets")
def test_both_ends_of_an_agents_connection_have_tcp_keepalive(env: Env) -> None:
    env.group_with_agents("ka", ["a"])
    agent = env.agents[0]
    assert agent.proc is not None
    port = env.server.port
    pid = f"pid={agent.proc.pid},"

    def agent_side() -> list[str]:
        return [s for s in _sockets(f"( dport = :{port} )") if pid in s]

    deadline = time.monotonic() + 30
    while len(agent_side()) != 1:  # the enrollment's HTTP connection gone, if any
        assert time.monotonic() < deadline, agent_side()
        time.sleep(0.2)
    (mine,) = agent_side()
    local_port = mine.split()[2].rsplit(":", 1)[1]
    (theirs,) = _sockets(f"( sport = :{port} and dport = :{local_port} )")
    for side, line in (("agent", mine), ("server", theirs)):
        seconds = _keepalive_seconds(line)
        # The kernel's default would first probe after two hours.
        assert seconds is not None, f"{side} side has no keepalive: {line}"
        assert seconds <= keepalive.IDLE_SECONDS, f"{side} side: {line}"
    # A connection that is not an agent's (a master's kept-alive HTTP request) is left
    # alone: only the server's agent sockets carry keepalive.
    env.client.list_groups()
    others = [s for s in _sockets(f"( sport = :{port} )") if f":{local_port} " not in s]
    assert others, "the master's HTTP connection should still be open"
    assert all(_keepalive_seconds(s) is None for s in others), others


def test_a_silent_agent_connection_is_closed_after_the_silence_timeout(tmp_path: Path) -> None:
    """The server sends agents no pings of its own: it closes a connection it has heard
    nothing from, not even pings, for --agent-silence-timeout (warning at start that
    this value is below the agents' ping interval)."""
    server = ServerProcess(tmp_path / "srv", args=["--agent-silence-timeout", "3"]).start()
    env = Env(server, tmp_path)
    try:
        with pinned_http(server) as http:
            key = env.client.create_group("quiet", ["q"])["machines"][0]["key"]
            cred = enroll(http, key)

        async def silent() -> tuple[int | None, str | None, float]:
            ctx, _ = client_context(server.url, server.fingerprint)
            async with connect(
                ws_url(server),
                ssl=ctx,
                additional_headers={"Authorization": bearer(cred)},
                compression=None,
                ping_interval=None,  # a machine that froze: nothing from it any more
            ) as ws:
                await ws.send(json.dumps({"type": "hello", "ack": 0, "ready": True}))
                assert json.loads(await ws.recv())["type"] == "welcome"
                heard = time.monotonic()
                try:
                    while True:
                        await asyncio.wait_for(ws.recv(), 60)
                        heard = time.monotonic()
                except ConnectionClosed as exc:
                    rcvd = exc.rcvd
                    code = (rcvd.code, rcvd.reason) if rcvd else (None, None)
                    return (*code, time.monotonic() - heard)
            raise AssertionError("the connection ended without a close")

        code, reason, after = asyncio.run(silent())
        assert code == 1011, (code, reason)
        assert after >= 1.0, f"closed {after:.1f} s after the last frame: not for silence"
        env.wait_state("quiet", ["q"], "offline")
        log = server.log_path.read_text(errors="replace")
        assert "agent_silence_timeout is 3 s" in log, log[-2000:]
    finally:
        env.close()
        server.stop()
    assert_no_traceback_in_server_log(server)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and ip(8) for a network namespace the machine can vanish from",
)
def test_a_machine_that_vanishes_turns_offline_before_the_silence_timeout(
    tmp_path: Path,
) -> None:
    """The machine's network goes away without a FIN or RST (a VM destroyed, a link
    cut): the server's kernel notices through keepalive within DEAD_PEER_SECONDS,
    long before the 120 s silence timeout would."""
    n = os.getpid() % 250
    ns, host_if, ns_if = f"crc-vanish-{os.getpid()}", f"crcv{os.getpid()}h", f"crcv{n}n"
    host_if = host_if[-15:]  # interface names have 15 characters at most
    host_ip, ns_ip = f"10.213.{n}.1", f"10.213.{n}.2"
    _ip("netns", "add", ns)
    env: Env | None = None
    server: ServerProcess | None = None
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", ns)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", ns, "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        _ip("-n", ns, "link", "set", ns_if, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        port = free_port()
        data = tmp_path / "srv"
        subprocess.run(
            crc_argv(
                "server",
                "init",
                "--data-dir",
                str(data),
                "--listen",
                f"{host_ip}:{port}",
                "--url",
                f"https://{host_ip}:{port}",
                "--json",
            ),
            check=True,
            capture_output=True,
        )
        server = ServerProcess(data, port=port).start()
        env = Env(server, tmp_path)
        key = env.client.create_group("far", ["v"])["machines"][0]["key"]
        env.agent("v", key, prefix=["ip", "netns", "exec", ns])
        env.wait_state("far", ["v"], "ready")
        _ip("-n", ns, "link", "set", ns_if, "down")  # gone: nothing answers any more
        cut = time.monotonic()
        env.wait_state("far", ["v"], "offline", timeout=keepalive.DEAD_PEER_SECONDS + 30)
        assert time.monotonic() - cut < AGENT_SILENCE_SECONDS
    finally:
        if env is not None:
            env.close()
        if server is not None:
            server.stop()
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
    assert_no_traceback_in_server_log(server)
