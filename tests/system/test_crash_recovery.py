"""kill -9 at awkward moments: nothing acknowledged is lost, nothing runs twice."""

from __future__ import annotations

import json
import os
import signal
import time


def _wait_job(client, job_id, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        job = client.job(job_id)
        if all(
            t["status"] in ("succeeded", "failed", "timed_out", "cancelled", "lost")
            for t in job["targets"]
        ):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def test_job_accepted_before_crash_runs_after_restart(env, crc, tmp_path):
    agents = env.group_with_agents("lab", ["a"])
    agents["a"].stop()
    env.wait_state("lab", ["a"], "offline")
    marker = tmp_path / "ran.txt"
    started = env.client.start_job(
        "lab", "a", command=f"echo once >> {marker}; echo hello", shell="sh"
    )
    env.server.kill()  # SIGKILL right after the 201: the job must have been durable
    env.server.start()
    env.agent("a", None)
    job = _wait_job(env.client, started["job_id"])
    assert job["targets"][0]["status"] == "succeeded"
    assert marker.read_text() == "once\n"
    r = crc("events", "lab", "--json")
    outputs = [json.loads(x) for x in r.stdout.splitlines()]
    assert any(e["type"] == "job.output" and e["data"]["data"] == "hello\n" for e in outputs)


def test_result_produced_while_server_down_is_delivered(env, tmp_path):
    env.group_with_agents("lab", ["a"])
    marker = tmp_path / "ran.txt"
    started = env.client.start_job(
        "lab", "a", shell="sh", command=f"sleep 1.5; echo x >> {marker}; echo done"
    )
    deadline = time.monotonic() + 20
    while env.client.job(started["job_id"])["targets"][0]["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    env.server.kill()
    time.sleep(2.5)  # the job finishes while the server is gone
    env.server.start()
    job = _wait_job(env.client, started["job_id"])
    assert job["targets"][0]["status"] == "succeeded"
    assert marker.read_text() == "x\n"  # ran exactly once across the reconnect
    events = list(env.client.job_events(started["job_id"], follow=False))
    assert [e["data"]["data"] for e in events if e["type"] == "job.output"] == ["done\n"]


def _tagged(tag: str) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                    if fh.read().split(b"\0")[0] == tag.encode():
                        pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def test_agent_killed_mid_job_reports_lost_and_does_not_rerun(env, crc, tmp_path):
    agents = env.group_with_agents("lab", ["a"])
    marker = tmp_path / "starts.txt"
    tag = f"crc-leftover-{os.getpid()}"
    started = env.client.start_job(
        "lab",
        "a",
        shell="bash",
        command=f"echo start >> {marker}; (exec -a {tag} sleep 300) & exec -a {tag} sleep 300",
    )
    deadline = time.monotonic() + 20
    while (
        env.client.job(started["job_id"])["targets"][0]["status"] != "running"
        or len(_tagged(tag)) < 2
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    agents["a"].kill()
    time.sleep(0.5)
    assert len(_tagged(tag)) == 2  # kill -9 of the agent alone leaves the job running
    try:
        env.agent("a", None)
        job = _wait_job(env.client, started["job_id"])
        target = job["targets"][0]
        assert target["status"] == "lost"
        assert "not re-run" in target["reason"]
        # ... and the next agent ends what was left of it (not run twice, not left over).
        assert "2 process(es) it left running were killed" in target["reason"], target
        assert marker.read_text() == "start\n"
        deadline = time.monotonic() + 5
        while _tagged(tag):
            assert time.monotonic() < deadline, _tagged(tag)
            time.sleep(0.05)
    finally:
        for pid in _tagged(tag):
            os.kill(pid, signal.SIGKILL)
    r = crc("run", "lab", "--to", "a", "--", "true")
    assert r.returncode == 0


def test_machine_goes_offline_when_agent_dies_and_back_when_restarted(env):
    agents = env.group_with_agents("lab", ["a"])
    before = env.client.group("lab")["machines"][0]["last_seen"]
    agents["a"].kill()
    env.wait_state("lab", ["a"], "offline")
    env.agent("a", None)
    g = env.wait_state("lab", ["a"], "ready")
    assert g["machines"][0]["last_seen"] > before


def test_ctrl_c_in_crc_run_cancels_and_kills_the_process_tree(env, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    env.group_with_agents("lab", ["a"])
    tag = f"crc-tree-{os.getpid()}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cloudremotecontrol",
            "run",
            "lab",
            "--to",
            "a",
            "--shell",
            "bash",
            "--",
            f"(exec -a {tag} sleep 300) & exec -a {tag} sleep 300",
        ],
        env={**os.environ, **env.cli_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def tree():
        found = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as fh:
                        if fh.read().startswith(tag.encode()):
                            found.append(pid)
                except OSError:
                    pass
        return found

    deadline = time.monotonic() + 20
    while len(tree()) < 2:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "[a] cancelled" in err
    deadline = time.monotonic() + 10
    while tree():
        assert time.monotonic() < deadline, f"left running: {tree()}"
        time.sleep(0.05)
