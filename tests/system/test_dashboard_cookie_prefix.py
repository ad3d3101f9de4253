"""The session cookie is a ``__Host-`` cookie (Secure, Path=/, no Domain: no subdomain
and no plain-HTTP page can set or shadow it), and a real Chromium keeps it, sends it and
drops it at logout both over HTTPS and over plain HTTP on loopback (`--insecure`), at
127.0.0.1 and at localhost."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect
from test_dashboard_browser import login
from test_insecure import plain_server  # noqa: F401 -- fixture: `crc server run --insecure`
from wire_helpers import pinned_http

from browser import Browser
from cloudremotecontrol.server.dashboard.sessions import COOKIE


def _session_cookies(browser: Browser) -> list[dict[str, Any]]:
    return [c for c in browser.context.cookies() if c["name"].endswith("crc_session")]


def _assert_host_cookie(cookie: dict[str, Any], host: str) -> None:
    assert cookie["name"] == "__Host-crc_session" == COOKIE
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/" and cookie["domain"] == host  # host-only: no Domain


def test_over_https_the_session_cookie_is_a_host_cookie(env, browser):
    with pinned_http(env.server) as http:
        form_token = http.get("/dashboard/login").cookies["__Host-crc_login"]
        r = http.post("/dashboard/login", data={"token": env.token, "form_token": form_token})
        assert r.status_code == 303
        header = next(v.lower() for k, v in r.headers.multi_items() if v.startswith(f"{COOKIE}="))
        assert "; secure" in header and "; path=/" in header and "domain=" not in header
    page = login(browser, env.server, env.token)
    [cookie] = _session_cookies(browser)
    _assert_host_cookie(cookie, "127.0.0.1")
    page.reload()
    expect(page.locator("#who")).to_be_visible()  # sent back
    page.click("#logout")
    expect(page.locator("#token")).to_be_visible()
    assert _session_cookies(browser) == []  # the deletion was taken too


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_over_plain_http_on_loopback_chromium_keeps_and_drops_the_host_cookie(
    plain_server,  # noqa: F811 -- the fixture imported above
    playwright_driver,
    tmp_path: Path,
    host: str,
):
    url, token, _ = plain_server
    url = url.replace("127.0.0.1", host)
    browser = Browser(playwright_driver, tmp_path / "chromium-profile", [])
    try:
        page = browser.page()
        page.goto(url + "/dashboard/")
        page.fill("#token", token)
        page.click("#login")
        expect(page.locator("#who")).to_have_text("alice")
        [cookie] = _session_cookies(browser)
        _assert_host_cookie(cookie, host)
        page.goto(url + "/dashboard/")
        expect(page.locator("#who")).to_have_text("alice")  # sent back over plain HTTP
        page.click("#logout")
        expect(page.locator("#token")).to_be_visible()
        assert _session_cookies(browser) == []
        # And the session ended on the server: its cookie is refused.
        req = urllib.request.Request(
            url + "/v1/whoami", headers={"Cookie": f"{COOKIE}={cookie['value']}"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=10)
        refused.value.close()
        assert refused.value.code == 401
    finally:
        browser.close()
