"""Text a machine sends that a database, a JSON response or a page cannot hold: a lone
surrogate (``"\\ud800"``, which JSON can carry) and NUL characters. One machine's such
message is refused or kept in a form that can be stored, never a server whose
PostgreSQL writer died (every write of every user hung), a job that never ends, or
pages and reads that fail with 500. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator

import httpx
import pytest
from wire_helpers import (
    assert_error,
    assert_no_traceback_in_server_log,
    bearer,
    enroll,
    pinned_http,
    wire_agent,
)

from conftest import Env

SURROGATE = "a\ud800b"


@pytest.fixture
def http(db_env: Env) -> Iterator[httpx.Client]:
    with pinned_http(db_env.server) as client:
        yield client


def _creds(env: Env, http: httpx.Client, names: list[str]) -> dict[str, str]:
    machines = env.client.create_group("lab", names)["machines"]
    return {m["name"]: enroll(http, m["key"]) for m in machines}


def test_a_job_report_naming_an_invalid_job_id_is_given_up_and_writes_go_on(
    db_env: Env, http: httpx.Client
) -> None:
    creds = _creds(db_env, http, ["m1", "m2"])

    async def main() -> None:
        async with wire_agent(db_env.server, creds["m1"], "lab", "m1") as a1:
            for kind, body in (
                ("job.output", {"job_id": "\ud800", "stream": "stdout", "data": "x"}),
                ("job.started", {"job_id": "\ud800"}),
                ("job.result", {"job_id": "\ud800", "status": "failed"}),
            ):
                frames = await asyncio.wait_for(a1.send_msg(kind, body), 20)
                errors = [f for f in frames if f["type"] == "error"]
                assert errors and "valid Unicode" in errors[0]["error"]["message"], frames
        # Another machine's messages, and any write, are still stored.
        async with wire_agent(db_env.server, creds["m2"], "lab", "m2") as a2:
            frames = await asyncio.wait_for(a2.send_msg("progress", {"text": "still here"}), 20)
            assert frames[-1]["type"] == "ack", frames

    asyncio.run(main())
    machines = {m["name"]: m for m in db_env.client.group("lab")["machines"]}
    assert machines["m2"]["progress"]["text"] == "still here"
    db_env.client.create_group("after", ["x"])  # a write of the user's own
    assert http.get("/v1/health").status_code == 200
    assert_no_traceback_in_server_log(db_env.server)


def test_a_result_whose_reason_holds_nul_ends_its_job(db_env: Env, http: httpx.Client) -> None:
    creds = _creds(db_env, http, ["m1"])

    async def main() -> str:
        async with wire_agent(db_env.server, creds["m1"], "lab", "m1") as a1:
            job = db_env.client.start_job("lab", "m1", argv=["true"])["job_id"]
            msg = await asyncio.wait_for(a1.next_msg(), 20)
            assert msg["type"] == "job.run" and msg["body"]["job_id"] == job, msg
            body = {"job_id": job, "status": "failed", "exit_code": 3, "reason": "bad\x00why"}
            frames = await asyncio.wait_for(a1.send_msg("job.result", body), 20)
            assert [f["type"] for f in frames] == ["ack"], frames
            return str(job)

    job = asyncio.run(main())
    [target] = db_env.client.job(job)["targets"]
    assert (target["status"], target["exit_code"]) == ("failed", 3), target
    assert target["reason"] == "bad\ufffdwhy", target
    assert_no_traceback_in_server_log(db_env.server)


def test_surrogates_are_refused_and_pages_and_reads_still_work(
    db_env: Env, http: httpx.Client
) -> None:
    creds = _creds(db_env, http, ["m1", "m2"])
    as_m1 = {"Authorization": bearer(creds["m1"]), "Content-Type": "application/json"}
    # json.dumps writes the surrogate as the escape \ud800: valid JSON.
    r = http.put("/v1/agent/kv/k1", content='{"value": "a\\ud800b"}', headers=as_m1)
    assert_error(r, 400, "invalid_input", "valid Unicode")
    r = http.put("/v1/agent/kv/k1", content=json.dumps({"value": {"k\ud800": 1}}), headers=as_m1)
    assert_error(r, 400, "invalid_input", "valid Unicode")

    async def main() -> None:
        async with wire_agent(db_env.server, creds["m1"], "lab", "m1") as a1:
            for to, body in (("master", {"t": SURROGATE}), ("m2", {"list": [SURROGATE]})):
                frames = await asyncio.wait_for(a1.send_msg("user.x", body, to=to), 20)
                errors = [f for f in frames if f["type"] == "error"]
                assert errors and "valid Unicode" in errors[0]["error"]["message"], frames
            frames = await asyncio.wait_for(a1.send_msg("user.x", {"t": "fine"}), 20)
            assert [f["type"] for f in frames] == ["ack"], frames

    asyncio.run(main())
    r = http.put("/v1/agent/kv/k1", json={"value": "fine"}, headers=as_m1)
    assert r.status_code == 200, r.text
    assert db_env.client.kv_get("lab", "k1")["value"] == "fine"
    # The owner's dashboard pages.
    page = http.get("/dashboard/login")
    form = re.search(r'name="form_token" value="([^"]+)"', page.text)
    assert form is not None, page.text[:500]
    r = http.post(
        "/dashboard/login",
        data={"token": db_env.token, "form_token": form.group(1)},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    for path in ("", "/kv", "/events", "/messages"):
        r = http.get(f"/dashboard/groups/lab{path}")
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
    assert_no_traceback_in_server_log(db_env.server)
