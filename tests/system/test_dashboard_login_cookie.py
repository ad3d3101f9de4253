"""The login form's double-submit token travels in a ``__Host-`` cookie, as the session
does (Secure, Path=/, no Domain: no subdomain and no plain-HTTP page of the host can
plant a value it knows), in a real Chromium over HTTPS and over plain HTTP on loopback
(`--insecure`). It is gone once the browser has logged in, and a browser still holding
the cookie of the old name (``crc_login``, from a form rendered before) is told the form
expired and logs in at the next try."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect
from test_insecure import plain_server  # noqa: F401 -- fixture: `crc server run --insecure`

from browser import Browser
from cloudremotecontrol.server.dashboard.sessions import COOKIE

LOGIN = "__Host-crc_login"
OLD = "crc_login"


def _cookies(browser: Browser, name: str) -> list[dict[str, Any]]:
    return [c for c in browser.context.cookies() if c["name"] == name]


def _assert_host_cookie(cookie: dict[str, Any], host: str) -> None:
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
    assert cookie["path"] == "/" and cookie["domain"] == host, cookie  # host-only


def _log_in_through_the_form(browser: Browser, url: str, host: str, token: str) -> None:
    page = browser.page()
    page.goto(url + "/dashboard/")  # no session: the login form
    expect(page.locator("#token")).to_be_visible()
    [login] = _cookies(browser, LOGIN)
    _assert_host_cookie(login, host)
    page.fill("#token", token)
    page.click("#login")  # the browser sends the __Host- cookie back: accepted
    expect(page.locator("#who")).to_have_text("alice")
    assert _cookies(browser, LOGIN) == []  # its deletion was taken too
    [session] = _cookies(browser, COOKIE)
    _assert_host_cookie(session, host)


def test_over_https_the_login_form_token_is_a_host_cookie_gone_after_login(env, browser):
    _log_in_through_the_form(browser, env.server.url, "127.0.0.1", env.token)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_over_plain_http_on_loopback_chromium_keeps_and_sends_the_login_host_cookie(
    plain_server,  # noqa: F811 -- the fixture imported above
    playwright_driver,
    tmp_path: Path,
    host: str,
):
    url, token, _ = plain_server
    browser = Browser(playwright_driver, tmp_path / "chromium-profile", [])
    try:
        _log_in_through_the_form(browser, url.replace("127.0.0.1", host), host, token)
    finally:
        browser.close()


def test_a_browser_holding_the_old_login_cookie_logs_in_at_the_next_try(env, browser):
    url = env.server.url
    page = browser.page()
    page.goto(url + "/dashboard/login")
    # What a browser has from a form rendered under the old name: the form's token in
    # a cookie `crc_login` for /dashboard/login, and no __Host- one.
    stale = page.locator("input[name=form_token]").get_attribute("value")
    assert stale
    browser.context.clear_cookies()
    browser.context.add_cookies(
        [
            {
                "name": OLD,
                "value": stale,
                "domain": "127.0.0.1",
                "path": "/dashboard/login",
                "httpOnly": True,
                "secure": True,
                "sameSite": "Strict",
            }
        ]
    )
    page.fill("#token", env.token)
    page.click("#login")
    expect(page.locator("#login-error")).to_contain_text("the form expired")
    assert _cookies(browser, OLD) == []  # dropped with the new form
    [login] = _cookies(browser, LOGIN)
    _assert_host_cookie(login, "127.0.0.1")
    page.fill("#token", env.token)
    page.click("#login")
    expect(page.locator("#who")).to_have_text("alice")
    assert _cookies(browser, LOGIN) == [] and len(_cookies(browser, COOKIE)) == 1
