"""SIGTERM and SIGHUP taken as Ctrl-C is (``kill``, a closed terminal, a CI job
cancelled), so that a command that tidies up on Ctrl-C tidies up on them too.

A signal crc was started with ignored (``nohup`` ignores SIGHUP; a background job of a
non-interactive shell has SIGINT ignored) stays ignored: crc never puts a handler of
its own in place of that (``caught``)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, taken as Ctrl-C is; crc then exits 128 + the signal
    (cli/main.py)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


def said(interrupt: KeyboardInterrupt) -> None:
    """Mark ``interrupt`` as told: the command has said it was interrupted and what
    that leaves (`crc up`'s summary, `crc down`'s machines left). crc then exits 130
    (128 + the signal) without its own ``crc: interrupted`` line (cli/main.py)."""
    interrupt.said = True  # type: ignore[attr-defined]


def _terminal_gone() -> None:
    """After a SIGHUP the terminal is gone: what crc says next goes to /dev/null."""
    null = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            if os.isatty(fd):
                os.dup2(null, fd)
    os.close(null)


def caught(names: tuple[str, ...]) -> list[int]:
    """The signals of ``names`` that crc may take: those this platform has and that are
    not ignored. Ignored here means ignored when crc started, as crc never ignores one
    itself: a handler crc puts in place is put back as it found it."""
    signums = [getattr(signal, n) for n in names if hasattr(signal, n)]
    return [s for s in signums if signal.getsignal(s) is not signal.SIG_IGN]


_AGAIN_SECONDS = 0.05  # a signal that landed in a finalizer is raised again after this


def _in_finalizer(frame: FrameType | None) -> bool:
    """Whether ``frame`` runs inside an object's ``__del__`` (or is one)."""
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def stopped_as_by_ctrl_c(once: bool = True) -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise ``Terminated`` (a KeyboardInterrupt),
    unless crc was started with them ignored (``caught``: ``nohup``). With ``once`` the
    first signal interrupts and later ones are ignored, so that the tidying up the
    interrupt starts runs to its end; without it every signal interrupts (a second one
    stops waiting, as a second Ctrl-C does)."""
    fired: list[int] = []

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if fired and once:
            return
        if _in_finalizer(frame):
            # Raised here, it would be lost: an exception leaving a __del__ (run by
            # the garbage collector wherever it was) is only printed, and the command
            # would go on as if never told to stop. The signal comes again shortly,
            # to land in the command's own code.
            threading.Timer(_AGAIN_SECONDS, signal.raise_signal, (signum,)).start()
            return
        if not fired and signum == getattr(signal, "SIGHUP", None):
            _terminal_gone()
        fired.append(signum)
        raise Terminated(signum)

    before = {s: signal.signal(s, interrupt) for s in caught(("SIGTERM", "SIGHUP"))}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
