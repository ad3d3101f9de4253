"""The dashboard as a person uses it: a real headless Chromium (tests/browser.py) against
a real server with real agents. Log in, watch a group turn ready, run a command on two
machines and read both outputs, cancel a sleep, not see another user's group, log out,
watch a `crc up` run's steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from typing import Any

from playwright.sync_api import expect
from wire_helpers import pinned_http

from cloudremotecontrol.master.client import Client
from cloudremotecontrol.server.dashboard import CSP


def login(browser: Any, server: Any, token: str, path: str = "/dashboard/") -> Any:
    """A new page at ``path``, logging in with ``token`` first unless the browser has a
    session already (the login form then brings it back to ``path``)."""
    page = browser.page()
    page.goto(server.url + path)
    if page.locator("#token").count():
        page.fill("#token", token)
        page.click("#login")
    expect(page.locator("#who")).to_be_visible()
    return page


def visible_rows(page: Any) -> Any:
    return page.locator("#machines .vrow:not([hidden])")


def row(page: Any, name: str) -> Any:
    return page.locator(f"#machines .vrow[data-name='{name}']")


def test_a_group_turns_ready_on_the_page_as_agents_enroll_without_a_reload(env, browser):
    keys = env.client.create_group("lab", ["a", "b"], ttl=3600)["machines"]
    requests: list[str] = []
    page = browser.page()
    page.on("request", lambda r: requests.append(r.url))
    page.goto(env.server.url + "/")  # the server's root sends a browser to the dashboard
    page.fill("#token", env.token)
    page.click("#login")
    page.click("#groups a:text-is('lab')")
    expect(visible_rows(page)).to_have_count(2)
    expect(row(page, "a").locator(".c-state")).to_have_text("pending")
    expect(page.locator("#live-text")).to_have_text("live")
    page.evaluate("window.__samePage = true")

    for m in keys:
        env.agent(m["name"], m["key"])
    for name in ("a", "b"):
        expect(row(page, name).locator(".c-state")).to_have_text("ready", timeout=30_000)
        expect(row(page, name).locator(".c-os")).not_to_have_text("")  # facts arrived
        expect(row(page, name).locator(".c-ips")).not_to_have_text("")
    expect(page.locator("#counts")).to_have_text("2 ready")
    # The server has `crc shell`'s stream: a Terminal button on each machine's row.
    assert page.locator("#machines").get_attribute("data-shell") == "/v1/streams/"
    expect(page.locator("#machines button.term")).to_have_count(2)
    assert page.evaluate("window.__samePage") is True  # live updates, not a reload
    # TTL counts down; "for" counts up.
    expect(page.locator("#ttl")).to_contain_text("m")
    # Everything the page loaded came from the server itself, under a strict CSP.
    assert requests and all(u.startswith(env.server.url) for u in requests), requests
    resp = page.reload()
    assert resp is not None and resp.headers["content-security-policy"] == CSP
    assert "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP
    assert not [m for m in browser.messages(page) if "Refused" in m or m.startswith("error")]


def test_the_groups_page_follows_groups_and_ready_machines_without_a_reload(env, browser):
    """The groups page refreshes itself (every 5 s): a machine turning ready, a group
    made and one deleted show without a reload."""
    keys = env.client.create_group("lab", ["a", "b"])["machines"]
    page = login(browser, env.server, env.token)
    lab = page.locator("#groups tr[data-group='lab'] td:nth-child(2)")
    expect(lab).to_have_text("0 / 2")
    page.evaluate("window.__samePage = true")

    env.agent(keys[0]["name"], keys[0]["key"])
    expect(lab).to_have_text("1 / 2", timeout=30_000)
    env.client.create_group("more", ["x"])
    expect(page.locator("#groups tr[data-group='more']")).to_have_count(1, timeout=30_000)
    env.client.delete_group("more")
    expect(page.locator("#groups tr[data-group='more']")).to_have_count(0, timeout=30_000)
    assert page.evaluate("window.__samePage") is True  # refreshed in place, not reloaded
    assert not [m for m in browser.messages(page) if "Refused" in m or m.startswith("error")]


def test_echo_hi_on_two_chosen_machines_from_the_page_shows_both_outputs(env, browser):
    env.group_with_agents("lab", ["a", "b", "c"])
    page = login(browser, env.server, env.token, "/dashboard/groups/lab")
    expect(visible_rows(page)).to_have_count(3)
    row(page, "a").locator("input[type=checkbox]").check()
    row(page, "b").locator("input[type=checkbox]").check()
    expect(page.locator("#run-to")).to_have_value("a,b")
    page.fill("#run-command", "echo hi")
    page.click("#run-submit")

    expect(page.locator("#job")).to_be_visible()
    targets = page.locator("#targets tr[data-machine]")
    expect(targets).to_have_count(2)
    for name in ("a", "b"):
        tr = page.locator(f"#targets tr[data-machine='{name}']")
        expect(tr.locator(".status")).to_have_text("succeeded", timeout=30_000)
        expect(tr.locator(".exit")).to_have_text("0")
        expect(page.locator(f"#out-{name}")).to_have_text("hi\n")
    expect(page.locator("#cancel")).to_be_hidden()
    # The page used the job API: the job is there for the CLI too, and in the audit.
    job_id = page.locator("#job").get_attribute("data-job")
    job = env.client.job(job_id)
    assert job["spec"]["command"] == "echo hi" and job["by"] == "alice"
    assert [t["machine"] for t in job["targets"]] == ["a", "b"]
    assert any(r["action"] == "job.run" for r in env.client.audit("lab"))


def test_a_sleep_started_on_the_page_is_cancelled_from_it(env, browser):
    env.group_with_agents("lab", ["a"])
    page = login(browser, env.server, env.token, "/dashboard/groups/lab/jobs")
    page.fill("#run-to", "a")
    page.fill("#run-command", "sleep 120")
    page.click("#run-submit")
    status = page.locator("#targets tr[data-machine='a'] .status")
    expect(status).to_have_text("running", timeout=30_000)
    page.click("#cancel")
    expect(status).to_have_text("cancelled", timeout=30_000)
    expect(page.locator("#cancel")).to_be_hidden()
    job_id = page.locator("#job").get_attribute("data-job")
    assert env.client.job(job_id)["targets"][0]["status"] == "cancelled"
    # And the jobs list, refreshed live, says so.
    page.goto(env.server.url + "/dashboard/groups/lab/jobs")
    expect(page.locator(f"#jobs tr[data-job='{job_id}']")).to_contain_text("1 cancelled")


def test_another_users_group_is_invisible_in_the_dashboard(env, browser):
    env.group_with_agents("lab", ["a"])
    alice_job = env.client.start_job("lab", "a", command="echo secret")["job_id"]
    bob = env.server.add_user("bob")
    page = login(browser, env.server, bob)
    expect(page.locator("#who")).to_have_text("bob")
    expect(page.locator("#no-groups")).to_be_visible()
    expect(page.locator("body")).not_to_contain_text("lab")
    for path in (
        "/dashboard/groups/lab",
        "/dashboard/groups/lab/events",
        f"/dashboard/jobs/{alice_job}",
    ):
        resp = page.goto(env.server.url + path)
        assert resp.status == 404, path
        expect(page.locator("#error-message")).to_contain_text("no ")
        expect(page.locator("body")).not_to_contain_text("secret")
    # Through the API with bob's session: the same "not found" as for bob's bearer token.
    status = page.evaluate(
        "async () => (await fetch('/v1/groups/lab', {credentials: 'same-origin'})).status"
    )
    assert status == 404
    # Bob's own "lab" is his: one machine, z.
    with Client(env.server.url, bob, env.server.fingerprint) as c:
        c.create_group("lab", ["z"])
    page.goto(env.server.url + "/dashboard/groups/lab")
    expect(visible_rows(page)).to_have_count(1)
    expect(row(page, "z")).to_be_visible()


def test_logout_ends_the_session_for_the_pages_and_the_api(env, browser):
    env.client.create_group("lab", ["a"])
    page = login(browser, env.server, env.token, "/dashboard/groups/lab")
    cookie = next(c for c in browser.context.cookies() if c["name"] == "__Host-crc_session")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # scripts never see it
    csrf = page.locator("meta[name=crc-csrf]").get_attribute("content")
    page.click("#logout")
    expect(page.locator("#token")).to_be_visible()
    assert "__Host-crc_session" not in [c["name"] for c in browser.context.cookies()]
    page.goto(env.server.url + "/dashboard/groups/lab")
    expect(page.locator("#token")).to_be_visible()  # sent to the login form
    assert "next=%2Fdashboard%2Fgroups%2Flab" in page.url
    # The old cookie is worth nothing now, even with its CSRF token.
    with pinned_http(env.server) as http:
        jar = {"Cookie": f"__Host-crc_session={cookie['value']}"}
        r = http.get("/v1/whoami", headers=jar)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        r = http.post(
            "/v1/groups/lab/jobs",
            json={"to": "a", "command": "true"},
            headers={**jar, "X-CSRF-Token": csrf},
        )
        assert r.status_code == 401
        r = http.get("/dashboard/groups/lab", headers=jar)
        assert r.status_code == 303 and r.headers["location"].startswith("/dashboard/login")
    assert [r["action"] for r in env.client.audit()][-2:] == ["dashboard.login", "dashboard.logout"]


SCENARIO = """\
name: shown
provider: {name: local, network: host}
timeouts: {ready: 60s, step: 60s}
machines:
  a:
  b:
