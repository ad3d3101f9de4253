"""`crc push` to a path whose writes never return (a hung network mount): the agent
goes on serving meanwhile, the push ends when the master cancels it (`crc job cancel`,
or Ctrl-C on `crc push`), reported cancelled, instead of holding `crc push` for ever,
and the agent still stops at once when asked to (its stuck thread holds no exit)."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from stalled_fuse import StalledFuse, needs_fuse, stalled_mount  # noqa: F401 -- fixture stalled
from stalled_transfers import crc_running, ended, lab_group  # noqa: F401 -- fixture lab

pytestmark = needs_fuse


@contextmanager
def _pushing(env: Any, stalled: StalledFuse, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """`crc push` of a small file into the stalled mount, once the agent waits there."""
    local = tmp_path / "payload.txt"
    local.write_text("configuration\n")
    with crc_running(
        env, "push", "lab", "--to", "a", str(local), str(stalled.mountpoint / "app.conf")
    ) as push:
        if not stalled.creating.wait(60):
            push.kill()
            pytest.fail(f"the agent never wrote into the mount:\n{push.communicate()[1]}")
        yield push


def _cancelled(env: Any) -> dict[str, Any]:
    (job,) = [j for j in env.client.list_jobs("lab") if j["type"] == "file.put"]
    (target,) = env.client.job(job["job_id"])["targets"]
    return dict(target)


def test_a_push_whose_write_hangs_ends_when_cancelled_and_the_agent_serves_and_stops(
    lab, crc, stalled, tmp_path
):
    with _pushing(lab, stalled, tmp_path) as push:
        r = crc("run", "lab", "--to", "a", "--", "echo", "still serving")
        assert r.returncode == 0, r.stderr
        assert "still serving" in r.stdout
        (job,) = [j for j in lab.client.list_jobs("lab") if j["type"] == "file.put"]
        r = crc("job", "cancel", job["job_id"])
        assert r.returncode == 0, r.stderr
        err = ended(push, lab, "push")
        assert push.returncode == 130, err  # as a job cancelled by Ctrl-C
        assert "[a] cancelled" in err, err
        target = _cancelled(lab)
        assert target["status"] == "cancelled", target
        assert target["reason"] == "cancelled by the master", target
        # Its write still waits in the agent: a job after it runs all the same ...
        r = crc("run", "lab", "--to", "a", "--", "echo", "after the cancel")
        assert r.returncode == 0, r.stderr
        assert "after the cancel" in r.stdout
        # ... and the agent stops when told to, its stuck thread left behind.
        agent = lab.agents[0]
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGTERM)
        try:
            agent.wait(60)  # a safety net: it stops at once
        except subprocess.TimeoutExpired:
            pytest.fail(f"the agent did not stop on SIGTERM:\n{agent.log()[-3000:]}")


def test_ctrl_c_on_a_push_whose_write_hangs_ends_it_cancelled(lab, stalled, tmp_path):
    with _pushing(lab, stalled, tmp_path) as push:
        push.send_signal(signal.SIGINT)
        err = ended(push, lab, "push")
        assert push.returncode == 130, err
        assert "[a] cancelled" in err, err
        target = _cancelled(lab)
        assert target["status"] == "cancelled", target
