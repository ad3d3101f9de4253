"""Failed dashboard logins are limited per source address and logged by token id: past
``--login-failures-per-minute`` every login from that address (the right token too) is
answered 429 with Retry-After and the login form saying why, while another address
logs in; the secret part of a wrong token never reaches the log."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import httpx
from wire_helpers import assert_no_traceback_in_server_log

from cloudremotecontrol.master.localrun import ServerProcess
from cloudremotecontrol.server.dashboard.sessions import COOKIE
from cloudremotecontrol.tlspin import client_context


def _login(http: httpx.Client, token: str) -> httpx.Response:
    """One login through the form, as a browser posts it (its form token included)."""
    http.cookies.clear()
    form = http.get("/dashboard/login")
    assert form.status_code == 200, form.text
    found = re.search(r'name="form_token" value="([^"]+)"', form.text)
    assert found, form.text
    return http.post(
        "/dashboard/login",
        data={"token": token, "form_token": found.group(1), "next": "/dashboard/"},
    )


def test_failed_logins_are_limited_per_address_and_logged_by_token_id(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "srv", args=["--login-failures-per-minute", "3"]).start()
    try:
        token = srv.add_user("alice")
        ctx, _ = client_context(srv.url, srv.fingerprint)

        def http_from(source: str) -> httpx.Client:
            return httpx.Client(
                base_url=srv.url,
                verify=ctx,
                trust_env=False,
                transport=httpx.HTTPTransport(verify=ctx, local_address=source),
            )

        token_id = token.split("_")[1]
        wrong = f"crcm_{token_id}_" + "w" * 32
        with http_from("127.0.0.2") as http:
            for _ in range(3):
                r = _login(http, wrong)
                assert r.status_code == 401, r.text
                assert "unknown or revoked master token" in r.text
            # Past the limit even the right token waits: guessing cannot go on.
            r = _login(http, token)
            assert r.status_code == 429, r.text
            assert int(r.headers["Retry-After"]) > 0
            assert COOKIE not in r.cookies
            assert 'id="login-error"' in r.text
            assert "too many failed logins from this address: try again in" in r.text
            assert 'id="token"' in r.text  # the form again, to try later
        with http_from("127.0.0.3") as http:  # another address is not held back
            r = _login(http, token)
            assert r.status_code == 303, r.text
            assert r.cookies.get(COOKIE)
        log = srv.log_path.read_text()
        refused = f"dashboard login refused from 127.0.0.2: id {token_id} is no live master token"
        assert log.count(refused) == 3, log
        assert "w" * 32 not in log and token.split("_", 2)[2] not in log
        assert_no_traceback_in_server_log(srv)
    finally:
        srv.stop()


def test_a_burst_of_concurrent_failed_logins_from_one_address_passes_the_limit_no_further(
    tmp_path: Path,
) -> None:
    """The limit is checked and counted at once: logins from one address arriving
    together are taken up to the limit, the rest are answered 429 without being tried."""
    limit, burst = 3, 16
    srv = ServerProcess(tmp_path / "srv", args=["--login-failures-per-minute", str(limit)]).start()
    try:
        token = srv.add_user("alice")
        token_id = token.split("_")[1]
        wrong = f"crcm_{token_id}_" + "w" * 32
        ctx, _ = client_context(srv.url, srv.fingerprint)
        clients = [
            httpx.Client(
                base_url=srv.url,
                verify=ctx,
                trust_env=False,
                timeout=60,
                transport=httpx.HTTPTransport(verify=ctx, local_address="127.0.0.2"),
            )
            for _ in range(burst)
        ]
        forms = []
        for http in clients:  # each a browser with its form loaded and connected
            form = http.get("/dashboard/login")
            found = re.search(r'name="form_token" value="([^"]+)"', form.text)
            assert found, form.text
            forms.append(found.group(1))
        start = threading.Barrier(burst)
        statuses: list[int] = []

        def post(http: httpx.Client, form_token: str) -> None:
            start.wait()
            r = http.post(
                "/dashboard/login",
                data={"token": wrong, "form_token": form_token, "next": "/dashboard/"},
            )
            statuses.append(r.status_code)

        threads = [
            threading.Thread(target=post, args=pair) for pair in zip(clients, forms, strict=True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for http in clients:
            http.close()
        assert sorted(statuses) == [401] * limit + [429] * (burst - limit), statuses
        log = srv.log_path.read_text()
        assert log.count("dashboard login refused from 127.0.0.2") == limit, log
        assert_no_traceback_in_server_log(srv)
    finally:
        srv.stop()


def test_logins_slow_to_send_their_form_hold_no_place(tmp_path: Path) -> None:
    """A login is counted once its form is in: connections that send the headers of a
    login and keep its form coming (a slow client, or one doing it on purpose) do not
    take the places of the address's logins."""
    import socket
    import ssl

    limit = 3
    srv = ServerProcess(tmp_path / "srv", args=["--login-failures-per-minute", str(limit)]).start()
    slow: list[ssl.SSLSocket] = []
    try:
        token = srv.add_user("alice")
        token_id = token.split("_")[1]
        ctx, _ = client_context(srv.url, srv.fingerprint)
        host, port = srv.url.removeprefix("https://").rsplit(":", 1)
        for _ in range(limit + 2):
            raw = socket.create_connection((host, int(port)), source_address=("127.0.0.2", 0))
            conn = ctx.wrap_socket(raw, server_hostname=host)
            conn.sendall(
                b"POST /dashboard/login HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\n"
                b"Content-Length: 200\r\n\r\ntoken=crcm_"
            )
            slow.append(conn)
        with httpx.Client(
            base_url=srv.url,
            verify=ctx,
            trust_env=False,
            transport=httpx.HTTPTransport(verify=ctx, local_address="127.0.0.2"),
        ) as http:
            r = _login(http, f"crcm_{token_id}_" + "w" * 32)
            assert r.status_code == 401, r.text  # tried, not 429
            r = _login(http, token)
            assert r.status_code == 303, r.text
            assert COOKIE in r.cookies
        assert_no_traceback_in_server_log(srv)
    finally:
        for conn in slow:
            conn.close()
        srv.stop()
