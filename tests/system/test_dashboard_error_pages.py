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


def _get(http, path: str, accept: str | None, **params: str):
    """GET ``path`` with ``accept`` as its Accept header, or with none at all."""
    request = http.build_request("GET", path, params=params or None)
    if accept is None:
        del request.headers["accept"]
    else:
        request.headers["accept"] = accept
    return http.send(request)


def test_a_page_that_does_not_exist_is_the_json_error_for_a_client_not_asking_for_html(env):
    """A missing group or job of a logged-in user is the API's JSON error for a client
    that does not ask for HTML (the pages' own scripts, curl), the HTML page for a
    browser: as for an address that matches no page."""
    env.client.create_group("lab", ["a"])
    cookie, _ = session_of(env.server, env.token)
    with pinned_http(env.server) as http:
        http.cookies.set("__Host-crc_session", cookie)
        for path in (
            "/dashboard/groups/nosuch",
            "/dashboard/groups/nosuch/kv",
            "/dashboard/groups/nosuch/events",
            "/dashboard/groups/nosuch/run",
            "/dashboard/groups/lab/machines/nosuch/terminal",
            "/dashboard/jobs/0000",
        ):
            for accept in ("application/json", "*/*", None):
                assert_error(_get(http, path, accept), 404, "not_found")
            _assert_page(
                _get(http, path, HTML["Accept"]), 404, "nosuch" if "nosuch" in path else "0000"
            )
    assert_no_traceback_in_server_log(env.server)


def test_a_bad_events_filter_is_refused_as_the_api_refuses_it(env):
    """A type the API's event stream refuses, a machine that is no machine name, a job
    that is none of the group's: 400 with the reason, as an HTML page for a browser and
    as the JSON error otherwise; the type's reason is the API's own."""
    env.client.create_group("lab", ["a"])
    env.client.create_group("other", ["b"])
    other_job = env.client.start_job("other", "b", command="true")["job_id"]
    lab_job = env.client.start_job("lab", "a", command="true")["job_id"]
    cookie, _ = session_of(env.server, env.token)
    with pinned_http(env.server) as http:
        api = http.get(
            "/v1/groups/lab/events",
            params={"type": "<b>"},
            headers={"Authorization": f"Bearer {env.token}"},
        )
        api_reason = assert_error(api, 400, "invalid_input")
        http.cookies.set("__Host-crc_session", cookie)
        path = "/dashboard/groups/lab/events"
        refused = {
            "type": ("<b>", api_reason),
            "machine": ("<b>", "invalid machine"),
            "job": ("zz", "no job 'zz'"),
        }
        for name, (value, reason) in refused.items():
            assert_error(_get(http, path, None, **{name: value}), 400, "invalid_input", reason)
            _assert_page(_get(http, path, HTML["Accept"], **{name: value}), 400, "invalid")
        # Another group's job is not a job of this group's events.
        assert_error(_get(http, path, None, job=other_job), 400, "invalid_input", "other")
        # Good filters, and empty ones (the form's "any"), show the page.
        for params in (
            {"type": "job.", "machine": "a", "job": lab_job},
            {"type": "", "machine": "", "job": ""},
            {"type": "job.created"},
        ):
            r = _get(http, path, HTML["Accept"], **params)
            assert r.status_code == 200, (params, r.text)
            assert 'id="event-filters"' in r.text
        r = _get(http, path, HTML["Accept"], job=lab_job)
        assert "No events match" not in r.text  # the job's creation
    assert_no_traceback_in_server_log(env.server)
