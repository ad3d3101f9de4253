"""A job whose process starts while the agent's state database cannot be written (a full
disk, another writer holding it) waits until it can record the process, as the job's
messages do; the failed write used to end the task supervising the job, so the job
never reported anything and stayed running for ever."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from pathlib import Path

import pytest
from ends import AgentEnd

from cloudremotecontrol.agent import core


def test_a_folded_jobs_process_is_recorded_once_the_database_can_be_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    end = AgentEnd(tmp_path / "state", "crca_0123456789abcdef_secret")
    job_id = "f" * 32
    end.state.db.execute(
        "INSERT INTO jobs (job_id, state, created) VALUES (?, 'running', 0)", (job_id,)
    )
    end.state.db.execute("PRAGMA busy_timeout = 50")  # "locked" at once, not after 5 s
    blocker = sqlite3.connect(tmp_path / "state" / "agent.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the database
    report = core._Report(end.agent, job_id, fold=True)

    async def scenario() -> None:
        started = asyncio.create_task(report.started(os.getpid()))
        while "cannot store a job's process" not in caplog.text:
            assert not started.done(), started.exception()
            await asyncio.sleep(0.05)
        blocker.execute("ROLLBACK")  # writable again
        await asyncio.wait_for(started, 60)  # a safety net, not a measurement
        assert report.timer is not None
        report.timer.cancel()

    try:
        with caplog.at_level(logging.INFO, logger="crc.agent"):
            end.run(scenario())
        assert end.state.interrupted_jobs() == [
            (job_id, end.agent.platform.process_identity(os.getpid()))
        ]
    finally:
        blocker.close()
        end.close()
