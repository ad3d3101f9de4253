"""A job that times out or is cancelled ends with every process it started in its
session, also those that moved to a process group of their own (``set -m``, a job
control shell) and ignore SIGTERM: none is left running, holding the machine."""

from __future__ import annotations

import os
import time
from pathlib import Path

from procs import alive


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout  # a safety net, not a measurement
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _script(pid_file: Path) -> str:
    # The child leaves the job's process group (job control) and ignores SIGTERM, as
    # does the shell: only SIGKILL to the whole session ends them.
    return (
        f"set -m; (trap '' TERM; echo $BASHPID > {pid_file}; exec sleep 600) & "
        "trap '' TERM; wait; wait"
    )


def _ended(pid: int) -> bool:
    deadline = time.monotonic() + 30  # a safety net: SIGKILL takes effect at once
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_timed_out_job_leaves_no_process_running_in_its_session(env, crc, tmp_path):
    env.group_with_agents("lab", ["a"])
    pid_file = tmp_path / "child.pid"
    r = crc(
        "run", "lab", "--to", "a", "--timeout", "3s", "--shell", "bash", "--",
        _script(pid_file), timeout=120,
    )  # fmt: skip
    assert r.returncode != 0
    assert "[a] timed_out" in r.stderr, r.stderr
    _wait_for(pid_file)
    pid = int(pid_file.read_text())
    try:
        assert _ended(pid), "the job's child (its own process group) is still running"
    finally:
        if alive(pid):
            os.kill(pid, 9)


def test_a_cancelled_job_leaves_no_process_running_in_its_session(env, tmp_path):
    env.group_with_agents("lab", ["a"])
    pid_file = tmp_path / "child.pid"
    job = env.client.start_job("lab", "a", command=_script(pid_file), shell="bash")
    _wait_for(pid_file)
    pid = int(pid_file.read_text())
    try:
        env.client.cancel_job(job["job_id"])
        deadline = time.monotonic() + 60  # a safety net
        while env.client.job(job["job_id"])["targets"][0]["status"] != "cancelled":
            assert time.monotonic() < deadline, env.client.job(job["job_id"])
            time.sleep(0.1)
        assert _ended(pid), "the job's child (its own process group) is still running"
    finally:
        if alive(pid):
            os.kill(pid, 9)


def test_a_cancelled_job_lets_a_child_of_another_group_end_on_sigterm(env, tmp_path):
    # It used to get SIGKILL only, with no chance to clean up as the rest of the job had.
    env.group_with_agents("lab", ["a"])
    pid_file, cleaned = tmp_path / "child.pid", tmp_path / "cleaned"
    script = (
        f"set -m; (trap 'echo term > {cleaned}; exit 0' TERM; echo $BASHPID > {pid_file}; "
        "sleep 600 & wait $!) & wait"
    )
    job = env.client.start_job("lab", "a", command=script, shell="bash")
    _wait_for(pid_file)
    pid = int(pid_file.read_text())
    try:
        env.client.cancel_job(job["job_id"])
        deadline = time.monotonic() + 60  # a safety net
        while env.client.job(job["job_id"])["targets"][0]["status"] != "cancelled":
            assert time.monotonic() < deadline, env.client.job(job["job_id"])
            time.sleep(0.1)
        assert _ended(pid)
        assert cleaned.exists() and cleaned.read_text() == "term\n"
    finally:
        if alive(pid):
            os.kill(pid, 9)
