"""Everything a machine sends reaches the dashboard as text: a hostile machine (the raw
wire protocol, tests/system/wire_helpers.py) puts script and markup into every field it
controls - host name, OS, addresses, progress, job output and result reason, message
bodies to the master and to a peer and a message's type, key/value values - and a
real Chromium shows each literally, runs none of it, and injects no element; both when
the text arrives live (the page's script, htmx panel refreshes) and when the page is
rendered by the server afterwards."""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any

from hostile_pages import machines_speak
from playwright.sync_api import expect
from wire_helpers import bearer, pinned_http, wire_agent

SCRIPT = "<script>window.__xss='script'</script>"
IMG = '"><img src=x onerror="window.__xss=\'img\'">'
SVG = "'><svg onload=window.__xss='svg'>"
ARCH = "<svg onload=__xss='arch'>"  # short enough for the arch fact
PAYLOAD = f"{SCRIPT}{IMG}{SVG}"
JSON_PAYLOAD = PAYLOAD.replace('"', '\\"')  # how it reads inside a JSON document


def assert_inert(browser: Any, page: Any, where: str) -> None:
    """Nothing ran and nothing was injected: no flag, no element a payload would make,
    only the page's own scripts, and no CSP refusal (which would mean markup got in)."""
    assert page.evaluate("typeof window.__xss") == "undefined", where
    injected = page.evaluate(
        "document.querySelectorAll('img, svg, iframe, object, embed, "
        'script:not([src]):not([type="application/json"])\').length'
    )
    assert injected == 0, where
    refused = [m for m in browser.messages(page) if "Refused" in m or "Content Security" in m]
    assert not refused, (where, refused)


def test_hostile_machine_text_is_shown_literally_and_never_runs(env, browser):
    async def hostile(
        creds: dict[str, str], job_started: queue.Queue[str], job_page_open: threading.Event
    ) -> None:
        async with (
            wire_agent(env.server, creds["m"], "xss", "m") as m,
            wire_agent(env.server, creds["p"], "xss", "p") as p,
        ):
            await m.send_msg(
                "facts",
                {
                    "hostname": PAYLOAD,
                    "os": "linux",
                    "os_release": PAYLOAD,
                    "arch": ARCH,
                    "ips": [PAYLOAD, "10.0.0.5"],
                },
            )
            await m.send_msg("progress", {"text": PAYLOAD, "percent": 42})
            await m.send_msg("user.report", {"note": PAYLOAD}, to="master")
            await m.send_msg("user.peer", {"note": PAYLOAD}, to="p")
            await p.next_msg()
            await m.send_msg(f"user.{IMG}", {}, to="master")  # markup in a message type: refused
            with pinned_http(env.server) as http:
                r = http.put(
                    "/v1/agent/kv/evil",
                    json={"value": {"html": PAYLOAD}},
                    headers={"Authorization": bearer(creds["m"])},
                )
                assert r.status_code == 200, r.text
            job_id = env.client.start_job("xss", "m", command="echo hi")["job_id"]
            run = await m.next_msg()
            assert run["type"] == "job.run"
            job_started.put(job_id)
            assert await asyncio.to_thread(job_page_open.wait, 60)
            await m.send_msg("job.started", {"job_id": job_id})
            await m.send_msg("job.output", {"job_id": job_id, "stream": "stdout", "data": PAYLOAD})
            await m.send_msg(
                "job.result",
                {"job_id": job_id, "status": "failed", "exit_code": 3, "reason": PAYLOAD},
            )
            env.client.report_run(
                "xss",
                {
                    "type": "step",
                    "run_id": "0" * 32,
                    "step": "one",
                    "state": "failed",
                    "attempt": 1,
                    "message": PAYLOAD,
                },
            )

    pages, job_id = machines_speak(env, browser, "xss", ["m", "p"], "0" * 32, hostile)

    def check(stage: str) -> None:
        machines = pages["machines"]
        row = machines.locator("#machines .vrow[data-name='m']")
        expect(row.locator(".c-progress")).to_have_text(f"42% {PAYLOAD}")
        expect(row.locator(".c-os")).to_have_text(f"{PAYLOAD} {ARCH}")
        # A host name or address that is not one was left out by the server.
        expect(row.locator(".c-ips")).to_contain_text("10.0.0.5")
        expect(row.locator(".c-ips")).not_to_contain_text("script")
        messages = pages["messages"].locator("#messages")
        expect(messages.locator("tr")).to_have_count(3)  # the head, then 2 messages
        expect(messages).to_contain_text(JSON_PAYLOAD)  # bodies are shown as JSON
        expect(messages).not_to_contain_text(f"user.{IMG}")  # refused: not a message type
        expect(pages["kv"].locator("#kv")).to_contain_text(JSON_PAYLOAD)
        events = pages["events"].locator("#events")
        expect(events).to_contain_text(PAYLOAD)  # the job's output, as it came
        expect(events).to_contain_text(JSON_PAYLOAD)  # facts, messages
        expect(pages["run"].locator("#step-one .step-message")).to_have_text(PAYLOAD)
        job = pages["job"]
        expect(job.locator("#out-m")).to_have_text(PAYLOAD)
        expect(job.locator("#targets tr[data-machine='m'] .reason")).to_have_text(PAYLOAD)
        expect(job.locator("#targets tr[data-machine='m'] .exit")).to_have_text("3")
        for name, page in pages.items():
            assert_inert(browser, page, f"{stage}: {name}")

    check("live")  # arrived while the pages were open
    for page in pages.values():
        page.reload()
    check("rendered")  # drawn by the server from what it stored
    assert env.client.job(job_id)["targets"][0]["reason"] == PAYLOAD[:500]
