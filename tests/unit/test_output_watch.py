"""``OutputWatch``: crc's output closed while crc waits (here, in a sleep) interrupts it
at once with ``OutputGone`` and halts the client's streams; nothing is watched when the
output is a file; the watch leaves no thread, descriptor or signal handler behind."""

from __future__ import annotations

import os
import signal
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
        self.halts = 0

    def halt(self) -> None:
        self.halts += 1


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate()}


def test_a_pipe_whose_reader_goes_away_interrupts_the_wait_at_once(monkeypatch: Any) -> None:
    read_end, write_end = os.pipe()
    out = os.fdopen(write_end, "w")
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", out)
    before = signal.getsignal(signal.SIGPIPE)
    client = _Client()
    try:
        watch = OutputWatch(client)
        began = time.monotonic()
        with pytest.raises(OutputGone), watch:
            assert "crc-output-watch" in _threads()
            threading.Timer(0.2, os.close, (read_end,)).start()
            time.sleep(20)  # as the event stream's read waits
        assert time.monotonic() - began < 5
        assert watch.gone.is_set() and client.halts == 1
    finally:
        monkeypatch.undo()
        out.close()
    assert "crc-output-watch" not in _threads()
    assert signal.getsignal(signal.SIGPIPE) == before


def test_an_open_pipe_or_a_file_is_left_alone(monkeypatch: Any, tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as out, (tmp_path / "f").open("w") as f:
        monkeypatch.setattr(sys, "stdout", out)
        monkeypatch.setattr(sys, "stderr", f)
        with OutputWatch(_Client()) as watch:
            time.sleep(0.3)
        assert not watch.gone.is_set()
        os.close(read_end)
        # A file only: nothing to watch, no thread, no handler.
        monkeypatch.setattr(sys, "stdout", f)
        before = signal.getsignal(signal.SIGPIPE)
        with OutputWatch(_Client()):
            assert "crc-output-watch" not in _threads()
            assert signal.getsignal(signal.SIGPIPE) == before
        monkeypatch.undo()
    assert "crc-output-watch" not in _threads()
