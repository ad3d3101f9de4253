"""What a client without a credential can cost the server (server/httpguard.py), and
whose address a request is said to come from (server/forwarded.py). A real server over
TLS; attackers are raw TLS sockets from other loopback addresses (127.0.0.2...), honest
clients the SDK from 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from wire_helpers import assert_error, assert_no_traceback_in_server_log, enroll, pinned_http

from cloudremotecontrol.master.client import Client
from cloudremotecontrol.master.localrun import ServerProcess

MiB = 1 << 20
CRC_SERVER_RUN = [sys.executable, "-m", "cloudremotecontrol", "server", "run"]


def _rss_mib(server: ServerProcess) -> float:
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _tls() -> ssl.SSLContext:
    # The attackers do not care whose certificate it is. TLS 1.2: the 431 test reads
    # and writes one connection from two threads, which a TLS 1.3 socket does not bear
    # (its reads may have to write).
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _status(data: bytes) -> str:
    """``431``, ``408``... from a response's first bytes; ``closed`` for none."""
    if data.startswith(b"HTTP/1.1 "):
        return data[9:12].decode()
    return "closed" if not data else "garbage"


def _connect(server: ServerProcess, source: str = "127.0.0.1") -> ssl.SSLSocket:
    raw = socket.create_connection(
        ("127.0.0.1", server.port), timeout=30, source_address=(source, 0)
    )
    return _tls().wrap_socket(raw, server_hostname="127.0.0.1")


def _whoami(sock: ssl.SSLSocket, token: str) -> str:
    """One request on ``sock``, its response read whole; its status."""
    sock.sendall(
        b"GET /v1/whoami HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + token.encode()
        + b"\r\n\r\n"
    )
    sock.settimeout(10)
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(4096)
        if not data:
            return "closed"
        buf += data
    head, body = buf.split(b"\r\n\r\n", 1)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(4096)
    return _status(head)


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    srv = ServerProcess(tmp_path / "srv").start()  # the default settings
    yield srv
    srv.stop()


def test_a_64_mib_header_is_refused_with_431_unread(server: ServerProcess) -> None:
    before = _rss_mib(server)
    sock = _connect(server)
    answer: list[bytes] = []

    def read() -> None:
        with contextlib.suppress(OSError):
            answer.append(sock.recv(4096))

    reader = threading.Thread(target=read)
    reader.start()
    sent = 0
    chunk = b"a" * (64 << 10)
    with contextlib.suppress(OSError):
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: ")
        while sent < 64 * MiB:
            sock.sendall(chunk)
            sent += len(chunk)
    reader.join(30)
    sock.close()
    assert answer and _status(answer[0]) == "431", answer
    body = json.loads(answer[0].split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "headers_too_large"
    # Nothing of it was kept: the server grew by far less than what was sent.
    assert _rss_mib(server) - before < 16, (before, _rss_mib(server))
    with pinned_http(server) as http:
        assert http.get("/v1/health").status_code == 200
    # Just under the limit is still a request like any other.
    with pinned_http(server) as http:
        assert http.get("/v1/health", headers={"X-Pad": "p" * (60 << 10)}).status_code == 200
    assert_no_traceback_in_server_log(server)


async def _trickler(port: int, source: str, ends: Counter[str], started: list[float]) -> None:
    """Open a connection and send a request's header one byte every 2 s, until the
    server answers or closes; count how it ended."""
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=_tls(), server_hostname="127.0.0.1", local_addr=(source, 0)
        )
    except OSError:
        ends["refused at connect"] += 1
        return
    started.append(time.monotonic())
    payload = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 1000
    try:
        for byte in payload:
            writer.write(bytes([byte]))
            try:
                data = await asyncio.wait_for(reader.read(4096), 2.0)
            except asyncio.TimeoutError:
                continue
            ends[_status(data)] += 1
            return
        ends["never cut off"] += 1
    except (OSError, ssl.SSLError):
        ends["closed"] += 1
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 2)


