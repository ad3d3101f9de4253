"""`crc pull` of a regular file whose reads never return (a hung network mount): the
agent goes on serving meanwhile, and the pull ends when the master cancels it (`crc job
cancel`), reported cancelled, instead of holding `crc pull` for ever."""

from __future__ import annotations

from stalled_fuse import needs_fuse, stalled_mount  # noqa: F401 -- fixture stalled
from stalled_transfers import crc_running, ended, lab_group  # noqa: F401 -- fixture lab

pytestmark = needs_fuse


def test_a_pull_whose_read_hangs_leaves_the_agent_serving_and_ends_when_cancelled(
    lab, crc, stalled, tmp_path
):
    with crc_running(
        lab, "pull", "lab", "--from", "a", str(stalled.path), str(tmp_path / "local")
    ) as pull:
        assert stalled.reading.wait(60), "the agent never read the file"
        r = crc("run", "lab", "--to", "a", "--", "echo", "still serving")
        assert r.returncode == 0, r.stderr
        assert "still serving" in r.stdout
        (job,) = [j for j in lab.client.list_jobs("lab") if j["type"] == "file.get"]
        r = crc("job", "cancel", job["job_id"])
        assert r.returncode == 0, r.stderr
        err = ended(pull, lab, "pull")
        assert pull.returncode == 130, err  # as a job cancelled by Ctrl-C
        assert "[a] cancelled" in err, err
        assert not (tmp_path / "local").exists()
        (target,) = lab.client.job(job["job_id"])["targets"]
        assert target["status"] == "cancelled", target
        assert target["reason"] == "cancelled by the master", target
