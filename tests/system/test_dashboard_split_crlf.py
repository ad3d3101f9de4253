"""A Windows line end (``\\r\\n``) that falls across two pieces of a job's output (one
ends in ``\\r``, the next starts with ``\\n``) is one line end on the job page, as the
page's script draws it live and as the server renders it on a reload, as when the output
comes in one piece; a carriage return anywhere else, the output's last character too, is
shown escaped (``\\r``). In a real Chromium; the machine speaks the raw wire protocol
(wire_helpers.py) to choose the pieces."""

from __future__ import annotations

import asyncio
import threading

from playwright.sync_api import expect
from test_dashboard_browser import login
from wire_helpers import enroll, pinned_http, wire_agent

PIECES = ["one\r", "\ntwo\r", "x\r", "\nend\r"]
SHOWN = "one\ntwo\\rx\nend\\r"  # "".join(PIECES) as the pages show it


def test_a_crlf_split_across_output_pieces_is_one_line_end_live_and_reloaded(env, browser):
    key = env.client.create_group("crlf", ["m"])["machines"][0]["key"]
    with pinned_http(env.server) as http:
        cred = enroll(http, key)
    job_id = env.client.start_job("crlf", "m", command="echo hi")["job_id"]
    page_open = threading.Event()
    failure: list[BaseException] = []

    async def machine() -> None:
        async with wire_agent(env.server, cred, "crlf", "m") as m:
            assert (await m.next_msg())["type"] == "job.run"
            assert await asyncio.to_thread(page_open.wait, 60)
            await m.send_msg("job.started", {"job_id": job_id})
            for piece in PIECES:
                await m.send_msg(
                    "job.output", {"job_id": job_id, "stream": "stdout", "data": piece}
                )
            await m.send_msg(
                "job.result", {"job_id": job_id, "status": "succeeded", "exit_code": 0}
            )

    def run() -> None:
        try:
            asyncio.run(machine())
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the test's thread
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        page = login(browser, env.server, env.token, f"/dashboard/jobs/{job_id}")
        expect(page.locator("#live-text")).to_have_text("live")
    finally:
        page_open.set()
        thread.join(60)
    if failure:
        raise failure[0]
    status = page.locator("#targets tr[data-machine='m'] .status")
    expect(status).to_have_text("succeeded")
    expect(page.locator("#out-m")).to_have_text(SHOWN)  # drawn by the script as it came
    page.reload()  # drawn by the server from the stored pieces: the same
    expect(page.locator("#out-m")).to_have_text(SHOWN)
