"""A machine that sends a lot cannot make a dashboard page huge or freeze its tab: a
job's output on its page (live, and when rendered) keeps each machine's last part, and
the messages view shows the first part of each body, in a real Chromium against a real
server (the machine speaks the raw wire protocol, tests/system/wire_helpers.py)."""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any

from playwright.sync_api import expect
from test_dashboard_browser import login
from wire_helpers import (
    assert_no_traceback_in_server_log,
    bearer,
    enroll,
    pinned_http,
    wire_agent,
)

from cloudremotecontrol.server.dashboard import views

CHUNK = 60_000  # characters of one job.output message (the limit is 64 KiB)
CHUNKS = 14  # 840,000 characters in all: over three times what a page keeps
SLOW = 60_000  # ms: the page gets everything in the end, on a loaded machine too


def _chunk(i: int) -> str:
    head = f"<chunk {i}>\n"
    return head + "y\n" * ((CHUNK - len(head)) // 2)


def _run_machine(env: Any, cred: str, work: Any) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``work(agent)`` as machine m of group "big" in a thread of its own
    (Playwright owns this one's event loop)."""
    failure: list[BaseException] = []

    async def main() -> None:
        async with wire_agent(env.server, cred, "big", "m") as m:
            await work(m)

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the test's thread
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, failure


def _shown_chars(page: Any, selector: str) -> int:
    return int(page.evaluate(f"document.querySelector({selector!r}).textContent.length"))


def _assert_tail_in_blocks(page: Any, full: str) -> None:
    """The output shown is the end of ``full``, exactly, held in blocks of a few thousand
    characters (so a line added lays out one block, not the whole text)."""
    out = page.locator("#out-m")
    shown = out.text_content()
    assert full.endswith(shown) and len(shown) > 100_000
    sizes = page.evaluate(
        "[...document.querySelectorAll('#out-m > .block')].map(b => b.textContent.length)"
    )
    assert sum(sizes) == len(shown) and max(sizes) <= 4 * 4096, sizes


def test_a_job_page_keeps_the_last_part_of_a_huge_output_live_and_rendered(env, browser):
    key = env.client.create_group("big", ["m"])["machines"][0]["key"]
    with pinned_http(env.server) as http:
        cred = enroll(http, key)
    job_started: queue.Queue[str] = queue.Queue()
    page_open = threading.Event()

    async def work(m: Any) -> None:
        job_id = env.client.start_job("big", "m", command="yes")["job_id"]
        run = await m.next_msg()
        assert run["type"] == "job.run"
        job_started.put(job_id)
        assert await asyncio.to_thread(page_open.wait, 60)
        await m.send_msg("job.started", {"job_id": job_id})
        for i in range(CHUNKS):
            data = _chunk(i)
            await m.send_msg("job.output", {"job_id": job_id, "stream": "stdout", "data": data})
        await m.send_msg("job.output", {"job_id": job_id, "stream": "stdout", "data": "END"})
        await m.send_msg("job.result", {"job_id": job_id, "status": "succeeded", "exit_code": 0})

    thread, failure = _run_machine(env, cred, work)
    try:
        job_id = job_started.get(timeout=60)
    except queue.Empty:
        thread.join(5)
        raise (failure[0] if failure else AssertionError("no job reached the machine")) from None
    page = login(browser, env.server, env.token, f"/dashboard/jobs/{job_id}")
    expect(page.locator("#live-text")).to_have_text("live")
    expect(page.locator("#output-cut")).to_be_hidden()
    page_open.set()
    thread.join(120)
    if failure:
        raise failure[0]

    out = page.locator("#out-m")
    expect(page.locator("#targets tr[data-machine='m'] .status")).to_have_text(
        "succeeded", timeout=SLOW
    )
    expect(out).to_contain_text("END", timeout=SLOW)
    full = "".join(_chunk(i) for i in range(CHUNKS)) + "END"
    _assert_tail_in_blocks(page, full)  # the last part, as it came
    assert _shown_chars(page, "#out-m") <= views.OUTPUT_TAIL  # not all 840,000
    expect(page.locator("#output-cut")).to_be_visible()
    expect(page.locator("#targets tr[data-machine='m'] .bytes")).to_have_text(
        f"{sum(len(_chunk(i)) for i in range(CHUNKS)) + 3} bytes"
    )

    page.reload()  # drawn by the server: its tail too
    expect(out).to_contain_text("END")
    _assert_tail_in_blocks(page, full)
    assert _shown_chars(page, "#out-m") <= views.OUTPUT_TAIL + CHUNK
    expect(page.locator("#output-cut")).to_be_visible()
    assert not [m for m in browser.messages(page) if m.startswith(("pageerror", "error"))]
    assert_no_traceback_in_server_log(env.server)


def test_a_job_page_keeps_up_with_a_long_output_arriving_line_by_line(env, browser):
    """A page that shows a long output already takes each new line in its stride: a line
    lays out the block it joins, not the whole text again (when it did, 400 lines after
    240,000 characters of output took the page close to a minute, its tab frozen)."""
    key = env.client.create_group("big", ["m"])["machines"][0]["key"]
    with pinned_http(env.server) as http:
        cred = enroll(http, key)
    job_started: queue.Queue[str] = queue.Queue()
    page_open = threading.Event()

    async def work(m: Any) -> None:
        job_id = env.client.start_job("big", "m", command="make")["job_id"]
        assert (await m.next_msg())["type"] == "job.run"
        await m.send_msg("job.started", {"job_id": job_id})
        for i in range(4):
            await m.send_msg(
                "job.output", {"job_id": job_id, "stream": "stdout", "data": _chunk(i)}
            )
        job_started.put(job_id)
        assert await asyncio.to_thread(page_open.wait, 60)
        for i in range(400):
            line = f"line {i}\n"
            await m.send_msg("job.output", {"job_id": job_id, "stream": "stdout", "data": line})
        await m.send_msg("job.result", {"job_id": job_id, "status": "succeeded", "exit_code": 0})

    thread, failure = _run_machine(env, cred, work)
    try:
        job_id = job_started.get(timeout=60)
    except queue.Empty:
        thread.join(5)
        raise (failure[0] if failure else AssertionError("no job reached the machine")) from None
    page = login(browser, env.server, env.token, f"/dashboard/jobs/{job_id}")
    expect(page.locator("#live-text")).to_have_text("live")
    page_open.set()
    thread.join(120)
    if failure:
        raise failure[0]
    expect(page.locator("#live-text")).to_have_text("finished", timeout=SLOW)
    expect(page.locator("#out-m")).to_contain_text("line 399", timeout=SLOW)
    full = "".join(_chunk(i) for i in range(4)) + "".join(f"line {i}\n" for i in range(400))
    _assert_tail_in_blocks(page, full)
    assert page.locator("#out-m").text_content() == full
    assert not [m for m in browser.messages(page) if m.startswith(("pageerror", "error"))]


def test_the_messages_view_shows_the_first_part_of_each_huge_body(env, browser):
    key = env.client.create_group("big", ["m"])["machines"][0]["key"]
    with pinned_http(env.server) as http:
        cred = enroll(http, key)
    body = {"note": "z" * 250_000}  # under the 256 KiB limit of a body

    async def work(m: Any) -> None:
        for i in range(6):
            await m.send_msg(f"user.big{i}", {**body, "n": i}, to="master")

    thread, failure = _run_machine(env, cred, work)
    thread.join(120)
    if failure:
        raise failure[0]
    page = login(browser, env.server, env.token, "/dashboard/groups/big/messages")
    bodies = page.locator("#messages pre.body")
    expect(bodies).to_have_count(6)
    for i in range(6):
        text = bodies.nth(i).text_content()
        assert text.startswith("{\n") and text.endswith("…"), text[:80]
        assert len(text) == views.BODY_SHOWN + 1
    assert not [m for m in browser.messages(page) if m.startswith(("pageerror", "error"))]
    assert_no_traceback_in_server_log(env.server)


def test_the_kv_view_shows_the_first_keys_of_a_group_that_has_many(env, browser):
    key = env.client.create_group("big", ["m"])["machines"][0]["key"]
    many = views.KV_KEYS_SHOWN + 20
    with pinned_http(env.server) as http:
        cred = enroll(http, key)
        for i in range(many):
            r = http.put(
                f"/v1/agent/kv/k{i:05d}",
                json={"value": "v" * 3000},
                headers={"Authorization": bearer(cred)},
            )
            assert r.status_code == 200, r.text
    page = login(browser, env.server, env.token, "/dashboard/groups/big/kv")
    rows = page.locator("#kv tbody tr")
    expect(rows).to_have_count(views.KV_KEYS_SHOWN)
    expect(rows.first.locator("code")).to_have_text("k00000")  # in the keys' order
    expect(page.locator("#kv-more")).to_have_text(
        f"The first {views.KV_KEYS_SHOWN} of {many} keys: crc kv list big lists them all, "
        "crc kv get big KEY shows one."
    )
    value = rows.first.locator("pre.body").text_content()
    assert value.endswith("…") and len(value) == views.KV_VALUE_SHOWN + 1
    assert not [m for m in browser.messages(page) if m.startswith(("pageerror", "error"))]
    assert_no_traceback_in_server_log(env.server)


def test_a_finished_job_with_more_output_than_a_page_reads_shows_each_machines_end(env, browser):
    """Twelve machines print 4 MB each (about what the server keeps per machine), in
    more events than the page reads at once: more than the page reads in all, yet each
    machine's output is shown to its last line."""
    names = [f"m{i}" for i in range(12)]
    keys = {m["name"]: m["key"] for m in env.client.create_group("big", names)["machines"]}
    with pinned_http(env.server) as http:
        creds = {name: enroll(http, keys[name]) for name in names}
    block = ("x" * 35 + "\n") * 1000  # 36,000 characters; 115 of them stay under 4 MiB
    failure: list[BaseException] = []
    job_id = ""

    async def machine(name: str, started: asyncio.Event) -> None:
        async with wire_agent(env.server, creds[name], "big", name) as m:
            started.set()
            run = await m.next_msg()
            assert run["type"] == "job.run"
            job = run["body"]["job_id"]
            await m.send_msg("job.started", {"job_id": job})
            for _ in range(115):
                await m.send_msg("job.output", {"job_id": job, "stream": "stdout", "data": block})
            await m.send_msg(
                "job.output", {"job_id": job, "stream": "stdout", "data": f"END {name}"}
            )
            await m.send_msg("job.result", {"job_id": job, "status": "succeeded", "exit_code": 0})

    async def main() -> None:
        nonlocal job_id
        started = {name: asyncio.Event() for name in names}
        tasks = [asyncio.create_task(machine(n, started[n])) for n in names]
        for event in started.values():
            await event.wait()
        job_id = (await asyncio.to_thread(env.client.start_job, "big", "all", command="x"))[
            "job_id"
        ]
        await asyncio.gather(*tasks)

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the test's thread
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(240)
    if failure:
        raise failure[0]
    page = login(browser, env.server, env.token, f"/dashboard/jobs/{job_id}")
    expect(page.locator("#live-text")).to_have_text("finished")
    expect(page.locator("#output-cut")).to_be_visible()
    ends = {name: page.locator(f"#out-{name}").text_content()[-40:] for name in names}
    assert all(ends[name].endswith(f"x\nEND {name}") for name in names), ends
    assert all(_shown_chars(page, f"#out-{name}") <= views.OUTPUT_TAIL for name in names)
    assert not [m for m in browser.messages(page) if m.startswith(("pageerror", "error"))]
    assert_no_traceback_in_server_log(env.server)


def test_the_kv_view_names_the_user_behind_a_masters_write(env, browser):
    key = env.client.create_group("big", ["m"])["machines"][0]["key"]
    with pinned_http(env.server) as http:
        cred = enroll(http, key)
        r = http.put(
            "/v1/agent/kv/from-m", json={"value": 1}, headers={"Authorization": bearer(cred)}
        )
        assert r.status_code == 200, r.text
    env.client.kv_set("big", "from-master", 2)
    page = login(browser, env.server, env.token, "/dashboard/groups/big/kv")
    rows = page.locator("#kv tbody tr")
    expect(rows).to_have_count(2)
    user = env.client.whoami()["user"]
    by = {
        rows.nth(i).locator("code").text_content(): rows.nth(i).locator("td").nth(4).text_content()
        for i in range(2)
    }
    assert by["from-m"] == "m"
    assert by["from-master"] == f"master ({user})", by
    assert_no_traceback_in_server_log(env.server)
