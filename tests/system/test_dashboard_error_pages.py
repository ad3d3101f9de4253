"""A mistyped dashboard address, asked for by a browser (``Accept: text/html``), is
answered by an HTML page saying what is wrong with a link back to the groups, with the
error's status; the API under /v1 keeps its JSON errors, and so does the dashboard for
a client that does not ask for HTML (the pages' own scripts)."""

from __future__ import annotations

from test_authorization import session_of
from wire_helpers import assert_error, assert_no_traceback_in_server_log, pinned_http

HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def _assert_page(r, status: int, part: str) -> None:
    where = f"{r.request.method} {r.request.url.path}"
    assert r.status_code == status, f"{where}: {r.status_code} {r.text}"
    assert r.headers["content-type"].startswith("text/html"), f"{where}: {r.text}"
    assert 'href="/dashboard/"' in r.text, r.text
    assert 'id="error-message"' in r.text, r.text
    assert part in r.text, r.text
    assert "<script>alert" not in r.text  # what the address holds is escaped


def test_mistyped_dashboard_addresses_get_html_error_pages_and_the_api_json(server):
    token = server.add_user("alice")
    cookie, _ = session_of(server, token)
    with pinned_http(server) as http:
        http.cookies.set("__Host-crc_session", cookie)
        _assert_page(http.get("/dashboard/nope", headers=HTML), 404, "no page")
        _assert_page(http.get("/dashboard/<script>alert(1)</script>", headers=HTML), 404, "no page")
        _assert_page(http.get("/dashboard/jobs/not-a-job", headers=HTML), 404, "not-a-job")
        _assert_page(
            http.get("/dashboard/groups/nope/events", params={"type": "x" * 65}, headers=HTML),
            400,
            "type",
        )
        _assert_page(http.get("/dashboard/static/nothing.js", headers=HTML), 404, "nothing.js")
        # Without a session too: nothing is shown but that the address is wrong.
        http.cookies.clear()
        _assert_page(http.get("/dashboard/nope", headers=HTML), 404, "no page")
        # The API answers JSON whatever the client accepts; the dashboard does to a
        # client that does not ask for HTML.
        assert_error(http.get("/v1/nope", headers=HTML), 404, "not_found")
        assert_error(http.get("/v1/jobs/not-a-job", headers=HTML), 401, "unauthorized")
        assert_error(http.get("/dashboard/nope"), 404, "not_found")
        assert_error(http.get("/dashboard/static/nothing.js"), 404, "not_found")
    assert_no_traceback_in_server_log(server)