def _honest_client(
    server: ServerProcess, token: str, stop: threading.Event, out: list[Any]
) -> None:
    """A master making requests on new connections all along; records each answer."""
    while not stop.is_set():
        t = time.monotonic()
        try:
            with Client(server.url, token, server.fingerprint) as c:
                out.append(("ok", c.whoami()["user"], time.monotonic() - t))
        except Exception as exc:  # noqa: BLE001 -- recorded, asserted on below
            out.append(("error", repr(exc), time.monotonic() - t))
        time.sleep(0.2)


def test_slow_trickling_connections_are_cut_off_while_honest_clients_are_served(
    server: ServerProcess,
) -> None:
    token = server.add_user("alice")
    before = _rss_mib(server)
    stop = threading.Event()
    honest: list[Any] = []
    client = threading.Thread(target=_honest_client, args=(server, token, stop, honest))
    client.start()
    ends: Counter[str] = Counter()
    started: list[float] = []

    async def attack() -> None:
        # 300 from ten addresses (30 each: under the per-address limit, so only the
        # header timeout ends them), then 100 from one address (over it).
        tasks = [
            asyncio.create_task(_trickler(server.port, f"127.0.0.{2 + i % 10}", ends, started))
            for i in range(300)
        ]
        tasks += [
            asyncio.create_task(_trickler(server.port, "127.0.0.12", ends, started))
            for _ in range(100)
        ]
        await asyncio.wait_for(asyncio.gather(*tasks), 120)

    try:
        asyncio.run(attack())  # each trickler would take over half an hour if not cut off
    finally:
        stop.set()
        client.join(60)
    assert sum(ends.values()) == 400, ends
    assert ends["never cut off"] == 0 and ends["garbage"] == 0, ends
    # Every one was ended by the server: 408 at the header timeout (10 s), or 503 when
    # pushed out by a newer one from the same address.
    assert ends["408"] + ends["503"] == 400, ends
    assert ends["503"] >= 100 - 64, ends  # 127.0.0.12 is over the per-address limit
    # The honest master was served all along, on a new connection each time.
    assert len(honest) >= 5, honest
    assert all(kind == "ok" for kind, _, _ in honest), [h for h in honest if h[0] != "ok"]
    assert _rss_mib(server) - before < 64, (before, _rss_mib(server))
    assert_no_traceback_in_server_log(server)


def test_a_request_body_that_stops_arriving_is_cut_off(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "srv", args=["--body-timeout", "2"]).start()
    try:
        sock = _connect(srv)
        sock.sendall(
            b"POST /v1/agent/enroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"key": '
        )
        sock.settimeout(30)
        data = sock.recv(4096)
        assert _status(data) == "408", data
        assert b"request body" in data
        sock.close()
        with pinned_http(srv) as http:  # the server is fine
            assert http.get("/v1/health").status_code == 200
        assert_no_traceback_in_server_log(srv)
    finally:
        srv.stop()


def test_unauthenticated_connections_are_capped_and_authenticated_ones_leave_the_pool(
    tmp_path: Path,
) -> None:
    srv = ServerProcess(
        tmp_path / "srv",
        args=["--max-unauthenticated-per-ip", "3", "--max-unauthenticated", "5"],
    ).start()
    try:
        token = srv.add_user("alice")
        # Three idle connections from one address fill its share; a fourth pushes out
        # the oldest (503), which then cannot send anything more.
        idle = [_connect(srv, "127.0.0.2") for _ in range(3)]
        time.sleep(0.3)
        fourth = _connect(srv, "127.0.0.2")
        idle[0].settimeout(10)
        assert _status(idle[0].recv(4096)) == "503"
        # A connection that authenticates leaves the pool: five authenticated
        # connections from 127.0.0.3 coexist with the others.
        authed = []
        for _ in range(5):
            s = _connect(srv, "127.0.0.3")
            assert _whoami(s, token) == "200"
            authed.append(s)
        # The total limit (5): idle[1], idle[2], fourth are 3; two more from elsewhere
        # fill it; the next pushes out the oldest of all (idle[1]).
        more = [_connect(srv, "127.0.0.4"), _connect(srv, "127.0.0.5")]
        time.sleep(0.3)
        last = _connect(srv, "127.0.0.6")
        idle[1].settimeout(10)
        assert _status(idle[1].recv(4096)) == "503"
        # The authenticated connections still work.
        for s in authed:
            assert _whoami(s, token) == "200"
        for s in [*idle, fourth, *authed, *more, last]:
            s.close()
        assert_no_traceback_in_server_log(srv)
    finally:
        srv.stop()


