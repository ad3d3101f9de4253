"""Noticing that crc's output was closed while crc waits (``crc run ... | head -1``),
not only when it next writes: a job that prints a line and then runs quietly would
otherwise run to its end, crc waiting with it, though nobody reads what it says.

On POSIX a thread waits in ``poll`` on crc's stdout and stderr when they are pipes or
sockets (a file cannot be closed under crc, and a terminal that goes away sends SIGHUP):
the reader gone, a pipe's writing end reports POLLERR (Linux) or POLLHUP, a socket's
POLLHUP. The thread then sets ``gone`` and halts the client's event streams, which end
at their next event or keepalive (the server sends one every 5 s): the command's own
code, back from its wait, sees ``gone`` and raises ``OutputGone`` there. Nothing is
raised into the main thread from outside (a signal handler's exception can land in a
generator's or an object's finalizer, where it is printed and lost). Where ``poll`` is
missing (Windows), nothing is watched: a closed output is noticed at the next write
(BrokenPipeError), as before."""

from __future__ import annotations

import contextlib
import os
import select
import stat
import sys
import threading
from typing import Any

_GONE = getattr(select, "POLLERR", 0) | getattr(select, "POLLHUP", 0)


class OutputGone(BaseException):
    """crc's output was closed while it waited (a BaseException, as KeyboardInterrupt
    is, so that no ``except Exception`` on its way takes it)."""


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
    """While entered, ``gone`` is set once crc's output is closed, and ``client``'s
    event streams are halted then (``Client.halt``). Does nothing where it cannot watch
    (no ``poll``, no pipe or socket to watch)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.gone = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None

    @staticmethod
    def possible() -> bool:
        return hasattr(select, "poll")

    def check(self) -> None:
        """Raise ``OutputGone`` if crc's output was closed."""
        if self.gone.is_set():
            raise OutputGone

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
        self._thread = threading.Thread(
            target=self._watch, args=(poller, fds), name="crc-output-watch", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            if self._wake is not None:
                with contextlib.suppress(OSError):
                    os.write(self._wake[1], b"x")
            self._thread.join()
            self._thread = None
        if self._wake is not None:
            for fd in self._wake:
                os.close(fd)
            self._wake = None

    def _watch(self, poller: Any, fds: list[int]) -> None:
        while True:
            try:
                ready = poller.poll()
            except OSError:  # cannot watch: a closed output is noticed when written
                return
            if any(fd in fds and mask & _GONE for fd, mask in ready):
                break
            if any(fd not in fds for fd, _ in ready):  # woken: the watch ends
                return
        self.gone.set()
        halt = getattr(self.client, "halt", None)
        if halt is not None:
            with contextlib.suppress(Exception):
                halt()
