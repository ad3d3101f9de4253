"""Every answer of the server carries the dashboard's security headers (CSP, nosniff, no
framing, Referrer-Policy), including answers given before any route runs: a NUL in the
URL, a body over the limit, a header section too large, a request that is not HTTP.
Raw HTTP/1.1 over the real server's TLS, so nothing in between adds or drops a header."""

from __future__ import annotations

import socket
import ssl

from wire_helpers import assert_no_traceback_in_server_log

from cloudremotecontrol.server.secheaders import CSP
from cloudremotecontrol.tlspin import client_context

SECURITY = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
}


def _raw(server, request: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """Send ``request`` as is on a new TLS connection; the status, headers and body of
    the answer (read until the server closes)."""
    ctx, _ = client_context(server.url, server.fingerprint)
    assert isinstance(ctx, ssl.SSLContext)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            try:
                sock.sendall(request)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                pass  # refused while still sending: the answer is there to read
            data = b""
            while True:
                try:
                    chunk = sock.recv(65536)
                except (ConnectionResetError, ssl.SSLError):
                    break
                if not chunk:
                    break
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), data[:500]
    headers = [(k.strip().lower(), v.strip()) for k, v in (ln.split(":", 1) for ln in lines[1:])]
    return int(lines[0].split()[1]), headers, body


def _get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n".encode()


def _assert_secured(what: str, headers: list[tuple[str, str]], csp: str = CSP) -> None:
    for name, value in {**SECURITY, "content-security-policy": csp}.items():
        found = [v for k, v in headers if k == name]
        assert found == [value], f"{what}: {name}: {found} in {headers}"


def test_answers_given_before_any_route_carry_the_security_headers(server):
    big = "x" * (70 << 10)
    cases = [
        ("NUL in a dashboard path", _get("/dashboard/%00"), 400),
        ("NUL in a dashboard query", _get("/dashboard/groups/x?next=%00"), 400),
        ("NUL in an API path", _get("/v1/groups/%00"), 400),
        (
            "body over the limit",
            (
                "POST /dashboard/login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                f"Content-Length: {(1 << 20) + 1}\r\nConnection: close\r\n\r\n"
            ).encode(),
            413,
        ),
        ("header section too large", _get("/dashboard/", f"X-Big: {big}\r\n"), 431),
        ("not HTTP", b"GET /dashboard/ HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon here\r\n\r\n", 400),
        ("no route", _get("/dashboard/nowhere"), 404),
        ("no API route", _get("/v1/nowhere"), 404),
        ("an API answer", _get("/v1/health"), 200),
        ("the root", _get("/"), 307),
        ("a page", _get("/dashboard/login"), 200),
        ("an asset", _get("/dashboard/static/dashboard.js"), 200),
    ]
    for what, request, status in cases:
        got, headers, body = _raw(server, request)
        assert got == status, f"{what}: {got} {body[:300]!r}"
        _assert_secured(what, headers)
        if got >= 400:
            assert b"Traceback" not in body and body.startswith(b'{"error"'), (what, body)
    assert_no_traceback_in_server_log(server)


def test_a_page_with_a_policy_of_its_own_keeps_only_that_one(server):
    status, headers, _ = _raw(server, _get("/v1/docs"))
    assert status == 200
    csps = [v for k, v in headers if k == "content-security-policy"]
    assert len(csps) == 1 and "script-src 'self' 'sha256-" in csps[0], headers
    assert "frame-ancestors 'none'" in csps[0] and "http" not in csps[0]
    _assert_secured("/v1/docs", headers, csp=csps[0])
