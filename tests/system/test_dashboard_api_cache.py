"""What the API answers a browser (the dashboard's session cookie stands for a master
token on every /v1 request) is not kept in the browser's cache: key/value values, job
output, group details are secrets, and a disk cache outlives the session. Checked in a
real Chromium (tests/browser.py): its cache directory holds none of them afterwards."""

from __future__ import annotations

import json
from pathlib import Path

from test_dashboard_browser import login
from wire_helpers import pinned_http

SECRET = "s3cr3t-db-password-" + "q" * 24


def cached_bytes(profile: Path) -> bytes:
    return b"".join(p.read_bytes() for p in profile.rglob("*") if p.is_file() and "Cache" in str(p))


def test_api_answers_to_a_browser_session_are_not_cached(env, browser, tmp_path):
    env.client.create_group("lab", ["a"])
    env.client.kv_set("lab", "db/password", SECRET)
    page = login(browser, env.server, env.token, "/dashboard/groups/lab/kv")
    for path in ("/v1/groups/lab/kv/db/password", "/v1/groups/lab/kv", "/v1/groups/lab"):
        resp = page.goto(env.server.url + path)
        assert resp is not None and resp.status == 200, path
        assert "no-store" in (resp.headers.get("cache-control") or ""), path
    assert json.loads(page.locator("body").inner_text())["group"] == "lab"
    with pinned_http(env.server) as http:
        r = http.get(
            "/v1/groups/lab/kv/db/password", headers={"Authorization": f"Bearer {env.token}"}
        )
        assert r.json()["value"] == SECRET and "no-store" in r.headers["cache-control"]
    browser.close()  # the cache is written out
    assert SECRET.encode() not in cached_bytes(tmp_path / "chromium-profile")