def test_settings_come_from_server_json_and_flags_and_bad_ones_are_refused(
    tmp_path: Path,
) -> None:
    srv = ServerProcess(tmp_path / "srv")
    srv.init()
    cfg_path = srv.data_dir / "server.json"
    cfg = json.loads(cfg_path.read_text())

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CRC_SERVER_RUN, "--data-dir", str(srv.data_dir), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    for settings, flag, part in [
        ({"max_header_bytes": "big"}, [], "max_header_bytes: expected a number"),
        ({"header_timeout": -1}, [], "header_timeout"),
        ({"no_such": 1}, [], "unknown setting(s) no_such"),
        ({}, ["--forwarded-allow-ips", "proxy.example"], "not an IP address"),
        ({}, ["--max-unauthenticated", "0"], "max_unauthenticated"),
        # Seconds: under one is a typo (milliseconds?), not a timeout any client can keep.
        ({}, ["--header-timeout", "0.5"], "header_timeout: expected at least 1 (seconds)"),
        ({}, ["--agent-silence-timeout", "0.001"], "agent_silence_timeout: expected at least"),
        ({"events_keepalive": 0.2}, [], "events_keepalive: expected at least 1 (seconds)"),
        ({}, ["--prune-interval", "0.9"], "prune_interval: expected at least 1 (seconds)"),
    ]:
        cfg_path.write_text(json.dumps({**cfg, "settings": settings}))
        out = run(*flag)
        assert out.returncode == 2, (settings, flag, out.stdout, out.stderr)
        assert part in out.stderr and "Traceback" not in out.stderr, out.stderr
    # From the file (header size), overridden by a flag (header timeout): both hold.
    cfg_path.write_text(
        json.dumps({**cfg, "settings": {"max_header_bytes": 2048, "header_timeout": 60}})
    )
    srv.args = ["--header-timeout", "1"]
    srv.start()
    try:
        with pinned_http(srv) as http:
            r = http.get("/v1/health", headers={"X-Pad": "p" * 4096})
            assert_error(r, 431, "headers_too_large")
        with _connect(srv) as s:
            s.settimeout(30)
            assert _status(s.recv(4096)) == "408"
    finally:
        srv.stop()


