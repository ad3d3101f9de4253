"""What the dashboard's tests of hostile machine text share: the group's pages open and
live, then one machine (the raw wire protocol, wire_helpers.py) sends its text into
every field it controls, a job among them whose output comes once that job's page is
open too, so that everything arrives live; the tests then look at the pages, and again
once reloaded (rendered by the server from what it stored)."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from playwright.sync_api import expect
from test_dashboard_browser import login
from wire_helpers import enroll, pinned_http

#: ``speak(creds, job_started, job_page_open)``: the machines' part, run in a loop on a
#: thread of its own (Playwright owns this one's). It puts its job's id in
#: ``job_started`` once that job's ``job.run`` came, and awaits ``job_page_open`` (a
#: threading.Event) before the job's output.
Speak = Callable[[dict[str, str], "queue.Queue[str]", threading.Event], Awaitable[None]]


def group_pages(group: str) -> dict[str, str]:
    return {
        "machines": f"/dashboard/groups/{group}",
        "messages": f"/dashboard/groups/{group}/messages",
        "kv": f"/dashboard/groups/{group}/kv",
        "events": f"/dashboard/groups/{group}/events",
        "run": f"/dashboard/groups/{group}/run",
    }


def machines_speak(
    env: Any, browser: Any, group: str, names: list[str], run_id: str, speak: Speak
) -> tuple[dict[str, Any], str]:
    """Make ``group`` of ``names`` (enrolled), a `crc up` run of one step ``one`` on the
    first, open its pages and let ``speak`` run; the pages by name (``job``: the job's)
    and the job's id."""
    keys = {m["name"]: m["key"] for m in env.client.create_group(group, names)["machines"]}
    with pinned_http(env.server) as http:
        creds = {name: enroll(http, keys[name]) for name in names}
    env.client.start_run(
        group,
        {
            "run_id": run_id,
            "scenario": group,
            "steps": [{"name": "one", "kind": "run", "to": names[0], "needs": [], "retries": 0}],
        },
    )
    pages = {
        name: login(browser, env.server, env.token, path)
        for name, path in group_pages(group).items()
    }
    for page in pages.values():
        expect(page.locator("#live-text")).to_have_text("live")
    job_started: queue.Queue[str] = queue.Queue()
    job_page_open = threading.Event()
    failure: list[BaseException] = []

    def machines() -> None:
        try:
            asyncio.run(speak(creds, job_started, job_page_open))
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the test's thread
            failure.append(exc)
            job_started.put("")

    thread = threading.Thread(target=machines)
    thread.start()
    job_id = job_started.get(timeout=120)
    if job_id:
        pages["job"] = login(browser, env.server, env.token, f"/dashboard/jobs/{job_id}")
        expect(pages["job"].locator("#live-text")).to_have_text("live")
    job_page_open.set()
    thread.join(120)
    if failure:
        raise failure[0]
    return pages, job_id
