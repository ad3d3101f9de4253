"""A pull killed (``kill -9``) leaves its partial file (``.crc-pull-*``) beside LOCAL;
the next pull into that directory removes it, and never the partial of a pull still
running (which holds it locked, however long it has been stalled). The pulls here are
real processes writing their partial as ``download_pulled`` does (``pull_partial``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cloudremotecontrol.master.client import (
    STALE_PARTIAL_SECONDS,
    pull_partial,
    remove_stale_partials,
)

pytestmark = pytest.mark.skipif(os.name != "posix", reason="flock: POSIX only")

PULLING = """
import sys, time
from cloudremotecontrol.master.client import pull_partial
fd, tmp = pull_partial(sys.argv[1])
print(tmp, flush=True)
time.sleep(600)
"""


def _pulling(directory: Path) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen(
        [sys.executable, "-c", PULLING, str(directory)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def _old(path: Path) -> None:
    """Untouched for longer than a partial may be: only the lock tells then."""
    past = time.time() - STALE_PARTIAL_SECONDS - 60
    os.utime(path, (past, past))


def test_a_killed_pulls_partial_is_removed_and_a_running_ones_kept(tmp_path: Path) -> None:
    running, kept = _pulling(tmp_path)
    killed, left = _pulling(tmp_path)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(30)
        _old(kept)  # stalled for long: still its pull's
        _old(left)
        fd, tmp = pull_partial(str(tmp_path))  # the next pull into the directory
        os.close(fd)
        assert not left.exists()
        assert kept.exists() and Path(tmp).exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([kept.name, Path(tmp).name])
    finally:
        running.kill()
        running.wait(30)
        for proc in (running, killed):
            assert proc.stdout is not None
            proc.stdout.close()


def test_a_recent_partial_and_what_is_no_pulls_own_are_left_alone(tmp_path: Path) -> None:
    recent = tmp_path / ".crc-pull-recent"  # just made: its pull may not hold it yet
    recent.write_bytes(b"x")
    link = tmp_path / ".crc-pull-link"
    target = tmp_path / "target"
    target.write_bytes(b"y")
    _old(target)
    link.symlink_to(target)
    other = tmp_path / "other"
    other.write_bytes(b"z")
    _old(other)
    assert remove_stale_partials(str(tmp_path)) == []
    assert recent.exists() and link.is_symlink() and target.exists() and other.exists()
    _old(recent)
    assert remove_stale_partials(str(tmp_path)) == [str(recent)]
