"""A login in a browser that already has a session ends that session on the server: the
old cookie is refused afterwards (over real HTTPS, and in a real Chromium), while a
cookie that names no live session (made up, or already ended) ends nothing."""

from __future__ import annotations

from playwright.sync_api import expect
from test_dashboard_browser import login
from wire_helpers import assert_error, assert_no_traceback_in_server_log, bearer, pinned_http

from cloudremotecontrol.server.dashboard.sessions import COOKIE


def _login(http, token: str, presented: str | None) -> str:
    """Log in through the form with ``presented`` as this browser's session cookie."""
    form_token = http.get("/dashboard/login").cookies["__Host-crc_login"]
    cookies = f"__Host-crc_login={form_token}" + (f"; {COOKIE}={presented}" if presented else "")
    r = http.post(
        "/dashboard/login",
        data={"token": token, "form_token": form_token},
        headers={"Cookie": cookies},
    )
    assert r.status_code == 303, r.text
    return r.cookies[COOKIE]


def _whoami(http, cookie: str):
    return http.get("/v1/whoami", headers={"Cookie": f"{COOKIE}={cookie}"})


def test_a_second_login_in_the_same_browser_ends_the_first_session(server):
    alice = server.add_user("alice")
    bob = server.add_user("bob")
    with pinned_http(server) as http:
        http.cookies.clear()
        first = _login(http, alice, None)
        assert _whoami(http, first).json()["user"] == "alice"
        second = _login(http, alice, first)
        assert second != first
        assert_error(_whoami(http, first), 401, "unauthorized", "log in again")
        assert _whoami(http, second).json()["user"] == "alice"
        # Another user logging in on this browser ends alice's session too.
        third = _login(http, bob, second)
        assert_error(_whoami(http, second), 401, "unauthorized")
        assert _whoami(http, third).json()["user"] == "bob"
        # A cookie of no live session (ended, made up, malformed) ends nothing and is
        # no obstacle to logging in.
        for stale in (first, "crcs_0123456789abcdef_" + "x" * 32, "<b>", "x" * 300):
            fresh = _login(http, alice, stale)
            assert _whoami(http, fresh).status_code == 200
            assert _whoami(http, third).json()["user"] == "bob"
        # A failed login ends nothing either.
        form_token = http.get("/dashboard/login").cookies["__Host-crc_login"]
        r = http.post(
            "/dashboard/login",
            data={"token": "crcm_nope", "form_token": form_token},
            headers={"Cookie": f"__Host-crc_login={form_token}; {COOKIE}={third}"},
        )
        assert r.status_code == 401
        assert _whoami(http, third).json()["user"] == "bob"
        audit = http.get("/v1/audit", headers={"Authorization": bearer(alice)}).json()
        ended = [a for a in audit["records"] if a["action"] == "dashboard.logout"]
        assert ended and ended[0]["detail"] == {"reason": "new login"}, ended
    assert_no_traceback_in_server_log(server)


def test_logging_in_again_in_chromium_makes_the_old_cookie_worthless(env, browser):
    page = login(browser, env.server, env.token)
    old = next(c["value"] for c in browser.context.cookies() if c["name"] == COOKIE)
    page.goto(env.server.url + "/dashboard/login")
    page.fill("#token", env.token)
    page.click("#login")
    expect(page.locator("#who")).to_be_visible()
    new = next(c["value"] for c in browser.context.cookies() if c["name"] == COOKIE)
    assert new != old
    with pinned_http(env.server) as http:
        assert_error(_whoami(http, old), 401, "unauthorized")
        assert _whoami(http, new).status_code == 200
    page.reload()
    expect(page.locator("#who")).to_be_visible()  # the browser's own session lives on
