"""Noticing that crc's output was closed while crc waits (``crc run ... | head -1``),
not only when it next writes: a job that prints a line and then runs quietly would
otherwise run to its end, crc waiting with it, though nobody reads what it says.

On POSIX a thread waits in ``poll`` on crc's stdout and stderr when they are pipes or
sockets (a file cannot be closed under crc, and a terminal that goes away sends SIGHUP):
the reader gone, a pipe's writing end reports POLLERR (Linux) or POLLHUP, a socket's
POLLHUP. The thread then interrupts the main thread where it waits (the event stream's
read) with a SIGPIPE aimed at it, whose handler raises ``OutputGone`` there; and it
halts the client's event streams as well, in case that interruption is lost (in a
finalizer). Where ``poll`` or ``pthread_kill`` is missing (Windows), nothing is watched:
a closed output is noticed at the next write (BrokenPipeError), as before."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import stat
import sys
import threading
from types import FrameType
from typing import Any

from .signals import _in_finalizer

#: Seconds between two interruptions of the main thread once the output is gone, until
#: it has taken one (one landing in a finalizer is lost there).
_AGAIN_SECONDS = 0.2

_GONE = getattr(select, "POLLERR", 0) | getattr(select, "POLLHUP", 0)


class OutputGone(BaseException):
    """crc's output was closed while it waited: raised in the main thread (a
    BaseException, as KeyboardInterrupt is, so that no ``except Exception`` takes it)."""


def _watched_fds() -> list[int]:
    """The file descriptors of crc's stdout and stderr that are pipes or sockets."""
    fds: list[int] = []
    for stream in (sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
            mode = os.fstat(fd).st_mode
        except (AttributeError, ValueError, OSError):  # no file (a test's), or closed
            continue
        if (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)) and fd not in fds:
            fds.append(fd)
    return fds


class OutputWatch:
    """While entered, ``OutputGone`` is raised in the main thread once crc's output is
    closed (``gone`` is set then, and ``client``'s event streams are halted). Does
    nothing where it cannot watch (not POSIX, not the main thread, no pipe or socket
    to watch)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.gone = threading.Event()
        self._stop = threading.Event()
        self._armed = False
        self._thread: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None
        self._old_handler: Any = None
        self._main = threading.main_thread().ident or 0

    @staticmethod
    def possible() -> bool:
        return (
            hasattr(select, "poll")
            and hasattr(signal, "pthread_kill")
            and hasattr(signal, "SIGPIPE")
            and threading.current_thread() is threading.main_thread()
        )

    def __enter__(self) -> OutputWatch:
        if not self.possible():
            return self
        fds = _watched_fds()
        if not fds:
            return self
        poller = select.poll()
        for fd in fds:
            poller.register(fd, 0)  # POLLERR and POLLHUP are always reported
        self._wake = os.pipe()
        poller.register(self._wake[0], select.POLLIN)
        # Python ignores SIGPIPE (a write then fails with EPIPE); this handler keeps
        # that: it raises only once the watch saw the output go, in the main thread.
        self._old_handler = signal.signal(signal.SIGPIPE, self._interrupt)
        self._armed = True
        self._thread = threading.Thread(
            target=self._watch, args=(poller, fds), name="crc-output-watch", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._armed = False
        self._stop.set()
        if self._thread is not None:
            if self._wake is not None:
                with contextlib.suppress(OSError):
                    os.write(self._wake[1], b"x")
            self._thread.join()
            self._thread = None
        if self._old_handler is not None:
            signal.signal(signal.SIGPIPE, self._old_handler)
            self._old_handler = None
        if self._wake is not None:
            for fd in self._wake:
                os.close(fd)
            self._wake = None

    def _watch(self, poller: Any, fds: list[int]) -> None:
        while not self._stop.is_set():
            try:
                ready = poller.poll()
            except OSError:  # cannot watch: a closed output is noticed when written
                return
            if any(fd in fds and mask & _GONE for fd, mask in ready):
                break
            if any(fd not in fds for fd, _ in ready):  # woken: the watch ends
                return
        else:
            return
        self.gone.set()
        halt = getattr(self.client, "halt", None)
        if halt is not None:
            with contextlib.suppress(Exception):
                halt()
        # Until the main thread took it (the watch is then left).
        while not self._stop.is_set() and self._armed:
            with contextlib.suppress(OSError):
                signal.pthread_kill(self._main, signal.SIGPIPE)
            self._stop.wait(_AGAIN_SECONDS)

    def _interrupt(self, signum: int, frame: FrameType | None) -> None:
        if not (self._armed and self.gone.is_set()):
            return  # a write's own SIGPIPE: that write fails with EPIPE, as without us
        if _in_finalizer(frame):
            return  # lost there: the watch sends it again shortly
        self._armed = False
        raise OutputGone
