"""`crc run ... | head -1` while the job runs quietly: crc notices its reader went away
while it waits, not only at its next write, cancels the job on every machine and exits
141 at once; and when the job had already ended, it does not say it cancelled it.

The real `crc` as a process, a real server and agents; the test reads crc's output as
`head -1` or `grep -m1` would, then closes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

CRC = [sys.executable, "-m", "cloudremotecontrol"]


def _wait(pred: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)
    return value


def _statuses(env: Any, job_id: str) -> set[str]:
    return {t["status"] for t in env.client.job(job_id)["targets"]}


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_output_closed_while_the_job_is_quiet_cancels_it_and_exits_141_at_once(
    env: Any, tmp_path: Path, as_json: bool
) -> None:
    env.group_with_agents("lab", ["a"])
    marker = tmp_path / "ran-to-the-end"
    flags = ["--json"] if as_json else []
    proc = subprocess.Popen(
        [*CRC, "run", "lab", "--to", "a", *flags, "--", f"echo x; sleep 30; touch {marker}"],
        env={**os.environ, **env.cli_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        # `crc run ... | grep -m1 x`: read up to the command's line, then go away while
        # the command sleeps (crc has nothing more to write until it ends).
        lines = []
        while True:
            line = proc.stdout.readline()
            assert line, f"crc's output ended early: {lines}"
            lines.append(line)
            if (json.loads(line).get("data") if as_json else line) in ("x\n", "[a] x\n"):
                break
        proc.stdout.close()
        closed = time.monotonic()
        code = proc.wait(timeout=60)
        took = time.monotonic() - closed
        err = proc.stderr.read()
        proc.stderr.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 141, err
    assert took < 8, f"crc took {took:.1f}s to notice its output closed: {err}"
    assert "Traceback" not in err and "Exception" not in err, err
    job_id = json.loads(lines[0])["job_id"] if as_json else err.split("job ", 1)[1].split()[0]
    assert f"crc: output closed: cancelled job {job_id} on every machine" in err, err
    _wait(lambda: _statuses(env, job_id) == {"cancelled"}, "the target to be cancelled")
    assert not marker.exists(), "the job ran to its end"


def test_output_closed_after_the_job_ended_does_not_say_it_was_cancelled(
    env: Any, tmp_path: Path
) -> None:
    env.group_with_agents("lab", ["a"])
    # More output than a pipe holds: crc is still writing it (blocked) when the job has
    # ended on its machine; the reader then goes away without reading it.
    script = "head -c 400000 /dev/zero | tr '\\0' x; echo"
    proc = subprocess.Popen(
        [*CRC, "run", "lab", "--to", "a", "--json", "--", script],
        env={**os.environ, **env.cli_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        job_id = json.loads(proc.stdout.readline())["job_id"]
        _wait(lambda: _statuses(env, job_id) == {"succeeded"}, "the job to end")
        assert proc.poll() is None, "crc ended before its output was read"
        proc.stdout.close()
        code = proc.wait(timeout=30)
        err = proc.stderr.read()
        proc.stderr.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 141, err
    assert "Traceback" not in err and "Exception" not in err, err
    assert "cancelled job" not in err, err
    assert f"crc: output closed: job {job_id}: nothing left to cancel" in err, err
    assert _statuses(env, job_id) == {"succeeded"}
