"""The dashboard as the server serves it, over real HTTPS: on by default with its URL
printed, off with --no-dashboard (and session cookies then mean nothing), a login form
that refuses forged posts and bad tokens, and the run-report API refusing bad input."""

from __future__ import annotations

import re

from test_authorization import session_of
from wire_helpers import assert_error, assert_no_traceback_in_server_log, bearer, pinned_http

from cloudremotecontrol.master.localrun import ServerProcess

RUN_ID = "e" * 32


def test_server_run_prints_its_dashboard_url_and_serves_it_by_default(server):
    log = server.log_path.read_text()
    assert f"dashboard: {server.url}/dashboard/" in log.splitlines()
    with pinned_http(server) as http:
        r = http.get("/")
        assert r.status_code == 307 and r.headers["location"] == "/dashboard/"
        assert http.get("/v1/health").json()["dashboard"] == "/dashboard/"
        r = http.get("/dashboard/login")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        scripts = re.findall(r'<script src="([^"]+)"', r.text)
        assert len(scripts) == 2
        for src in scripts:
            asset = http.get(src)
            assert asset.status_code == 200 and asset.headers["content-type"].startswith(
                "text/javascript"
            )
            again = http.get(src, headers={"If-None-Match": asset.headers["etag"]})
            assert again.status_code == 304
        assert_error(http.get("/dashboard/static/../server.json"), 404, "not_found")
        assert_error(http.get("/dashboard/static/nothing.js"), 404, "not_found")


def test_no_dashboard_serves_no_pages_and_makes_session_cookies_worthless(server, tmp_path):
    token = server.add_user("alice")
    cookie, csrf = session_of(server, token)
    server.stop()
    bare = ServerProcess(server.data_dir, port=server.port, args=["--no-dashboard"])
    bare.start()
    try:
        assert "dashboard:" not in bare.log_path.read_text().split("serving")[-1]
        with pinned_http(bare) as http:
            assert "dashboard" not in http.get("/v1/health").json()
            for path in ("/", "/dashboard/", "/dashboard/login", "/dashboard/static/dashboard.js"):
                assert_error(http.get(path), 404, "not_found")
            jar = {"Cookie": f"__Host-crc_session={cookie}", "X-CSRF-Token": csrf}
            assert_error(http.get("/v1/whoami", headers=jar), 401, "unauthorized")
            r = http.post(
                "/v1/groups", json={"name": "g", "machines": [{"name": "m"}]}, headers=jar
            )
            assert_error(r, 401, "unauthorized")
            assert (
                http.get("/v1/whoami", headers={"Authorization": bearer(token)}).status_code == 200
            )
    finally:
        bare.stop()


def test_login_refuses_forged_posts_bad_tokens_and_redirects_elsewhere(server):
    token = server.add_user("alice")
    with pinned_http(server) as http:
        form_token = http.get("/dashboard/login").cookies["__Host-crc_login"]
        http.cookies.clear()
        # No form cookie (a post from another site's page): refused, no session.
        r = http.post("/dashboard/login", data={"token": token, "form_token": form_token})
        assert r.status_code == 403 and "__Host-crc_session" not in r.cookies
        assert "the form expired" in r.text
        cookie = {"Cookie": f"__Host-crc_login={form_token}"}
        r = http.post(
            "/dashboard/login", data={"token": token, "form_token": "x" * 32}, headers=cookie
        )
        assert r.status_code == 403 and "__Host-crc_session" not in r.cookies
        for bad in ("", "crcm_0123456789abcdef_" + "x" * 32, "<script>", "a" * 300):
            r = http.post(
                "/dashboard/login", data={"token": bad, "form_token": form_token}, headers=cookie
            )
            assert r.status_code == 401 and "__Host-crc_session" not in r.cookies, bad
            assert "unknown or revoked master token" in r.text
            assert "&lt;script&gt;" not in r.text and "<script>" not in r.text.split("</head>")[1]
        r = http.post("/dashboard/login", content=b"token=" + b"x" * 5000, headers=cookie)
        assert r.status_code == 400 and "form too large" in r.text
        r = http.post("/dashboard/login", content=b"\xff\xfe=\xff", headers=cookie)
        assert r.status_code in (400, 403)
        # After logging in, only the dashboard's own pages are a destination.
        for target, landed in [
            ("/dashboard/groups/lab", "/dashboard/groups/lab"),
            ("//evil.example/dashboard/", "/dashboard/"),
            ("https://evil.example/", "/dashboard/"),
            ("/v1/whoami", "/dashboard/"),
        ]:
            r = http.post(
                "/dashboard/login",
                data={"token": token, "form_token": form_token, "next": target},
                headers=cookie,
            )
            assert r.status_code == 303 and r.headers["location"] == landed, target
            session = r.cookies["__Host-crc_session"]
            assert session.startswith("crcs_")
            header = r.headers["set-cookie"].lower()
            assert "httponly" in header and "samesite=strict" in header and "secure" in header
    assert token not in server.log_path.read_text()
    assert_no_traceback_in_server_log(server)


