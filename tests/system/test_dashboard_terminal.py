"""A terminal in the dashboard: xterm.js in a real headless Chromium over `crc shell`'s
stream to a real Linux agent, opened with the session cookie (no token in the page).
The stream's WebSocket takes the cookie only from the dashboard's own origin, only for
the user who opened the stream, and only once."""

from __future__ import annotations

import asyncio
import http.server
import json
import socketserver
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect
from test_authorization import session_of
from test_dashboard_browser import login, row
from wire_helpers import pinned_http

from cloudremotecontrol.server.dashboard import CSP

LINES = """() => {
  const b = window.crcTerminal.buffer.active;
  const out = [];
  for (let i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true));
  return out;
}"""


def screen(page: Any) -> list[str]:
    return [line.strip() for line in page.evaluate(LINES)]


def wait_line(page: Any, text: str, timeout: float = 30.0) -> None:
    """Wait until a line of the terminal's buffer is exactly ``text``."""
    page.wait_for_function(
        f"() => ({LINES})().some((l) => l.trim() === {json.dumps(text)})",
        timeout=timeout * 1000,
    )


def type_line(page: Any, text: str) -> None:
    page.locator("#terminal .xterm-helper-textarea").focus()
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def test_a_shell_in_the_page_types_resizes_shows_text_and_exits_with_the_code(env, browser):
    agents = env.group_with_agents("lab", ["a"])
    page = login(browser, env.server, env.token, "/dashboard/groups/lab")
    button = row(page, "a").locator("button.term")
    expect(button).to_have_text("Terminal")
    with page.expect_navigation():
        button.click()
    assert page.url.endswith("/dashboard/groups/lab/machines/a/terminal")
    expect(page.locator("#term-status")).to_have_text("connected to a", timeout=30_000)

    type_line(page, "echo $((6*7))")
    wait_line(page, "42", timeout=90)  # the machine's login shell runs its profile first

    # The terminal follows the page's size: a smaller window, a smaller remote terminal.
    before = page.evaluate("[window.crcTerminal.cols, window.crcTerminal.rows]")
    page.set_viewport_size({"width": 700, "height": 600})
    page.wait_for_function(
        f"() => window.crcTerminal.cols < {before[0]} && window.crcTerminal.rows < {before[1]}"
    )
    cols, rows = page.evaluate("[window.crcTerminal.cols, window.crcTerminal.rows]")
    type_line(page, "stty size")
    wait_line(page, f"{rows} {cols}")

    # Machine output with markup is terminal text: shown literally, nothing runs or lands.
    type_line(
        page,
        "printf '%s%s\\n' '<img src=x onerror=window.__xss=1>' '<script>window.__xss=2</script>'",
    )
    wait_line(page, "<img src=x onerror=window.__xss=1><script>window.__xss=2</script>")
    expect(page.locator("#terminal .xterm-rows")).to_contain_text("<script>window.__xss=2")
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.locator("#terminal img, #terminal script").count() == 0

    type_line(page, "exit 3")
    expect(page.locator("#term-status")).to_have_text("exited with code 3", timeout=30_000)
    assert page.locator("#term-status").get_attribute("data-exit") == "3"
    wait_line(page, "[exited with code 3]")
    expect(page.locator("#term-open")).to_be_visible()

    # The page's policy: the dashboard's, with a nonce for xterm.js's style elements only;
    # nothing was refused (a refused style would leave the terminal unmeasured).
    resp = page.reload()
    assert resp is not None
    policy = resp.headers["content-security-policy"]
    assert policy.startswith(CSP.split("style-src")[0]) and "'unsafe-inline'" not in policy
    assert "style-src 'self' 'nonce-" in policy and "script-src 'self';" in policy
    expect(page.locator("#term-status")).to_have_text("connected to a", timeout=30_000)
    assert not [m for m in browser.messages(page) if "Refused" in m or m.startswith("error")]

    # The machine's agent dies mid-session: the page says why the session ended.
    agents["a"].kill()
    expect(page.locator("#term-status")).to_have_text(
        "machine_disconnected: machine a closed the session before its program ended "
        "(its agent stopped or lost its connection to the server)",
        timeout=30_000,
    )
    expect(page.locator("#term-open")).to_be_visible()

    # The session is in the group's sessions like a `crc shell` one, exit code and all.
    with pinned_http(env.server) as c:
        r = c.get("/v1/groups/lab/sessions", headers={"Authorization": f"Bearer {env.token}"})
    codes = [s.get("exit_code") for s in r.json()["sessions"]]
    assert 3 in codes, r.json()


def test_a_group_without_shells_says_so_and_offers_no_terminal(env, browser):
    env.client.create_group("locked", ["m"], settings={"no_shell": True, "no_forward": True})
    page = login(browser, env.server, env.token, "/dashboard/groups/locked/machines/m/terminal")
    expect(page.locator("#terminal-off")).to_contain_text("--no-shell")
    expect(page.locator("#forward-off")).to_contain_text("--no-forward")
    assert page.locator("#terminal").count() == 0
    # Another user's group or a missing machine: not found, as in the API.
    page.goto(env.server.url + "/dashboard/groups/locked/machines/nope/terminal")
    expect(page.locator("#error-message")).to_contain_text("no machine 'nope'")


