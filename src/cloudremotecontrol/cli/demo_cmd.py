"""``crc demo``: the whole loop on this computer, with no account and no setup."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from types import FrameType

import click

from .output import json_option


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, taken as Ctrl-C is; crc then exits 128 + the signal
    (cli/main.py)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


@contextlib.contextmanager
def _stopped_as_by_ctrl_c() -> Iterator[None]:
    """SIGTERM and SIGHUP (`kill`, a closed terminal, a CI job cancelled) stop the demo
    as Ctrl-C does, so that it tears down what it made: its machines and server live in
    a directory of its own, which no later `crc down` looks in. The first signal
    interrupts; later ones are ignored while the teardown runs. After a SIGHUP the
    terminal is gone: what the teardown says goes to /dev/null instead."""
    fired: list[int] = []

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if fired:
            return
        fired.append(signum)
        if signum == getattr(signal, "SIGHUP", None):
            null = os.open(os.devnull, os.O_WRONLY)
            for fd in (1, 2):
                with contextlib.suppress(OSError):
                    if os.isatty(fd):
                        os.dup2(null, fd)
            os.close(null)
        raise Terminated(signum)

    wanted = [getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)]
    before = {s: signal.signal(s, interrupt) for s in wanted}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


@click.command()
@click.option("--keep", is_flag=True, help="Keep the temporary directory (logs) afterwards.")
@json_option
def demo(keep: bool, as_json: bool) -> None:
    """Start a server (SQLite, TLS) in a temporary directory, enroll machines mysql, web
    and dev as local agents, provision them, then tear everything down."""
    from ..master.demo import run_demo
    from .scenario_view import make_view

    with _stopped_as_by_ctrl_c():
        rc = run_demo(make_view(as_json), keep=keep)
    raise SystemExit(rc)