def test_forwarded_addresses_are_believed_only_from_configured_proxies(tmp_path: Path) -> None:
    def enrolled_from(srv: ServerProcess, token: str, group: str, xff: str) -> tuple[str, str]:
        c = Client(srv.url, token, srv.fingerprint)
        key = c.create_group(group, ["m"])["machines"][0]["key"]
        with pinned_http(srv) as http:
            http.headers["X-Forwarded-For"] = xff
            enroll(http, key)
        audit = [a for a in c.audit(group) if a["action"] == "machine.enroll"]
        public = c.group(group)["machines"][0]["public_ip"]
        c.close()
        return audit[0]["detail"]["peer_ip"], public

    # By default nothing is trusted, loopback included.
    srv = ServerProcess(tmp_path / "default").start()
    try:
        token = srv.add_user("alice")
        assert enrolled_from(srv, token, "a", "6.6.6.6") == ("127.0.0.1", "127.0.0.1")
        assert enrolled_from(srv, token, "b", "bank.example.com") == ("127.0.0.1", "127.0.0.1")
    finally:
        srv.stop()
    # Behind a configured proxy, its X-Forwarded-For is the client - if it is an address.
    srv = ServerProcess(tmp_path / "proxied", args=["--forwarded-allow-ips", "127.0.0.1"]).start()
    try:
        token = srv.add_user("alice")
        assert enrolled_from(srv, token, "a", "203.0.113.7") == ("203.0.113.7", "203.0.113.7")
        assert enrolled_from(srv, token, "b", "2001:db8::7") == ("2001:db8::7", "2001:db8::7")
        for i, bad in enumerate(
            ["bank.example.com", "fe80::1%eth0", "6.6.6.6 #", "$(touch /tmp/x)", "1.2.3.4.5"]
        ):
            peer = enrolled_from(srv, token, f"bad{i}", bad)
            assert peer == ("127.0.0.1", "127.0.0.1"), (bad, peer)
        assert_no_traceback_in_server_log(srv)
    finally:
        srv.stop()


def test_failed_enrollments_are_limited_per_address_and_logged_by_key_id(tmp_path: Path) -> None:
    import httpx

    from cloudremotecontrol.tlspin import client_context

    srv = ServerProcess(tmp_path / "srv", args=["--enroll-failures-per-minute", "3"]).start()
    try:
        token = srv.add_user("alice")
        c = Client(srv.url, token, srv.fingerprint)
        keys = [m["key"] for m in c.create_group("lab", ["a", "b"])["machines"]]
        c.close()
        ctx, _ = client_context(srv.url, srv.fingerprint)

        def http_from(source: str) -> httpx.Client:
            return httpx.Client(
                base_url=srv.url,
                verify=ctx,
                trust_env=False,
                transport=httpx.HTTPTransport(verify=ctx, local_address=source),
            )

        wrong = "_".join(keys[0].split("_", 2)[:2]) + "_" + "w" * 32
        with http_from("127.0.0.2") as http:
            for _ in range(3):
                assert_error(
                    http.post("/v1/agent/enroll", json={"key": wrong}), 401, "key_rejected"
                )
            # Past the limit even the right key waits: guessing cannot go on.
            r = http.post("/v1/agent/enroll", json={"key": keys[0]})
            assert_error(r, 429, "rate_limited", "too many failed enrollments")
            assert int(r.headers["Retry-After"]) > 0
        with http_from("127.0.0.3") as http:  # another address is not held back
            assert http.post("/v1/agent/enroll", json={"key": keys[1]}).status_code == 200
        log = srv.log_path.read_text()
        key_id = keys[0].split("_")[1]
        assert log.count(f"enrollment refused from 127.0.0.2, key id {key_id}") == 3, log
        assert "w" * 32 not in log and keys[0].split("_", 2)[2] not in log
        assert_no_traceback_in_server_log(srv)
    finally:
        srv.stop()


def _open_fds(server: ServerProcess) -> int:
    assert server.proc is not None
    return len(list(Path(f"/proc/{server.proc.pid}/fd").iterdir()))


def _silent_upgrade(server: ServerProcess, path: str, source: str) -> ssl.SSLSocket | None:
    """A WebSocket upgrade to ``path`` without a credential, from ``source``, that then
    says and reads nothing more (never answers a close frame, nor TLS's goodbye)."""
    try:
        sock = _connect(server, source)
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
    except OSError:
        return None
    return sock


