"""A machine is untrusted: nothing it says may reach a peer as config or a crash.

Each test plays an attacker holding one machine's credential (enrolled by hand, speaking
the raw wire protocol) against a real server and real agents on loopback, and checks
the promise from the outside: the peers' hosts files, their ability to run jobs, and
that every read of the group keeps working.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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

from cloudremotecontrol.protocol.limits import MAX_JSON_DEPTH

FINAL = ("succeeded", "failed", "timed_out", "cancelled", "lost")


@pytest.fixture
def http(server: Any) -> Iterator[httpx.Client]:
    with pinned_http(server) as client:
        yield client


def deep(levels: int) -> dict[str, Any]:
    """``{"d": [[[...]]]}`` nested ``levels`` deep: about 2 bytes a level."""
    inner: Any = []
    for _ in range(levels - 2):
        inner = [inner]
    return {"d": inner}


def _wait(pred: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def _runs_jobs(env: Any, machine: str, timeout: float = 30.0) -> None:
    """The machine's agent still takes jobs: one runs to success within ``timeout``."""
    job = env.client.start_job("lab", machine, argv=["echo", "still alive"], timeout=20)
    target = _wait(
        lambda: (t := env.client.job(job["job_id"])["targets"][0])["status"] in FINAL and t,
        f"a job on {machine} to end",
        timeout,
    )
    assert target["status"] == "succeeded", target


def _events(env: Any, kind: str) -> list[dict[str, Any]]:
    return [e for e in env.client.events("lab") if e["type"] == kind]


# -- finding 1: hosts-file injection through facts ------------------------------------------

INJECTIONS = [
    "fe80::1%x\n6.6.6.6 bank.example.com\n#",
    "fe80::2%y\n# END cloudremotecontrol group=lab\n7.7.7.7 evil.example.com\n#",
]


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare(1) to give the agent its own /etc/hosts",
)
def test_facts_with_injected_addresses_never_reach_a_peers_hosts_file(env, http):
    out = env.client.create_group(
        "lab", ["a", "c"], settings={"sync_hosts": True, "hosts_ip": "private"}
    )
    keys = {m["name"]: m["key"] for m in out["machines"]}
    hosts = env.tmp / "hosts-a"
    hosts.write_bytes(b"127.0.0.1 localhost\n")
    script = 'mount --bind "$0" /etc/hosts && exec "$@"'
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(hosts)]
    env.agent("a", keys["a"], prefix=prefix)
    env.wait_state("lab", ["a"], "ready")
    cred = enroll(http, keys["c"])

    async def hostile() -> list[dict[str, Any]]:
        async with wire_agent(env.server, cred, "lab", "c") as c:
            frames = await c.send_msg(
                "facts",
                {
                    "hostname": "c\n6.6.6.6 bank.example.com",
                    # The first private address is the one synced: the variant that
                    # would leave lines outside the managed block, where they survive.
                    "ips": INJECTIONS[::-1],
                    "private_ips": INJECTIONS[::-1],
                },
            )
            # Then honest facts: the automatic sync that follows must list c normally.
            honest = {"hostname": "c", "ips": ["10.9.9.9"], "private_ips": ["10.9.9.9"]}
            await c.send_msg("facts", honest)
            return frames

    asyncio.run(hostile())
    _wait(lambda: b"10.9.9.9 c c.lab" in hosts.read_bytes(), "the honest sync on a", 30)
    content = hosts.read_bytes()
    assert b"bank.example.com" not in content and b"evil.example.com" not in content, content
    assert b"6.6.6.6" not in content and b"7.7.7.7" not in content, content
    assert content.count(b"# END cloudremotecontrol") == 1, content
    # What the server kept of c is only what is valid; the master sees what was refused.
    c = next(m for m in env.client.group("lab")["machines"] if m["name"] == "c")
    assert c["facts"]["private_ips"] == ["10.9.9.9"] and c["facts"]["hostname"] == "c"
    rejected = _events(env, "facts.rejected")
    assert rejected and rejected[0]["machine"] == "c", rejected
    assert any("private_ips" in r for r in rejected[0]["data"]["rejected"]), rejected
    assert_no_traceback_in_server_log(env.server)


# -- finding 2: one message wedges a peer ----------------------------------------------------


def test_a_peer_message_nested_490_deep_is_refused_and_the_receiver_still_runs_jobs(env, http):
    keys = {m["name"]: m["key"] for m in env.client.create_group("lab", ["a", "b"])["machines"]}
    env.agent("b", keys["b"])
    env.wait_state("lab", ["b"], "ready")
    cred = enroll(http, keys["a"])
    body = deep(490)
    assert len(json.dumps(body, separators=(",", ":"))) < 1100  # about 1 KiB

    async def hostile() -> list[dict[str, Any]]:
        async with wire_agent(env.server, cred, "lab", "a") as a:
            return await a.send_msg("user.x", body, to="b")

    frames = asyncio.run(hostile())
    _runs_jobs(env, "b")  # the machine it was sent to still runs jobs
    # The sender gets a protocol error for its message (and the ack: never re-sent).
    assert [f["type"] for f in frames] == ["error", "ack"], frames
    assert frames[0]["error"]["code"] == "too_deep", frames
    assert not _events(env, "message.sent")
    assert_no_traceback_in_server_log(env.server)


