"""Linux: what is left of a job whose agent died is found by session and start time."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from cloudremotecontrol.agent.platform.linux import LinuxPlatform

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc (Linux only)"
)


def _session_size(sid: int) -> int:
    n = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        n += int(fields[3]) == sid and fields[0] != "Z"
    return n


def test_kill_leftovers_ends_the_jobs_session_and_never_a_reused_pid() -> None:
    """Neither a process started after the recorded leader with its pid, nor the session
    of such a process when it leads one."""
    plat = LinuxPlatform()
    proc = subprocess.Popen(["sh", "-c", "sleep 60 & exec sleep 60"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while _session_size(proc.pid) < 2:  # sh has started its background sleep
            assert time.monotonic() < deadline, "the job's two processes never ran"
            time.sleep(0.01)
        identity = plat.process_identity(proc.pid)
        assert identity is not None and identity.startswith(f"{proc.pid}:")
        pid, start = identity.split(":")
        # A process that started later than the one recorded (a reused pid): untouched.
        assert plat.kill_leftovers(f"{pid}:{int(start) + 10**9}") == 0
        assert plat.kill_leftovers("not an identity") == 0
        # The recorded leader started earlier than the process with its pid now: that
        # pid was reused by a new session's leader, whose processes are not the job's.
        assert plat.leftovers(f"{pid}:{int(start) - 1}") == 0
        assert plat.kill_leftovers(f"{pid}:{int(start) - 1}") == 0
        assert proc.poll() is None
        assert plat.kill_leftovers(identity) == 2  # the leader and its background child
        assert proc.wait(timeout=5) == -9
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert plat.process_identity(proc.pid) is None  # reaped: nothing to record