def test_websockets_without_a_credential_count_until_authenticated_and_are_cut_when_refused(
    tmp_path: Path,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from wire_helpers import wire_agent

    from cloudremotecontrol.master.localrun import AgentProcess

    srv = ServerProcess(tmp_path / "srv").start()  # 64 per address, 512 in all
    agent: AgentProcess | None = None
    cleanup = contextlib.ExitStack()
    try:
        token = srv.add_user("alice")
        client = Client(srv.url, token, srv.fingerprint)
        names = [f"m{i}" for i in range(71)]
        keys = {m["name"]: m["key"] for m in client.create_group("g", names)["machines"]}
        with pinned_http(srv) as http:
            creds = {name: enroll(http, keys[name]) for name in names[:70]}
        time.sleep(1)
        baseline = _open_fds(srv)
        # One address opens 180 upgrades without a credential, more than twice its
        # share: to the agents' endpoint (accepted, then closed with 4401), a stream (a
        # 401 denial) and no WebSocket at all (403); none ever replies.
        paths = ["/v1/agent/connect", "/v1/streams/st_" + "a" * 22, "/v1/nowhere"] * 60
        with ThreadPoolExecutor(16) as pool:
            flood = list(pool.map(lambda p: _silent_upgrade(srv, p, "127.0.0.2"), paths))
        cleanup.callback(lambda: [sock.close() for sock in flood if sock is not None])
        opened = time.monotonic()
        # (1) Honest requests are served at once, from another address and from the
        # flooding one (a refused WebSocket is the first pushed out).
        for source in ("127.0.0.1", "127.0.0.2"):
            with _connect(srv, source) as s:
                t = time.monotonic()
                assert _whoami(s, token) == "200"
                assert time.monotonic() - t < 5
        with pinned_http(srv) as http:
            assert http.get("/v1/health").status_code == 200
        # (2) The refused WebSockets are not held: the server's open descriptors are
        # back near where they were within seconds (without the cut, each is held for
        # the close frame, 10 s, then TLS's goodbye, 30 s).
        fds = [_open_fds(srv)]
        while fds[-1] > baseline + 20 and time.monotonic() - opened < 8:
            time.sleep(0.25)
            fds.append(_open_fds(srv))
        assert fds[-1] <= baseline + 20, (baseline, fds)
        # The flood's own sockets were cut by the server (reset or end of stream).
        for sock in flood:
            if sock is None:
                continue
            sock.settimeout(5)
            with contextlib.suppress(OSError):
                while sock.recv(4096):
                    pass
            sock.close()
        # Every place they took was given back once: a full share of idle connections
        # from the flooding address fits, none pushed out (a place kept by a WebSocket
        # long gone would push out the oldest of them, with 503).
        idle = [_connect(srv, "127.0.0.2") for _ in range(64)]
        try:
            answered, _, _ = select.select(idle, [], [], 1.0)
            assert not answered, [s.recv(4096)[:12] for s in answered]
        finally:
            for sock in idle:
                sock.close()
        # (3) Authenticated WebSockets leave the pool: 70 agents from one address (over
        # its 64) all log in and stay, and a real agent still connects beside them.

        async def agents() -> None:
            async with contextlib.AsyncExitStack() as stack:
                for name in names[:70]:
                    await stack.enter_async_context(wire_agent(srv, creds[name], "g", name))
                assert _open_fds(srv) >= baseline + 70
                await asyncio.to_thread(real_agent)

        def real_agent() -> None:
            nonlocal agent
            agent = AgentProcess(tmp_path / "a", srv.url, keys["m70"], srv.fingerprint).start()
            deadline = time.monotonic() + 60
            while {m["name"]: m["state"] for m in client.group("g")["machines"]}["m70"] != "ready":
                assert time.monotonic() < deadline, agent.log()
                time.sleep(0.2)
            with pinned_http(srv) as http:
                assert http.get("/v1/health").status_code == 200

        asyncio.run(agents())
        assert client.run_wait("g", "m70", argv=["echo", "ok"]).results["m70"].status == (
            "succeeded"
        )
        client.close()
        assert_no_traceback_in_server_log(srv)
    finally:
        cleanup.close()
        if agent is not None:
            agent.stop()
        srv.stop()