def test_a_master_message_nested_too_deep_is_a_clear_4xx_and_nothing_is_queued(env, http):
    env.group_with_agents("lab", ["b"])
    alice = {"Authorization": bearer(env.token)}
    for levels in (490, MAX_JSON_DEPTH + 1):
        r = http.post(
            "/v1/groups/lab/messages",
            json={"to": "b", "type": "user.x", "body": deep(levels)},
            headers=alice,
        )
        assert_error(r, 400, "too_deep", str(MAX_JSON_DEPTH))
    # At the limit it is accepted (the limit is the documented one, not lower).
    r = http.post(
        "/v1/groups/lab/messages",
        json={"to": "b", "type": "user.x", "body": deep(MAX_JSON_DEPTH)},
        headers=alice,
    )
    assert r.status_code == 201, r.text
    _runs_jobs(env, "b")
    assert len(_events(env, "message.sent")) == 1
    assert_no_traceback_in_server_log(env.server)


def _queue_raw(db_path: Path, machine: str, envelopes: list[dict[str, Any]]) -> list[int]:
    """Put messages into a machine's outbox as a server of an older version stored them
    (before anything checked their depth): the server must be stopped."""
    seqs = []
    with sqlite3.connect(db_path) as db:
        mid, group = db.execute(
            "SELECT m.id, g.name FROM machines m JOIN groups g ON g.id = m.group_id "
            "WHERE m.name = ?",
            (machine,),
        ).fetchone()
        for env in envelopes:
            (nxt,) = db.execute("SELECT out_next FROM machines WHERE id = ?", (mid,)).fetchone()
            db.execute("UPDATE machines SET out_next = ? WHERE id = ?", (nxt + 1, mid))
            full = {
                "id": uuid.uuid4().hex,
                "group": group,
                "from": "master",
                "to": machine,
                "body": {},
                "correlation_id": None,
                "created": time.time(),
                **env,
            }
            frame = json.dumps({"type": "msg", "seq": nxt, "msg": full})
            db.execute(
                "INSERT INTO outbox (machine_id, seq, type, job_id, envelope) "
                "VALUES (?, ?, ?, NULL, ?)",
                (mid, nxt, str(full["type"]), frame),
            )
            seqs.append(nxt)
    return seqs


def test_messages_the_agent_cannot_process_are_dead_lettered_and_never_block_it(env):
    env.group_with_agents("lab", ["b"])
    env.server.stop()
    seqs = _queue_raw(
        env.server.data_dir / "crc.db",
        "b",
        [
            {"type": "user.deep", "body": deep(490)},
            {"type": "bogus.thing", "body": {"x": 1}},
            {"type": "job.cancel", "body": {"job_id": ["not", "a", "string"]}},
            {"type": "user.fine", "body": {"n": 1}},
        ],
    )
    env.server.start()
    _runs_jobs(env, "b", timeout=60)
    failed = _wait(lambda: len(f := _events(env, "message.failed")) >= 3 and f, "dead letters")
    assert [(e["machine"], e["data"]["seq"], e["data"]["type"]) for e in failed] == [
        ("b", seqs[0], "user.deep"),
        ("b", seqs[1], "bogus.thing"),
        ("b", seqs[2], "job.cancel"),
    ]
    assert all(e["data"]["reason"] for e in failed)
    # The good message behind them arrived.
    r = env.agents[0]
    assert r.proc is not None and r.proc.poll() is None
    assert_no_traceback_in_server_log(env.server)


# -- finding 5: 500s from deep JSON ---------------------------------------------------------