steps:
  - name: prepare
    to: all
    run: echo prepared
  - name: flaky
    to: a
    retries: 1
    retry_delay: 1s
    run: test -e "$CRC_STATE_MARK" || { touch "$CRC_STATE_MARK"; exit 3; }
  - name: slow
    to: b
    needs: [prepare]
    run: sleep 3
  - name: last
    needs: [flaky, slow]
    run: echo done
"""


def test_a_crc_up_run_shows_its_step_graph_live(env, browser, tmp_path):
    mark = tmp_path / "flaky-ran-once"
    scenario = tmp_path / "shown.yaml"
    scenario.write_text(textwrap.dedent(SCENARIO).replace("$CRC_STATE_MARK", str(mark)))
    cli_env = {**os.environ, **env.cli_env, "CRC_LOCAL_DIR": str(tmp_path / "machines")}
    up = subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", "up", str(scenario), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env,
    )
    try:
        page = login(browser, env.server, env.token)
        # Once `crc up` made the group, its run page follows the steps.
        deadline = time.monotonic() + 60
        while not [g for g in env.client.list_groups() if g["group"] == "shown"]:
            assert time.monotonic() < deadline and up.poll() is None, "crc up made no group"
            time.sleep(0.2)
        page.goto(env.server.url + "/dashboard/groups/shown/run")
        page.evaluate("window.__samePage = true")
        expect(page.locator("#step-slow .step-state")).to_contain_text("running", timeout=60_000)
        expect(page.locator("#step-last .step-state")).to_contain_text("succeeded", timeout=60_000)
        assert page.evaluate("window.__samePage") is True
        out, err = up.communicate(timeout=120)
    finally:
        if up.poll() is None:
            up.kill()
            up.communicate()
    assert up.returncode == 0, out + err
    lines = [json.loads(x) for x in out.splitlines() if x.strip()]
    assert any(x.get("dashboard", "").endswith("/dashboard/groups/shown") for x in lines)
    expect(page.locator("#run-state")).to_have_text("succeeded")
    expect(page.locator("#step-flaky .step-state")).to_contain_text("attempt 2/2")
    # The graph: prepare; then flaky (after it: no needs) and slow (needs it); last.
    waves = page.locator(".graph .wave")
    expect(waves).to_have_count(3)
    expect(waves.nth(0).locator(".step-name")).to_contain_text(["prepare"])
    expect(waves.nth(1).locator(".step-name")).to_contain_text(["flaky", "slow"])
    expect(page.locator("#step-last .needs")).to_have_text("needs flaky, slow")
    run = env.client.run_state("shown")
    states = {s["name"]: (s["state"], s["attempt"]) for s in run["steps"]}
    assert states == {
        "prepare": ("succeeded", 1),
        "flaky": ("succeeded", 2),
        "slow": ("succeeded", 1),
        "last": ("succeeded", 1),
    }
    slow = next(s for s in run["steps"] if s["name"] == "slow")
    assert slow["seconds"] >= 3 and slow["finished"] - slow["started"] >= 3
    subprocess.run(
        [sys.executable, "-m", "cloudremotecontrol", "down", str(scenario)],
        env=cli_env,
        capture_output=True,
        timeout=120,
    )
