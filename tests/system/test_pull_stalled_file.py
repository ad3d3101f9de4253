"""`crc pull` of a regular file whose reads never return (a hung network mount): the
agent goes on serving meanwhile, and the pull ends when the master cancels it (`crc job
cancel`), reported cancelled, instead of holding `crc pull` for ever."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from stalled_fuse import needs_fuse, stalled_mount  # noqa: F401 -- fixture stalled

pytestmark = needs_fuse


def test_a_pull_whose_read_hangs_leaves_the_agent_serving_and_ends_when_cancelled(
    env, crc, stalled, tmp_path
):
    env.group_with_agents("lab", ["a"])
    pull = subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", "pull", "lab", "--from", "a",
         str(stalled.path), str(tmp_path / "local")],
        env={**os.environ, **env.cli_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert stalled.reading.wait(60), "the agent never read the file"
        r = crc("run", "lab", "--to", "a", "--", "echo", "still serving")
        assert r.returncode == 0, r.stderr
        assert "still serving" in r.stdout
        (job,) = [j for j in env.client.list_jobs("lab") if j["type"] == "file.get"]
        r = crc("job", "cancel", job["job_id"])
        assert r.returncode == 0, r.stderr
        try:
            _out, err = pull.communicate(timeout=60)  # a safety net: it ends at once
        except subprocess.TimeoutExpired:
            pull.kill()
            _out, err = pull.communicate()
            pytest.fail(
                f"crc pull still waits for the cancelled pull's result:\n{err}\n"
                f"{env.client.list_jobs('lab')}\n{env.agents[0].log()[-3000:]}"
            )
        assert pull.returncode == 130, err  # as a job cancelled by Ctrl-C
        assert "[a] cancelled" in err, err
        assert not (tmp_path / "local").exists()
        (target,) = env.client.job(job["job_id"])["targets"]
        assert target["status"] == "cancelled", target
        assert target["reason"] == "cancelled by the master", target
    finally:
        if pull.poll() is None:
            pull.kill()
        pull.communicate()  # its pipes closed, whatever ended the test
