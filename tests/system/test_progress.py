"""Progress from startup scripts: `crc agent progress`, `--follow-log`, gated readiness."""

from __future__ import annotations

import json
import subprocess
import sys
import time


def agent_cli(env, machine, *args):
    return env.agent_cli(machine, *args)


def _wait_for(fn, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not (value := fn()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return value


def test_gated_machine_reports_progress_and_turns_ready_when_told(env, crc, tmp_path):
    log = tmp_path / "cloud-init-output.log"
    log.write_text("Cloud-init v. 23.1 running\n")
    out = env.client.create_group("lab", ["db"])
    env.agent("db", out["machines"][0]["key"], extra=["--gate-ready", "--follow-log", str(log)])
    env.wait_state("lab", ["db"], "enrolled")
    waiter = subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", "wait", "lab", "--timeout", "60s"],
        env={**__import__("os").environ, **env.cli_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Its first line is the snapshot: from then on it follows every change.
    assert waiter.stdout.readline().startswith("[db] enrolled")
    with log.open("a") as fh:
        fh.write("Setting up mysql-server (8.0) ...\n")
    _wait_for(
        lambda: (
            (env.client.group("lab")["machines"][0]["progress"] or {}).get("text")
            == "Setting up mysql-server (8.0) ..."
        )
    )
    r = agent_cli(env, "db", "progress", "installing mysql", "--percent", "40")
    assert r.returncode == 0, r.stderr
    _wait_for(
        lambda: (
            (env.client.group("lab")["machines"][0]["progress"] or {}).get("text")
            == "installing mysql"
        )
    )
    assert env.client.group("lab")["machines"][0]["state"] == "enrolled"  # gated
    r = agent_cli(env, "db", "ready")
    assert r.returncode == 0, r.stderr
    stdout, stderr = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, stderr
    assert "[db] installing mysql (40%)" in stdout
    assert "[db] ready" in stdout
    texts = [e["data"]["text"] for e in env.client.events("lab") if e["type"] == "progress"]
    assert texts[:2] == ["Cloud-init v. 23.1 running", "Setting up mysql-server (8.0) ..."]
    r = crc("status", "lab", "--json")
    machine = json.loads(r.stdout)["machines"][0]
    assert machine["state"] == "ready" and machine["progress"]["percent"] == 40


def test_progress_without_a_running_agent_is_a_clear_error(env, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "cloudremotecontrol",
            "agent",
            "progress",
            "x",
            "--state-dir",
            str(tmp_path / "nothing"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 6
    assert "no agent is running" in r.stderr and "Traceback" not in r.stderr


def test_a_long_state_dir_path_still_gets_a_control_socket(env, tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    out = env.client.create_group("lab", ["a"])
    from cloudremotecontrol.master.localrun import AgentProcess

    agent = AgentProcess(
        deep / "a", env.server.url, out["machines"][0]["key"], env.server.fingerprint
    ).start()
    env.agents.append(agent)
    env.wait_state("lab", ["a"], "ready")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "cloudremotecontrol",
            "agent",
            "progress",
            "deep",
            "--state-dir",
            str(deep / "a"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr + agent.log()
    _wait_for(
        lambda: (env.client.group("lab")["machines"][0]["progress"] or {}).get("text") == "deep"
    )
