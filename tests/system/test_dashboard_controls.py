"""Control characters and bidirectional marks a machine sends are shown escaped on the
dashboard, as the CLI shows them (``terminal.safe``: ``\\x1b``, ``\\u202e``): a machine
can neither hide part of its text (a backspace, a carriage return) nor make it read in
another order (U+202E reverses the rest of the line). In a real Chromium, for text the
server renders and for text the page's script draws as it arrives."""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any

from hostile_pages import machines_speak
from playwright.sync_api import expect
from wire_helpers import bearer, pinned_http, wire_agent

from cloudremotecontrol.terminal import safe

HOSTILE = "ctl\x1b[31mRED\x07bell\x08\x08bs\rCR\u202eRTL-override"
SHOWN = safe(HOSTILE)  # ctl\x1b[31mRED\x07bell\x08\x08bs\rCR\u202eRTL-override
BIDI = "lin\u202eux-reversed"  # facts may hold no control character, but may this
RAW = ("\x1b", "\x07", "\x08", "\r", "\u202e")


def assert_no_raw_controls(page: Any, where: str) -> None:
    """Nothing the page shows holds a control character (but line ends and tabs) or a
    bidirectional override."""
    shown = page.evaluate("document.body.innerText")
    found = [repr(c) for c in RAW if c in shown]
    assert not found, (where, found, shown[:2000])


def test_controls_and_bidi_overrides_from_a_machine_are_shown_escaped(env, browser):
    run_id = "1" * 32

    async def machine(
        creds: dict[str, str], job_started: queue.Queue[str], job_page_open: threading.Event
    ) -> None:
        async with wire_agent(env.server, creds["m"], "ctl", "m") as m:
            await m.send_msg(
                "facts", {"hostname": "m", "os": "linux", "os_release": BIDI, "arch": "x86"}
            )
            await m.send_msg("progress", {"text": HOSTILE, "percent": 42})
            await m.send_msg("user.report", {"note": HOSTILE}, to="master")
            with pinned_http(env.server) as http:
                r = http.put(
                    "/v1/agent/kv/note",
                    json={"value": {"note": HOSTILE}},
                    headers={"Authorization": bearer(creds["m"])},
                )
                assert r.status_code == 200, r.text
            job_id = env.client.start_job("ctl", "m", command="echo hi")["job_id"]
            assert (await m.next_msg())["type"] == "job.run"
            job_started.put(job_id)
            assert await asyncio.to_thread(job_page_open.wait, 60)
            await m.send_msg("job.started", {"job_id": job_id})
            output = f"{HOSTILE}\nnext\tline\r\nwindows\n"
            await m.send_msg("job.output", {"job_id": job_id, "stream": "stdout", "data": output})
            await m.send_msg(
                "job.result",
                {"job_id": job_id, "status": "failed", "exit_code": 1, "reason": HOSTILE},
            )
            env.client.report_run(
                "ctl",
                {
                    "type": "step",
                    "run_id": run_id,
                    "step": "one",
                    "state": "failed",
                    "attempt": 1,
                    "message": HOSTILE,
                },
            )

    pages, _ = machines_speak(env, browser, "ctl", ["m"], run_id, machine)

    def check(stage: str) -> None:
        row = pages["machines"].locator("#machines .vrow[data-name='m']")
        expect(row.locator(".c-progress")).to_have_text(f"42% {SHOWN}")
        expect(row.locator(".c-os")).to_have_text(f"{safe(BIDI)} x86")
        # Bodies and values are shown as JSON: the controls are JSON's escapes there,
        # U+202E (which JSON leaves as it is) the CLI's.
        expect(pages["messages"].locator("#messages")).to_contain_text("CR\\u202eRTL-override")
        expect(pages["kv"].locator("#kv")).to_contain_text("CR\\u202eRTL-override")
        events = pages["events"].locator("#events")
        expect(events).to_contain_text(f"42% {SHOWN}")  # the progress event
        expect(events).to_contain_text(SHOWN)  # the output
        expect(pages["run"].locator("#step-one .step-message")).to_have_text(SHOWN)
        job = pages["job"]
        # Output keeps its lines (Windows' too) and tabs; every other control is escaped.
        expect(job.locator("#out-m")).to_have_text(f"{SHOWN}\nnext\tline\nwindows\n")
        expect(job.locator("#targets tr[data-machine='m'] .reason")).to_have_text(SHOWN)
        for name, page in pages.items():
            assert_no_raw_controls(page, f"{stage}: {name}")

    check("live")  # drawn by the pages' script as it arrived
    for page in pages.values():
        page.reload()
        expect(page.locator("#live-text")).not_to_have_text("connecting…")
    check("rendered")  # rendered by the server from what it stored
