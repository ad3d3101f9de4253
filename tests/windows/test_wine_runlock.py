"""`crc up`'s per-computer lock on Windows (master/scenario/runlock.py, msvcrt.locking):
two Windows processes, the second refused with the first one's words, then free again."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from wine_machine import PYTHON, WinePrefix

import cloudremotecontrol.master.scenario.runlock as runlock

SCRIPT = r"""
import importlib.util, os, sys, time
from pathlib import Path

spec = importlib.util.spec_from_file_location("runlock", sys.argv[1])
runlock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runlock)
mode, lock = sys.argv[2], Path(sys.argv[3])
try:
    with runlock.hold(lock, f"crc up, pid {os.getpid()}"):
        print(f"held {os.getpid()}", flush=True)
        if mode == "hold":
            release = Path(sys.argv[4])
            deadline = time.monotonic() + 120
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
except runlock.Busy as busy:
    print(f"busy: {busy.holder}", flush=True)
"""


def _win(path: Path) -> str:
    return "Z:" + str(path).replace("/", "\\")


@pytest.fixture(scope="module")
def prefix(
    wine_template: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WinePrefix]:
    p = WinePrefix(Path(wine_template["prefix"]), tmp_path_factory.mktemp("wine-lock"))
    try:
        p.start()
        yield p
    finally:
        p.close()


def test_a_second_windows_process_is_refused_then_gets_the_lock(
    prefix: WinePrefix, tmp_path: Path
) -> None:
    script = tmp_path / "lock.py"
    script.write_text(SCRIPT)
    lock, release = tmp_path / "scenarios" / "web.lock", tmp_path / "release"
    module = _win(Path(runlock.__file__))
    args = [_win(script), module]
    holder = subprocess.Popen(
        ["wine", PYTHON, *args, "hold", _win(lock), _win(release)],
        env=prefix.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        first = holder.stdout.readline().strip()
        assert first.startswith("held "), first + holder.stderr.read() if holder.stderr else ""
        pid = first.split()[1]

        second = prefix.python(*args, "try", _win(lock), timeout=120)
        assert second.stdout.strip() == f"busy: crc up, pid {pid}", second.stdout + second.stderr

        release.touch()
        holder.communicate(timeout=120)
        assert holder.returncode == 0
        third = prefix.python(*args, "try", _win(lock), timeout=120)
        assert third.stdout.startswith("held "), third.stdout + third.stderr
    finally:
        release.touch()
        if holder.poll() is None:
            holder.kill()
            holder.communicate()
