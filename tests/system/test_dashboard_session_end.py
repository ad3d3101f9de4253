"""A live page whose session ends (the master token revoked, a logout in another tab)
does not go on saying "reconnecting…" for ever: it sends the browser to the login form,
which brings it back to the page, in a real Chromium (tests/browser.py)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect
from test_dashboard_browser import login


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
