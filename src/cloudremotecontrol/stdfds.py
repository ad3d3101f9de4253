"""Standard streams that were closed at start (``crc ... 2>&-``) become /dev/null.

A process started with descriptor 0, 1 or 2 closed hands that number to the next file or
socket it opens. Then whatever writes "to stderr" writes into that socket or database
file (a child process inherits it as its own stderr, C code writes to descriptor 2
directly), and libuv, which the server's event loop runs on, aborts the whole process
when it closes a socket numbered 0 to 2 (``uv__close: Assertion `fd > STDERR_FILENO'``,
exit 134). Python itself sets ``sys.stdout`` or ``sys.stderr`` to ``None`` for such a
descriptor, and code that writes to them would fail with an internal error (exit 1).

:func:`fill_closed_std_fds` opens the null device on the missing descriptors before
anything else is opened: what would have been printed goes nowhere and every command
ends with the exit code it has otherwise (shells do the same for set-uid programs).
"""

from __future__ import annotations

import contextlib
import os
import sys

__all__ = ["fill_closed_std_fds"]

_STREAMS = ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w"))


def fill_closed_std_fds() -> None:
    """Call first thing in an entry point: afterwards descriptors 0, 1 and 2 are open
    and ``sys.stdin``, ``sys.stdout`` and ``sys.stderr`` are file objects."""
    for fd, name, mode in _STREAMS:
        try:
            os.fstat(fd)
        except OSError:  # closed: take the number before a socket or a file does
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:  # the lowest free number is fd (those below are open)
                os.dup2(null, fd)
                os.close(null)
        if getattr(sys, name) is None:
            with contextlib.suppress(OSError):
                stream = open(fd, mode, encoding="utf-8", errors="replace", closefd=False)
                setattr(sys, name, stream)
                if getattr(sys, f"__{name}__") is None:
                    setattr(sys, f"__{name}__", stream)
