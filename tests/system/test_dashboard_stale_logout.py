"""*Log out* on a page rendered for an earlier session of the same browser (logged out
and in again in another tab, so the page's CSRF token is stale) shows the dashboard's
error page with a working *Log out*, not a raw JSON error, in a real Chromium."""

from __future__ import annotations

from playwright.sync_api import expect
from test_dashboard_browser import login


def test_log_out_from_a_stale_page_explains_and_offers_a_working_log_out(env, browser):
    env.client.create_group("lab", ["a"])
    stale = login(browser, env.server, env.token, "/dashboard/groups/lab")
    fresh = login(browser, env.server, env.token, "/dashboard/")
    fresh.click("#logout")
    expect(fresh.locator("#token")).to_be_visible()
    fresh.fill("#token", env.token)
    fresh.click("#login")
    expect(fresh.locator("#who")).to_be_visible()
    stale.click("#logout")
    expect(stale.locator("#error-message")).to_contain_text("out of date")
    assert "{" not in stale.locator("main").inner_text()  # not a JSON document
    stale.click("#logout")  # the error page's own form carries the live session's token
    expect(stale.locator("#token")).to_be_visible()
    assert "__Host-crc_session" not in [c["name"] for c in browser.context.cookies()]
    fresh.goto(env.server.url + "/dashboard/")
    expect(fresh.locator("#token")).to_be_visible()  # that session ended too
