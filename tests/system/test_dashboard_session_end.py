"""A live page whose session ends (the master token revoked, a logout in another tab)
does not go on saying "reconnecting…" for ever: it sends the browser to the login form,
which brings it back to the page, in a real Chromium (tests/browser.py)."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect
from test_dashboard_browser import login
from wire_helpers import assert_no_traceback_in_server_log


@pytest.mark.parametrize("how", ["token revoked", "logged out in another tab"])
def test_a_live_page_whose_session_ends_goes_to_the_login_form(env, browser, how):
    env.client.create_group("lab", ["a"])
    laptop = env.server.admin("add-token", "alice", "laptop")["token"]
    page = login(browser, env.server, laptop, "/dashboard/groups/lab")
    expect(page.locator("#live-text")).to_have_text("live")
    if how == "token revoked":
        env.server.admin("revoke-token", "alice", "laptop")
    else:
        other = browser.page()
        other.goto(env.server.url + "/dashboard/")
        other.click("#logout")
        expect(other.locator("#token")).to_be_visible()
    # The event stream is cut (or its next reconnection refused): the page notices.
    expect(page.locator("#token")).to_be_visible(timeout=30_000)
    assert "next=%2Fdashboard%2Fgroups%2Flab" in page.url
    page.fill("#token", env.token)
    page.click("#login")
    expect(page.locator("#live-text")).to_have_text("live")
    assert page.url.endswith("/dashboard/groups/lab")


def test_revoking_the_token_of_a_live_page_ends_its_event_stream_without_a_server_error(
    env, browser
):
    """The event stream of a page whose token is revoked is ended by the server without
    an error of its own: no "ASGI callable returned without completing response" (nor any
    other ERROR line or traceback) in the server's log."""
    env.client.create_group("lab", ["a"])
    laptop = env.server.admin("add-token", "alice", "laptop")["token"]
    pages = [
        login(browser, env.server, laptop, path)
        for path in ("/dashboard/groups/lab", "/dashboard/groups/lab/events")
    ]
    for page in pages:
        expect(page.locator("#live-text")).to_have_text("live")
    env.server.admin("revoke-token", "alice", "laptop")
    for page in pages:
        expect(page.locator("#token")).to_be_visible(timeout=30_000)
    # The pages saw their streams end before going to the login form: the server had
    # finished those responses (and would have logged it); a moment more for slow logs.
    time.sleep(1)
    log = env.server.log_path.read_text(errors="replace")
    assert "ASGI callable returned" not in log, log[-3000:]
    assert not [line for line in log.splitlines() if " ERROR " in line], log[-3000:]
    assert_no_traceback_in_server_log(env.server)
