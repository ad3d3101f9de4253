"""Ending a cancelled job looks for its session's processes (a scan of every process of
the machine, long when it runs many) off the agent's event loop: heartbeats, other
jobs' output and acks go on meanwhile; what is signalled is the same."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from cloudremotecontrol.agent.platform.linux import LinuxPlatform
from cloudremotecontrol.agent.runner import JobOutcome, run_job
from cloudremotecontrol.protocol.messages import JobRun
from procs import alive

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc (Linux only)"
)

ANSWER_SECONDS = 30.0  # a safety net: a loop that serves answers at once


class _SlowScans(LinuxPlatform):
    """The real platform, whose every scan of the job's session first waits for the
    event loop to answer (as a scan of a machine with many processes lasts): a scan on
    the loop itself waits in vain."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.answered: list[bool] = []

    def _wait_for_the_loop(self) -> None:
        async def ping() -> None:
            await asyncio.sleep(0)

        answer = asyncio.run_coroutine_threadsafe(ping(), self.loop)
        try:
            answer.result(timeout=ANSWER_SECONDS)
            self.answered.append(True)
        except TimeoutError:
            answer.cancel()
            self.answered.append(False)

    def kill_leftovers(self, identity: str, force: bool = True) -> int:
        self._wait_for_the_loop()
        return super().kill_leftovers(identity, force)

    def leftovers(self, identity: str) -> int:
        self._wait_for_the_loop()
        return super().leftovers(identity)


def test_a_cancelled_jobs_session_is_scanned_while_the_event_loop_serves(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "child.pid"
    # A child in a process group of its own that ignores SIGTERM, as does the shell:
    # only the scan of the session (then SIGKILL) ends it.
    script = (
        f"set -m; (trap '' TERM; echo $BASHPID > {pid_file}; exec sleep 600) & "
        "trap '' TERM; wait; wait"
    )
    job = JobRun(job_id="0" * 32, command=script, shell="bash")

    async def main() -> tuple[JobOutcome, _SlowScans]:
        platform = _SlowScans(asyncio.get_running_loop())
        cancelled = asyncio.Event()

        async def output(stream: str, text: str) -> None:
            return None

        async def started(pid: int) -> None:
            while not pid_file.exists() or not pid_file.read_text().strip():
                await asyncio.sleep(0.02)
            cancelled.set()

        outcome = await asyncio.wait_for(
            run_job(job, platform, output, started, cancelled), timeout=300
        )
        return outcome, platform

    outcome, platform = asyncio.run(main())
    pid = int(pid_file.read_text())
    try:
        assert outcome.status == "cancelled", outcome
        assert platform.answered, "the job's session was never scanned"
        assert all(platform.answered), (
            f"the event loop did not answer during {platform.answered.count(False)} of "
            f"{len(platform.answered)} scans of the job's session: they ran on it"
        )
        deadline = time.monotonic() + 30  # a safety net: SIGKILL takes effect at once
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(pid), "the job's child (its own process group) is still running"
    finally:
        if alive(pid):
            os.kill(pid, 9)


def test_the_scans_thread_is_never_the_event_loops() -> None:
    """Structurally too: where the scan runs."""
    threads: list[threading.Thread] = []

    class _Recorded(LinuxPlatform):
        def leftovers(self, identity: str) -> int:
            threads.append(threading.current_thread())
            return super().leftovers(identity)

        def kill_leftovers(self, identity: str, force: bool = True) -> int:
            threads.append(threading.current_thread())
            return super().kill_leftovers(identity, force)

    job = JobRun(job_id="1" * 32, argv=("sleep", "600"))

    async def main() -> JobOutcome:
        cancelled = asyncio.Event()

        async def output(stream: str, text: str) -> None:
            return None

        async def started(pid: int) -> None:
            cancelled.set()

        return await run_job(job, _Recorded(), output, started, cancelled)

    outcome = asyncio.run(main())
    assert outcome.status == "cancelled", outcome
    assert threads, "the job's session was never scanned"
    assert threading.main_thread() not in threads  # asyncio.run's loop runs here
