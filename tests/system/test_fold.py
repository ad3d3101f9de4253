"""``job.fold``: a short job is reported in one message (its start and output folded
into its result), a longer or chattier one streams as before; what the master sees is
the same either way (real server and agent processes over TLS)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any


def _in_done(env: Any) -> int:
    """The last message number the server applied from the group's one machine."""
    db = next(Path(env.server.data_dir).rglob("*.db"))
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT MAX(in_done) FROM machines").fetchone()[0])


def _statuses(env: Any, job_id: str) -> list[tuple[str, str | None]]:
    return [
        (e.type, e.data.get("status") if e.type == "job.status" else e.data.get("data"))
        for e in env.client.job_events(job_id, follow=False)
        if e.type in ("job.status", "job.output")
    ]


def _settle(env: Any) -> int:
    """Wait until the agent has nothing more to say (facts, ready): its message count
    stays put for a second."""
    last, since = _in_done(env), time.monotonic()
    while time.monotonic() - since < 1.0:
        time.sleep(0.1)
        now = _in_done(env)
        if now != last:
            last, since = now, time.monotonic()
    return last


def test_a_short_job_is_one_message_and_looks_the_same_to_the_master(env: Any) -> None:
    env.group_with_agents("lab", ["a"])
    before = _settle(env)
    for _ in range(3):
        result = env.client.run_wait("lab", "a", argv=["echo", "hi"])
        assert result.ok
    assert _in_done(env) - before == 3  # one job.result each, nothing else
    assert _statuses(env, result.job_id) == [
        ("job.status", "delivered"),
        ("job.status", "running"),
        ("job.output", "hi\n"),
        ("job.status", "succeeded"),
    ]


def test_a_job_longer_than_the_window_streams_its_start_and_output(env: Any) -> None:
    env.group_with_agents("lab", ["a"])
    before = _settle(env)
    started = env.client.start_job("lab", "a", argv=["sh", "-c", "echo early; sleep 2; echo late"])
    deadline = time.monotonic() + 30
    while env.client.job(started["job_id"])["targets"][0]["status"] != "running":
        assert time.monotonic() < deadline, "the start notice did not come while it ran"
        time.sleep(0.05)
    outputs = [d for t, d in _statuses(env, started["job_id"]) if t == "job.output"]
    assert outputs == ["early\n"]  # streamed while the job still runs
    deadline = time.monotonic() + 30
    while env.client.job(started["job_id"])["targets"][0]["status"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert _in_done(env) - before == 4  # started, two outputs, result
    assert [d for t, d in _statuses(env, started["job_id"]) if t == "job.output"] == [
        "early\n",
        "late\n",
    ]


def test_a_short_job_with_much_output_streams_it_all_in_order(env: Any) -> None:
    env.group_with_agents("lab", ["a"])
    script = (
        "i=0; while [ $i -lt 3000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done"
    )
    result = env.client.run_wait("lab", "a", argv=["sh", "-c", script])
    assert result.ok
    text = "".join(d or "" for t, d in _statuses(env, result.job_id) if t == "job.output")
    assert text.splitlines() == [f"line-{i}-" + "x" * 24 for i in range(3000)]


def test_the_wire_a_folded_result_with_its_ack_riding_on_it(env: Any) -> None:
    """By hand: the agent acknowledges job.run inside its folded result (msg.ack), and a
    bogus ack in a message is ignored without losing the message: the agent is told (an
    error frame, as for an ack frame), the server's log is not written once per such
    message."""
    import asyncio

    from wire_helpers import agent_envelope, enroll, msg_frame, pinned_http, recv_json, wire_agent

    out = env.client.create_group("lab", ["a"])
    with pinned_http(env.server) as http:
        cred = enroll(http, out["machines"][0]["key"])

    async def scenario() -> tuple[str, list[dict[str, Any]]]:
        async with wire_agent(env.server, cred, "lab", "a") as a:
            started = await asyncio.to_thread(env.client.start_job, "lab", "a", argv=["true"])
            while True:
                frame = await recv_json(a.ws)
                if frame["type"] == "msg" and frame["msg"]["type"] == "job.run":
                    break
            body = {
                "job_id": started["job_id"],
                "status": "succeeded",
                "exit_code": 0,
                "started": True,
                "output": [["stdout", "folded\n"]],
            }
            a.seq += 1
            env_ = agent_envelope("lab", "a", "job.result", body, fields={"id": "e" * 32})
            await a.ws.send(msg_frame(a.seq, env_, ack=frame["seq"]))
            frames = [await recv_json(a.ws)]
            # Bogus acks (never sent) ride on progress messages: ignored, messages kept.
            for i in range(20):
                progress = {**env_, "id": f"{i:032x}", "type": "progress", "body": {"text": "p"}}
                a.seq += 1
                await a.ws.send(msg_frame(a.seq, progress, ack=10**6))
                frames.append(await recv_json(a.ws))
                frames.append(await recv_json(a.ws))
            return started["job_id"], frames

    job_id, frames = asyncio.run(scenario())
    assert [f["type"] for f in frames] == ["ack"] + ["error", "ack"] * 20
    refused = frames[1]
    assert refused["error"] == {
        "code": "invalid_input",
        "message": "ack 1000000 for a message never sent",
    }, refused
    assert refused.get("seq") is None  # about the ack, not the message (which was kept)
    assert [f["seq"] for f in frames[2::2]] == list(range(2, 22))
    assert "ignoring the ack" not in env.server.log_path.read_text()
    assert _statuses(env, job_id) == [
        ("job.status", "delivered"),
        ("job.status", "running"),
        ("job.output", "folded\n"),
        ("job.status", "succeeded"),
    ]
    assert env.client.group("lab")["machines"][0]["progress"]["text"] == "p"
    db = next(Path(env.server.data_dir).rglob("*.db"))
    with sqlite3.connect(db) as conn:  # acknowledged: nothing left to send again
        assert conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