def test_run_reports_refuse_malformed_input_with_clear_errors(env):
    env.client.create_group("lab", ["a"])
    alice = {"Authorization": bearer(env.token)}
    step = {"name": "s", "kind": "run", "to": "a", "needs": [], "retries": 0}
    good = {"run_id": RUN_ID, "scenario": "lab", "steps": [step]}
    with pinned_http(env.server) as http:
        bad_starts = [
            ({**good, "run_id": "not-hex"}, 400, "invalid_input", "run_id"),
            ({**good, "steps": [step] * 501}, 400, "invalid_input", "steps"),
            ({**good, "steps": [{**step, "retries": 101}]}, 400, "invalid_input", "retries"),
            ({**good, "steps": [{**step, "kind": "<b>"}]}, 400, "invalid_input", "kind"),
            ({**good, "steps": [{**step, "needs": ["later"]}]}, 400, "invalid_input", "later"),
            ({**good, "scenario": "Not A Name"}, 400, "invalid_input", "scenario"),
            ({**good, "extra": 1}, 400, "invalid_input", "extra"),
        ]
        for body, status, code, part in bad_starts:
            r = http.put("/v1/groups/lab/run", json=body, headers=alice)
            assert_error(r, status, code, part)
        r = http.get("/v1/groups/lab/run", headers=alice)
        assert_error(r, 404, "not_found", "no scenario run")
        assert http.put("/v1/groups/lab/run", json=good, headers=alice).status_code == 200
        bad_reports = [
            ({"type": "explode", "run_id": RUN_ID}, "type"),
            ({"type": "step", "run_id": RUN_ID, "step": "s", "state": "exploded"}, "state"),
            (
                {
                    "type": "step",
                    "run_id": RUN_ID,
                    "step": "s",
                    "state": "running",
                    "message": "x" * 1001,
                },
                "message",
            ),
            (
                {"type": "step", "run_id": RUN_ID, "step": "s", "state": "running", "seconds": -1},
                "seconds",
            ),
            ({"type": "end", "run_id": RUN_ID}, "ok"),
            ({"type": "phase", "run_id": RUN_ID, "phase": "nowhere"}, "phase"),
        ]
        for body, part in bad_reports:
            r = http.post("/v1/groups/lab/run/report", json=body, headers=alice)
            assert_error(r, 400, "invalid_input", part)
        r = http.post(
            "/v1/groups/lab/run/report",
            json={"type": "step", "run_id": RUN_ID, "step": "nope", "state": "running"},
            headers=alice,
        )
        assert_error(r, 404, "not_found", "no step 'nope'")
        r = http.post(
            "/v1/groups/lab/run/report",
            json={"type": "phase", "run_id": "d" * 32, "phase": "steps"},
            headers=alice,
        )
        assert_error(r, 409, "conflict", "not the current run")
        r = http.post(
            "/v1/groups/lab/run/report",
            content=b"{",
            headers={**alice, "Content-Type": "application/json"},
        )
        assert_error(r, 400, "malformed_json")
    run = env.client.run_state("lab")
    assert [s["state"] for s in run["steps"]] == ["pending"] and run["state"] == "running"
    assert_no_traceback_in_server_log(env.server)