def test_deep_json_is_refused_at_every_entry_and_every_read_keeps_working(env, http, crc):
    keys = {m["name"]: m["key"] for m in env.client.create_group("lab", ["a", "b"])["machines"]}
    env.agent("b", keys["b"])
    env.wait_state("lab", ["b"], "ready")
    cred = enroll(http, keys["a"])
    alice = {"Authorization": bearer(env.token)}
    machine = {"Authorization": bearer(cred)}
    body = deep(900)
    # HTTP: the master's kv, the machine's kv, master messages, group settings.
    for method, path, payload, auth in [
        ("PUT", "/v1/groups/lab/kv/k", {"value": body}, alice),
        ("PUT", "/v1/agent/kv/k", {"value": body}, machine),
        ("POST", "/v1/groups/lab/messages", {"to": "b", "type": "user.x", "body": body}, alice),
        (
            "POST",
            "/v1/groups",
            {"name": "g2", "machines": [{"name": "m"}], "settings": body},
            alice,
        ),
    ]:
        r = http.request(method, path, json=payload, headers=auth)
        assert r.status_code in (400, 413), (path, r.status_code, r.text)
        assert_error(r, r.status_code, r.json()["error"]["code"])

    # The wire: facts, progress and messages nested too deep are refused to the sender.
    async def hostile() -> list[list[dict[str, Any]]]:
        async with wire_agent(env.server, cred, "lab", "a") as a:
            return [
                await a.send_msg("facts", {"hostname": "a", "os": body}),
                await a.send_msg("progress", {"text": "x", "source": body}),
                await a.send_msg("user.x", body),
                await a.send_msg("progress", {"text": "a is fine"}),
            ]

    replies = asyncio.run(hostile())
    # Facts keep what is valid: the deep value is left out (and shown to the master).
    assert [[f["type"] for f in frames] for frames in replies] == [
        ["ack"],
        ["error", "ack"],
        ["error", "ack"],
        ["ack"],
    ], replies
    assert [f["error"]["code"] for f in replies[1] + replies[2] if f["type"] == "error"] == [
        "invalid_input",  # a progress source is text
        "too_deep",
    ]
    [rejected] = [e for e in env.client.events("lab") if e["type"] == "facts.rejected"]
    assert rejected["machine"] == "a" and rejected["data"]["rejected"] == ["os must be a string"]
    # Every read still answers: the group, its kv, its events; `crc status`, `crc wait`.
    r = http.get("/v1/groups/lab", headers=alice)
    assert r.status_code == 200, r.text
    a = r.json()["machines"][0]
    assert a["progress"]["text"] == "a is fine"
    assert a["facts"]["hostname"] == "a" and a["facts"]["os"] is None
    assert_error(http.get("/v1/groups/lab/kv/k", headers=alice), 404, "not_found")
    assert http.get("/v1/groups/lab/kv", headers=alice).json()["keys"] == []
    assert any(e["type"] == "progress" for e in env.client.events("lab"))
    r = crc("status", "lab")
    assert r.returncode == 0, r.stderr
    r = crc("wait", "lab", "--machines", "b", "--timeout", "20s")
    assert r.returncode == 0, r.stderr
    _runs_jobs(env, "b")
    assert_no_traceback_in_server_log(env.server)


# -- job reports a machine has no business sending ------------------------------------------


def test_reports_on_an_ended_or_held_target_change_nothing(env, http):
    """A machine may report only on jobs sent to it, and an ended target's record is
    final: output after its result is dropped, and a result for a target that rate
    control holds back (its job.run never sent) neither ends it nor releases it."""
    keys = {m["name"]: m["key"] for m in env.client.create_group("lab", ["a", "b"])["machines"]}
    creds = {name: enroll(http, key) for name, key in keys.items()}

    def job_events(job_id: str) -> list[tuple[str, str | None, Any]]:
        return [
            (e.type, e.machine, e.data.get("status") or e.data.get("data"))
            for e in env.client.job_events(job_id, follow=False)
        ]

    async def scenario() -> None:
        async with (
            wire_agent(env.server, creds["a"], "lab", "a") as a,
            wire_agent(env.server, creds["b"], "lab", "b") as b,
        ):
            job = env.client.start_job("lab", "a", argv=["true"])["job_id"]
            assert (await a.next_msg())["body"]["job_id"] == job
            await a.send_msg("job.result", {"job_id": job, "status": "succeeded", "exit_code": 0})
            late = {"job_id": job, "stream": "stdout", "data": "FORGED AFTER THE END\n"}
            assert [f["type"] for f in await a.send_msg("job.output", late)] == ["ack"]
            assert "FORGED AFTER THE END\n" not in [data for *_, data in job_events(job)]

            held = env.client.start_job("lab", "a,b", argv=["true"], max_concurrency=1)
            first = await asyncio.wait_for(a.next_msg(), 15)  # a goes first (name order)
            assert first["body"]["job_id"] == held["job_id"]
            forged = {
                "job_id": held["job_id"],
                "status": "succeeded",
                "exit_code": 0,
                "started": True,
                "output": [["stdout", "I never got this job\n"]],
            }
            await b.send_msg("job.result", forged)
            targets = {t["machine"]: t["status"] for t in env.client.job(held["job_id"])["targets"]}
            assert targets == {"a": "delivered", "b": "queued"}, targets
            # When a ends, b gets the job: the forged result released nothing, ended nothing.
            await a.send_msg(
                "job.result", {"job_id": held["job_id"], "status": "succeeded", "exit_code": 0}
            )
            second = await asyncio.wait_for(b.next_msg(), 15)
            assert second["body"]["job_id"] == held["job_id"]
            await b.send_msg(
                "job.result", {"job_id": held["job_id"], "status": "failed", "exit_code": 3}
            )
            targets = {t["machine"]: t["status"] for t in env.client.job(held["job_id"])["targets"]}
            assert targets == {"a": "succeeded", "b": "failed"}, targets
            assert "I never got this job\n" not in [d for *_, d in job_events(held["job_id"])]

    asyncio.run(scenario())
    assert_no_traceback_in_server_log(env.server)
