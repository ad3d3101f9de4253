"""A job the kernel refuses to start for the size of what it is given (E2BIG) fails with
a reason that names the environment too, not only the arguments."""

from __future__ import annotations

import sys
import time

import pytest

FINAL = ("succeeded", "failed", "timed_out", "cancelled", "lost")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's 128 KiB bound")
def test_a_variable_too_large_for_exec_fails_the_job_and_says_so(env) -> None:
    env.group_with_agents("lab", ["a"])
    # One NAME=value past Linux's MAX_ARG_STRLEN (128 KiB), well within what a job takes.
    job = env.client.start_job("lab", "a", argv=["true"], env={"BIG": "y" * 131070})
    deadline = time.monotonic() + 60  # a safety net
    while (target := env.client.job(job["job_id"])["targets"][0])["status"] not in FINAL:
        assert time.monotonic() < deadline, target
        time.sleep(0.1)
    assert target["status"] == "failed" and target["exit_code"] == 126, target
    assert "arguments and environment are too large for this machine" in target["reason"]
