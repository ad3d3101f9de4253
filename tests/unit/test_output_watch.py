"""``OutputWatch``: crc's output closed while crc waits is noticed at once (``gone``
set, the client's streams halted, ``check`` raising ``OutputGone``); nothing is watched
when the output is a file; the watch leaves no thread or descriptor behind."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cloudremotecontrol.cli.outwatch import OutputGone, OutputWatch

pytestmark = pytest.mark.skipif(not OutputWatch.possible(), reason="POSIX only")


class _Client:
    def __init__(self) -> None:
        self.halted = threading.Event()

    def halt(self) -> None:
        self.halted.set()


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate()}


def _fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


def test_a_pipe_whose_reader_goes_away_is_noticed_at_once(monkeypatch: Any) -> None:
    read_end, write_end = os.pipe()
    out = os.fdopen(write_end, "w")
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", out)
    client = _Client()
    fds = _fds()
    try:
        with OutputWatch(client) as watch:
            assert "crc-output-watch" in _threads()
            watch.check()  # not gone yet: nothing raised
            began = time.monotonic()
            os.close(read_end)
            assert client.halted.wait(5), "the client's streams were not halted"
            assert time.monotonic() - began < 5
            assert watch.gone.is_set()
            with pytest.raises(OutputGone):
                watch.check()
    finally:
        monkeypatch.undo()
        out.close()
    assert "crc-output-watch" not in _threads()
    assert _fds() == fds - 2  # the pipe's two ends, closed here; the watch's own too


def test_an_open_pipe_or_a_file_is_left_alone(monkeypatch: Any, tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as out, (tmp_path / "f").open("w") as f:
        monkeypatch.setattr(sys, "stdout", out)
        monkeypatch.setattr(sys, "stderr", f)
        client = _Client()
        with OutputWatch(client) as watch:
            time.sleep(0.3)
        assert not watch.gone.is_set() and not client.halted.is_set()
        os.close(read_end)
        # A file only: nothing to watch, no thread.
        monkeypatch.setattr(sys, "stdout", f)
        with OutputWatch(_Client()):
            assert "crc-output-watch" not in _threads()
        monkeypatch.undo()
    assert "crc-output-watch" not in _threads()
