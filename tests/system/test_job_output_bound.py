"""A job that writes far more output than the server keeps: the agent drops the rest
instead of queueing it, so a chatty job cannot fill the machine's disk with its outbox
while the server cannot be reached; the output the server keeps is the same, and the
result arrives once."""

from __future__ import annotations

import sqlite3
import time

from cloudremotecontrol.protocol.limits import MAX_OUTPUT_KEPT_BYTES
from conftest import Env

WRITTEN = 24 << 20


def _outbox(state_dir) -> tuple[int, int]:
    """(bytes of frames queued, job.result frames queued) in the agent's outbox."""
    db = sqlite3.connect(f"file:{state_dir / 'agent.db'}?mode=ro", uri=True)
    try:
        size, results = db.execute(
            "SELECT COALESCE(SUM(LENGTH(frame)), 0), "
            "COALESCE(SUM(frame LIKE '%\"job.result\"%'), 0) FROM outbox"
        ).fetchone()
    finally:
        db.close()
    return int(size), int(results)


def test_output_past_what_the_server_keeps_is_not_queued(env: Env, tmp_path) -> None:
    env.group_with_agents("lab", ["a"])
    go = tmp_path / "go"
    started = env.client.start_job(
        "lab",
        "a",
        shell="sh",
        command=f"while [ ! -e {go} ]; do sleep 0.05; done; "
        f"head -c {WRITTEN} /dev/zero | tr '\\0' x",
    )
    deadline = time.monotonic() + 30
    while env.client.job(started["job_id"])["targets"][0]["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    env.server.kill()  # the output is written while the server is gone
    go.touch()
    state_dir = env.tmp / "agents" / "a"
    deadline = time.monotonic() + 120
    while (queued := _outbox(state_dir))[1] == 0:
        assert time.monotonic() < deadline, queued
        time.sleep(0.1)
    assert queued[0] < MAX_OUTPUT_KEPT_BYTES * 1.2, queued  # not the 24 MiB written
    env.server.start()
    deadline = time.monotonic() + 60
    while (job := env.client.job(started["job_id"]))["targets"][0]["status"] == "running":
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    assert job["targets"][0]["status"] == "succeeded", job
    events = list(env.client.job_events(started["job_id"], follow=False))
    output = "".join(e["data"]["data"] for e in events if e["type"] == "job.output")
    # All the server keeps, as it would keep it of a job whose output it got whole (its
    # marker is missing when the chunks kept end exactly at the limit: server/ops/streams.py).
    assert output.count("x") == MAX_OUTPUT_KEPT_BYTES
    assert output.replace("x", "") in (
        "",
        f"\n[crc: output truncated at {MAX_OUTPUT_KEPT_BYTES} bytes]\n",
    )
    ends = [e for e in events if e["type"] == "job.status" and e["data"]["status"] == "succeeded"]
    assert len(ends) == 1
