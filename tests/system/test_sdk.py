"""The SDK as its users use it (docs/sdk.md): the example script, the typed records,
the asyncio client, against a real server and real agents."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cloudremotecontrol import AsyncClient, Client
from cloudremotecontrol.errors import NotFound, Unavailable
from cloudremotecontrol.master.types import Event, JobResult

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sdk_scenario.py"
CRC = f"{sys.executable} -m cloudremotecontrol"


def test_the_example_scenario_script_runs_end_to_end(env):
    r = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        env={**os.environ, **env.cli_env, "GROUP": "example"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "install: {'db': 'succeeded'}" in r.stdout
    assert "db says user.installed {'ok': True}" in r.stdout
    actions = [a["action"] for a in env.client.audit("example")]  # the record stays
    assert actions[0] == "group.create" and actions[-1] == "group.delete", actions
    assert '[web] "' in r.stdout  # web read db's address from the kv store
    assert env.client.list_groups() == []


def test_both_clients_have_the_same_methods():
    def public(cls: type) -> dict[str, inspect.Signature]:
        return {
            name: inspect.signature(fn)
            for name, fn in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_")
        }

    sync, aio = public(Client), public(AsyncClient)
    assert sorted(sync) == sorted(aio)
    for name, sig in sync.items():
        assert list(sig.parameters) == list(aio[name].parameters), name


def test_profile_url_and_fingerprint_are_public(env):
    c = env.client
    assert c.url == env.server.url and c.urls == [env.server.url]
    assert c.fingerprint == env.server.fingerprint
    assert c.cert_pem and "BEGIN CERTIFICATE" in c.cert_pem


def test_wait_ready_and_typed_events_and_results(env):
    c = env.client
    created = c.create_group("lab", ["a", "b"])
    with pytest.raises(NotFound, match="no machine 'zz' in group 'lab'"):
        c.wait_ready("lab", timeout=1, machines=["zz"])
    with pytest.raises(Unavailable, match="not ready: a, b") as info:
        c.wait_ready("lab", timeout=1)
    assert info.value.code == "timeout"
    keys = {m["name"]: m["key"] for m in created["machines"]}
    for name, key in keys.items():
        env.agent(name, key)
    seen: list[Event] = []
    g = c.wait_ready("lab", timeout=60, on_event=seen.append)
    assert {m["state"] for m in g["machines"]} == {"ready"}
    assert seen and all(isinstance(e, Event) for e in seen)
    assert {e.machine for e in seen if e.type == "machine.state"} == {"a", "b"}
    res = c.run_wait("lab", "all", command="echo out; exit 3")
    assert res.exit_code == 3 and not res.ok
    assert res.results["a"] == JobResult("a", "failed", 3, None, res.job_id)
    doc = res.to_dict()
    assert doc["exit_code"] == 3 and doc["results"]["b"]["status"] == "failed"
    assert json.loads(json.dumps(doc)) == doc
    out = [e for e in c.job_events(res.job_id, follow=False) if e.type == "job.output"]
    assert {e.machine for e in out} == {"a", "b"}
    ev = out[0]
    # The typed record and its dict form are the same event.
    assert ev["data"] is ev.data and ev.get("machine") == ev.machine
    assert dict(ev) == ev.to_dict() and set(ev) == {
        "cursor",
        "time",
        "type",
        "machine",
        "job_id",
        "data",
    }
    assert c.job_results(res.job_id) == res.results


def test_an_async_clients_on_event_may_be_a_plain_function_returning_anything(env):
    """docs/sdk.md's own handler, `lambda ev: ev.type == "job.output" and print(...)`,
    returns False for every other event: only what is awaitable is awaited."""
    env.group_with_agents("lab", ["a"])

    async def main() -> tuple[list[Event], Any]:
        seen: list[Event] = []
        async with AsyncClient(env.server.url, env.token, env.server.fingerprint) as c:
            res = await c.run_wait(
                "lab",
                "a",
                command="echo hi",
                on_event=lambda ev: ev.type == "job.output" and seen.append(ev),
            )
        return seen, res

    seen, res = asyncio.run(main())
    assert res.results["a"].ok, res
    assert [ev.data["data"] for ev in seen] == ["hi\n"]


def test_async_client_does_what_the_sync_one_does(env, tmp_path):
    env.group_with_agents("lab", ["a"])
    local = tmp_path / "f.txt"
    local.write_text("hello\n")

    async def scenario() -> dict[str, Any]:
        async with AsyncClient(env.server.url, env.token, env.server.fingerprint) as c:
            seen: list[Event] = []

            async def on_event(ev: Event) -> None:
                seen.append(ev)

            g = await c.wait_ready("lab", timeout=30)
            res = await c.run_wait(
                "lab",
                "a",
                command=f"echo hi; {CRC} agent emit done '{{\"n\": 2}}'",
                on_event=on_event,
            )
            msg = await c.wait_message("lab", "done", sender="a", timeout=30)
            await c.kv_set("lab", "k", {"v": 1})
            kv = await c.kv_get("lab", "k")
            pushed = await c.push("lab", "a", str(local), str(tmp_path / "remote.txt"))
            async for ev in c.follow_job(pushed["job_id"], pushed["targets"]):
                assert ev.result is None or ev.result.ok, ev
            events = [e async for e in c.events("lab", types=("job.created",))]
            pull = await c.start_pull("lab", "a", str(tmp_path / "remote.txt"))
            async for _ in c.follow_job(pull["job_id"], pull["targets"]):
                pass
            info = await c.download_pulled(pull["job_id"], str(tmp_path / "back.txt"))
            return {
                "ready": [m["state"] for m in g["machines"]],
                "res": res,
                "seen": seen,
                "msg": msg,
                "kv": kv,
                "pushed": pushed,
                "jobs": [e.data["type"] for e in events],
                "info": info,
            }

    got = asyncio.run(scenario())
    assert got["ready"] == ["ready"]
    assert got["res"].ok and got["res"].exit_code == 0
    assert any(e.type == "job.output" and "hi" in e.data["data"] for e in got["seen"])
    assert (got["msg"].sender, got["msg"].body) == ("a", {"n": 2})
    assert got["kv"]["value"] == {"v": 1}
    assert got["jobs"] == ["job.run", "file.put"]
    assert (tmp_path / "back.txt").read_text() == "hello\n" and got["info"]["size"] == 6


def _running_then(env: Any, group: str) -> Client:
    env.group_with_agents(group, ["a"])
    return Client(env.server.url, env.token, env.server.fingerprint)


def _wait_status(c: Client, job_id: str, status: str) -> None:
    import time

    deadline = time.monotonic() + 30
    while (r := c.job_results(job_id).get("a")) is None or r.status != status:
        assert time.monotonic() < deadline, c.job_results(job_id)
        time.sleep(0.1)


def test_run_wait_halted_raises_rather_than_report_a_success(env):
    """With no results, RunResult counted as ok with exit code 0 (all([]), max(default=0)):
    a job that fails was reported a success."""
    import threading

    with _running_then(env, "lab") as c:
        threading.Timer(1.0, c.halt).start()
        with pytest.raises(Unavailable, match=r"following it was halted before a ended") as info:
            c.run_wait("lab", "a", command="sleep 3; exit 4")
        assert info.value.code == "halted"
        job_id = info.value.details["job_id"]
        _wait_status(env.client, job_id, "failed")  # not cancelled: it went on to its end
        assert env.client.job_results(job_id)["a"].code == 4


def test_run_wait_interrupted_cancels_its_job(env):
    """Ctrl-C in a script (here raised by on_event, as the signal handler would) left the
    job running, and the caller without its id."""

    def interrupt(ev: Event) -> None:
        if ev.type == "job.output":
            raise KeyboardInterrupt

    with _running_then(env, "lab") as c:
        with pytest.raises(KeyboardInterrupt):
            c.run_wait("lab", "a", command="echo started; sleep 60", on_event=interrupt)
        job_id = c.list_jobs("lab")[0]["job_id"]
        _wait_status(c, job_id, "cancelled")


def test_async_run_wait_cancelled_cancels_its_job(env):
    async def go() -> str:
        async with AsyncClient(env.server.url, env.token, env.server.fingerprint) as c:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(c.run_wait("lab", "a", command="sleep 60"), 2)
            return str((await c.list_jobs("lab"))[0]["job_id"])

    env.group_with_agents("lab", ["a"])
    job_id = asyncio.run(go())
    _wait_status(env.client, job_id, "cancelled")
