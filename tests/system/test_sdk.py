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
from cloudremotecontrol.errors import InvalidInput, NotFound, TimedOut, Unavailable
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


# -- a closed client, an expect that times out, run()'s first item --------------------------


def _refused_as_closed(exc: pytest.ExceptionInfo[InvalidInput]) -> None:
    assert exc.value.code == "client_closed", exc.value
    assert "this client is closed" in exc.value.message


def test_a_closed_client_refuses_every_call_with_a_crc_error(env, tmp_path):
    """httpx's own RuntimeError ("Cannot send a request, as the client has been
    closed") came out of every call of a closed Client: no CrcError, no exit code."""
    env.group_with_agents("lab", ["a"])
    with Client(env.server.url, env.token, env.server.fingerprint) as c:
        assert c.whoami()
        follower = c.events("lab", follow=True)  # made, not yet read
        session = c.shell("lab", "a", argv=["sh", "-c", "read x; echo got $x; exit 2"])
    uses: list[Any] = [
        c.whoami,
        lambda: c.group("lab"),
        lambda: list(c.events("lab")),
        lambda: next(follower),
        lambda: list(c.run("lab", "a", argv=["true"])),
        lambda: c.run_wait("lab", "a", argv=["true"]),
        lambda: c.wait_ready("lab", timeout=1),
        lambda: c.wait_message("lab", "done", timeout=1),
        lambda: c.shell("lab", "a"),
        lambda: c.forward("lab", "a", 9).__enter__(),
        lambda: c.download_pulled("0" * 32, str(tmp_path / "x")),
    ]
    for use in uses:
        with pytest.raises(InvalidInput) as info:
            use()
        _refused_as_closed(info)
    c.close()  # closing again is harmless
    assert env.client.list_jobs("lab") == []  # nothing was started
    with session:  # a shell opened before has a connection of its own: it goes on
        session.send("yes\r")
        session.expect("got yes")
        assert session.wait(30) == 2


def test_a_closed_async_client_refuses_every_call_rather_than_reopen(env):
    """AsyncClient reopened its connection at the next call after close(): a client
    closed by its `async with` went on working, quietly holding connections."""
    env.group_with_agents("lab", ["a"])

    async def main() -> list[str]:
        async with AsyncClient(env.server.url, env.token, env.server.fingerprint) as c:
            assert await c.whoami()
        codes = []
        uses: list[Any] = [
            c.whoami,
            lambda: c.group("lab"),
            lambda: c.events("lab").__anext__(),
            lambda: c.run("lab", "a", argv=["true"]).__anext__(),
            lambda: c.run_wait("lab", "a", argv=["true"]),
            lambda: c.wait_ready("lab", timeout=1),
            lambda: c.shell("lab", "a"),
            lambda: c.forward("lab", "a", 9).__aenter__(),
            c.__aenter__,
        ]
        for use in uses:
            with pytest.raises(InvalidInput) as info:
                await use()
            _refused_as_closed(info)
            codes.append(info.value.code)
        await c.close()  # closing again is harmless
        return codes

    assert asyncio.run(main()) == ["client_closed"] * 9
    assert env.client.list_jobs("lab") == []


def test_expect_timing_out_is_a_crc_error_and_a_timeout_error_with_the_output_seen(env):
    """expect() raised the builtin TimeoutError (websockets' own message, the output it
    had read lost): not a CrcError, so no exit code, and no way to see what came."""
    env.group_with_agents("lab", ["a"])
    with env.client.shell("lab", "a", argv=["sh", "-c", "echo hello; sleep 30"]) as s:
        with pytest.raises(TimedOut) as info:
            s.expect("never printed", timeout=2)
        err = info.value
        assert isinstance(err, TimeoutError)  # `except TimeoutError` code goes on working
        assert err.code == "timeout" and err.exit_code == 6
        assert b"hello" in err.seen
        assert "'never printed' not seen within 2 s" in err.message
        assert "hello" in err.message  # the end of what came instead
        with pytest.raises(TimeoutError) as recv_info:  # recv's timeout: the same class
            s.recv(0.5)
        assert isinstance(recv_info.value, TimedOut) and recv_info.value.seen == b""


def test_run_yields_typed_events_only_job_accepted_first(env):
    """run() yielded a plain dict first (`{"type": "job.accepted", ...}`) and Events
    after: `ev.type` failed on the first item, against docs/sdk.md's "yield Events"."""
    env.group_with_agents("lab", ["a"])
    items = list(env.client.run("lab", "a", argv=["true"]))
    assert all(isinstance(ev, Event) for ev in items), items
    first = items[0]
    assert first.type == "job.accepted" and first.job_id == items[-1].job_id
    assert first.data == {"targets": ["a"]} and first["job_id"] == first.job_id
    assert items[-1].result is not None and items[-1].result.ok

    async def main() -> list[Any]:
        async with AsyncClient(env.server.url, env.token, env.server.fingerprint) as c:
            return [ev async for ev in c.run("lab", "a", argv=["true"])]

    items = asyncio.run(main())
    assert all(isinstance(ev, Event) for ev in items), items
    assert items[0].type == "job.accepted" and items[0].data == {"targets": ["a"]}
