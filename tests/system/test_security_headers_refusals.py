"""The answers the server writes itself, before any application code runs
(server/httpguard.py), carry the same security headers as every other answer: 408 for a
request head that does not arrive in time, 503 for a connection pushed out of the pool
of unauthenticated ones or refused because that pool is busy. Raw HTTP/1.1 over the real
server's TLS (test_security_headers_everywhere.py covers 400, 413 and 431). So do the
refusals of a WebSocket handshake, written by the WebSocket library (server/wsprotocol.py)."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from wire_helpers import assert_no_traceback_in_server_log

from cloudremotecontrol.master.localrun import ServerProcess
from cloudremotecontrol.server.secheaders import HEADERS
from cloudremotecontrol.server.wsprotocol import AGENT_PATH
from cloudremotecontrol.tlspin import client_context

SECURITY = {k.decode(): v.decode() for k, v in HEADERS}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # One connection without a credential per address; an idle kept-alive connection
    # stays (so only the server's decisions under test end one).
    srv = ServerProcess(
        Path(tmp_path_factory.mktemp("refusals")) / "srv",
        args=[
            "--header-timeout",
            "3",
            "--max-unauthenticated-per-ip",
            "1",
            "--keepalive-timeout",
            "120",
        ],
    ).start()
    yield srv
    srv.stop()


def _connect(server: ServerProcess, source: str) -> ssl.SSLSocket:
    ctx, _ = client_context(server.url, server.fingerprint)
    assert isinstance(ctx, ssl.SSLContext)
    raw = socket.create_connection(
        ("127.0.0.1", server.port), timeout=60, source_address=(source, 0)
    )
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def _read_head(sock: ssl.SSLSocket, buf: bytes = b"") -> tuple[bytes, bytes]:
    """A response's head (up to its blank line) and what came after it."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        assert data, f"closed before a whole answer: {buf!r}"
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _read_answer(sock: ssl.SSLSocket) -> tuple[int, dict[str, list[str]], bytes]:
    """One whole answer (its body by Content-Length): status, headers, body."""
    head, body = _read_head(sock)
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), head
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    length = int(headers["content-length"][0])
    while len(body) < length:
        data = sock.recv(65536)
        assert data, f"closed within the body: {head!r} {body!r}"
        body += data
    return int(lines[0].split()[1]), headers, body[:length]


def _assert_refusal(
    what: str, answer: tuple[int, dict[str, list[str]], bytes], status: int, code: str
) -> None:
    got, headers, body = answer
    assert got == status, (what, got, body)
    for name, value in SECURITY.items():
        assert headers.get(name) == [value], (what, name, headers)
    assert json.loads(body)["error"]["code"] == code, (what, body)
    assert headers["connection"] == ["close"], (what, headers)


def test_a_request_head_that_does_not_arrive_in_time_gets_408_with_the_headers(
    server: ServerProcess,
) -> None:
    with _connect(server, "127.0.0.2") as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        _assert_refusal("slow head", _read_answer(sock), 408, "timeout")
    assert_no_traceback_in_server_log(server)


def test_a_connection_pushed_out_of_the_pool_gets_503_with_the_headers(
    server: ServerProcess,
) -> None:
    with _connect(server, "127.0.0.3") as first:
        # A request without a credential, answered: the connection is in the pool,
        # waiting for its next request.
        first.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert _read_answer(first)[0] == 200
        # The address's one place is taken: a newer connection pushes this one out.
        with _connect(server, "127.0.0.3"):
            _assert_refusal("pushed out", _read_answer(first), 503, "unavailable")
    assert_no_traceback_in_server_log(server)


def test_a_connection_refused_while_the_pool_is_busy_gets_503_with_the_headers(
    server: ServerProcess,
) -> None:
    with _connect(server, "127.0.0.4") as busy:
        # A request whose body is awaited (the server asked for it: 100 Continue) is
        # busy: it is not pushed out, and the next connection has no place.
        busy.sendall(
            b"POST /v1/agent/enroll HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        head, _ = _read_head(busy)
        assert head.startswith(b"HTTP/1.1 100 "), head
        with _connect(server, "127.0.0.4") as refused:
            _assert_refusal("refused", _read_answer(refused), 503, "unavailable")
    assert_no_traceback_in_server_log(server)


def test_a_refused_websocket_handshake_carries_the_headers(server: ServerProcess) -> None:
    upgrade = (
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    )
    cases = [
        ("no key", AGENT_PATH, upgrade.split("Sec-WebSocket-Key")[0], 400, "Sec-WebSocket-Key"),
        (
            "bad version",
            AGENT_PATH,
            upgrade.replace("Version: 13", "Version: 99"),
            400,
            "Sec-WebSocket-Version",
        ),
        (
            "no Connection: Upgrade",
            AGENT_PATH,
            upgrade.replace("Connection: Upgrade", "Connection: keep-alive"),
            426,
            "Connection",
        ),
        ("no such WebSocket", "/v1/nowhere", upgrade, 403, "no WebSocket at this path"),
        ("a page asked for a WebSocket", "/dashboard/", upgrade, 403, "no WebSocket"),
    ]
    for what, path, headers_sent, status, said in cases:
        with _connect(server, "127.0.0.5") as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers_sent}\r\n".encode())
            got, headers, body = _read_answer(sock)
        assert got == status, (what, got, body)
        for name, value in SECURITY.items():
            assert headers.get(name) == [value], (what, name, headers)
        # The API's error shape, as every other refusal: one line that says why.
        assert headers["content-type"] == ["application/json"], (what, headers)
        error = json.loads(body)["error"]
        codes = {400: "invalid_input", 403: "forbidden", 426: "upgrade_required"}
        assert error["code"] == codes[status], (what, body)
        assert said in error["message"] and "\n" not in error["message"], (what, body)
    assert_no_traceback_in_server_log(server)