def test_forwards_are_offered_as_the_crc_forward_command(env, browser):
    env.client.create_group("lab", ["web"])
    page = login(browser, env.server, env.token, "/dashboard/groups/lab/machines/web/terminal")
    expect(page.locator("#forward-cmd")).to_have_text("crc forward lab web 8080:80")


# -- the stream's WebSocket with a cookie ---------------------------------------------


def _ws(server: Any, path: str, headers: dict[str, str]) -> Any:
    from websockets.asyncio.client import connect

    from cloudremotecontrol.tlspin import client_context

    ctx, _ = client_context(server.url, server.fingerprint)
    url = "wss://" + server.url.split("://", 1)[1].rstrip("/") + path
    return connect(url, ssl=ctx, additional_headers=headers, compression=None, open_timeout=15)


async def _refused(server: Any, path: str, headers: dict[str, str]) -> tuple[int, str]:
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as exc:
        async with _ws(server, path, headers):
            pass
    body = json.loads(exc.value.response.body or b"{}")
    return exc.value.response.status_code, body["error"]["code"]


def _open(server: Any, cookie: str, csrf: str | None) -> Any:
    headers = {"Cookie": f"__Host-crc_session={cookie}", "Origin": server.url.rstrip("/")}
    if csrf is not None:
        headers["X-CSRF-Token"] = csrf
    with pinned_http(server) as c:
        # `sh` reads no login scripts: the test depends on nothing the host's profile does.
        body = {"machine": "a", "kind": "shell", "argv": ["sh"]}
        return c.post("/v1/groups/lab/streams", json=body, headers=headers)


def test_the_stream_websocket_takes_a_cookie_only_from_its_origin_and_user(env):
    env.group_with_agents("lab", ["a"])
    alice, alice_csrf = session_of(env.server, env.token)
    bob, _ = session_of(env.server, env.server.add_user("bob"))
    origin = env.server.url.rstrip("/")

    # The POST that makes the ticket is a state change: no CSRF token, no stream.
    r = _open(env.server, alice, None)
    assert r.status_code == 403 and r.json()["error"]["code"] == "csrf", r.text
    r = _open(env.server, alice, alice_csrf)
    assert r.status_code == 201, r.text
    path = f"/v1/streams/{r.json()['stream']}"

    async def scenario() -> None:
        jar = {"Cookie": f"__Host-crc_session={alice}"}
        # Cross-site WebSocket hijacking: the cookie without the dashboard's Origin.
        assert await _refused(env.server, path, jar) == (403, "csrf")
        for evil in ("https://evil.example", "null", origin + ".evil.example", "http" + origin[5:]):
            assert await _refused(env.server, path, {**jar, "Origin": evil}) == (403, "csrf")
        # Another user's session, from the right origin: not found (it is not theirs).
        bobs = {"Cookie": f"__Host-crc_session={bob}", "Origin": origin}
        assert await _refused(env.server, path, bobs) == (404, "not_found")
        # No credential at all; a cookie that is no session.
        assert await _refused(env.server, path, {"Origin": origin}) == (401, "unauthorized")
        forged = {"Cookie": "__Host-crc_session=crcs_x_y", "Origin": origin}
        assert (await _refused(env.server, path, forged))[0] == 401
        # None of that used the stream up: alice, from the dashboard's origin, gets it.
        async with _ws(env.server, path, {**jar, "Origin": origin}) as ws:
            await ws.send(b"echo $((6*7)); exit 3\n")
            seen = b""
            while True:
                msg = await asyncio.wait_for(ws.recv(), 30)
                if isinstance(msg, str):
                    control = json.loads(msg)
                    assert control == {"type": "stream.exit", "code": 3}, control
                    break
                seen += msg
            assert b"42\r\n" in seen, seen  # the output (the echoed command has no 42)
        # The id was a single-use ticket.
        assert await _refused(env.server, path, {**jar, "Origin": origin}) == (404, "not_found")

    asyncio.run(scenario())


class _EvilSite:
    """A page of another origin (plain HTTP on loopback) that tries the stream."""

    def __init__(self) -> None:
        page = b"<!doctype html><title>evil</title><p>hello</p>"

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = socketserver.TCPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://localhost:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def evil_site() -> Iterator[_EvilSite]:
    site = _EvilSite()
    yield site
    site.close()


TRY_WS = """async (url) => new Promise((resolve) => {
  const ws = new WebSocket(url);
  ws.onopen = () => { ws.close(); resolve("open"); };
  ws.onerror = () => resolve("refused");
})"""


def test_another_sites_page_cannot_open_the_stream_in_a_browser(env, browser, evil_site):
    env.group_with_agents("lab", ["a"])
    page = login(browser, env.server, env.token, "/dashboard/groups/lab")
    stream = page.evaluate(
        """async () => {
          const csrf = document.querySelector('meta[name="crc-csrf"]').content;
          const r = await fetch("/v1/groups/lab/streams", {method: "POST",
            headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
            body: JSON.stringify({machine: "a", kind: "shell", argv: ["sh", "-c", "sleep 60"]})});
          return (await r.json()).stream;
        }"""
    )
    url = "wss://" + env.server.url.split("://", 1)[1].rstrip("/") + f"/v1/streams/{stream}"
    evil = browser.page()
    evil.goto(evil_site.url)
    assert evil.evaluate(TRY_WS, url) == "refused"
    # The same stream from the dashboard's own page opens: the refusal was the origin's.
    assert page.evaluate(TRY_WS, url) == "open"
