"""A program under a pseudo-terminal on Linux (and other POSIX systems).

The agent gives the program the slave side of a PTY as its controlling terminal in a
session of its own, and keeps the master side: what the program writes is read from
it, keystrokes are written to it, a resize is ``TIOCSWINSZ`` on it (the kernel then
sends SIGWINCH to the terminal's foreground process group).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import pwd
import signal
import struct
import termios
from collections.abc import Mapping, Sequence

__all__ = ["Terminal", "login_argv"]

READ_BYTES = 64 << 10


def login_argv(shell: str | None) -> tuple[str, list[str]]:
    """The program and argv of an interactive login shell (``-bash`` as argv[0] is the
    login convention): ``shell`` if given, else the user's shell from the password
    database, else /bin/sh."""
    if not shell:
        try:
            shell = pwd.getpwuid(os.getuid()).pw_shell or "/bin/sh"
        except KeyError:
            shell = "/bin/sh"
        if not os.path.exists(shell):
            shell = "/bin/sh"
    return shell, ["-" + os.path.basename(shell)]


def _set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _make_controlling_tty() -> None:  # runs in the child, after setsid()
    # fd 1 is the terminal (fd 0 too, unless the input is a pipe).
    fcntl.ioctl(1, termios.TIOCSCTTY, 0)


class Terminal:
    """One program on one PTY. Use :meth:`start`, then :meth:`read`/:meth:`write`/
    :meth:`resize`; :meth:`wait` for its exit status; :meth:`close` always.

    ``stdin_pipe``: the program's standard input is a pipe rather than the terminal
    (its output still goes to the terminal): what :meth:`write` gives it is read as
    it came, never typed (no echo, no line editing), and :meth:`end_input` closes it,
    which the program reads as the end of its input, as ssh gives a program when its
    own input is not a terminal."""

    def __init__(self, stdin_pipe: bool = False) -> None:
        self.master = -1
        self.stdin_pipe = stdin_pipe
        self.input = -1  # the pipe's writing end (stdin_pipe), else the terminal
        self.proc: asyncio.subprocess.Process | None = None

    async def start(
        self,
        program: str,
        argv: Sequence[str],
        cols: int,
        rows: int,
        env: Mapping[str, str],
        cwd: str | None,
    ) -> None:
        master, slave = os.openpty()
        self.master = master
        self.input = master
        reading = -1
        try:
            _set_size(slave, cols, rows)
            os.set_blocking(master, False)
            if self.stdin_pipe:
                reading, self.input = os.pipe()
                os.set_blocking(self.input, False)
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                executable=program,
                stdin=slave if reading < 0 else reading,
                stdout=slave,
                stderr=slave,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_make_controlling_tty,
                close_fds=True,
            )
        finally:
            os.close(slave)
            if reading >= 0:
                os.close(reading)

    async def read(self) -> bytes:
        """The next bytes the program wrote; b"" once the terminal is closed (every
        process holding it has exited)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                return os.read(self.master, READ_BYTES)
            except BlockingIOError:
                pass
            except OSError as exc:
                if exc.errno == errno.EIO:  # Linux: the slave side has no process left
                    return b""
                raise
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(self.master, ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_reader(self.master)

    async def write(self, data: bytes) -> None:
        """Type ``data`` into the terminal, or give it to the program's input pipe (a
        program that closed its input, or exited, drops it)."""
        loop = asyncio.get_running_loop()
        fd = self.input
        view = memoryview(data)
        while view and fd >= 0:
            try:
                n = os.write(fd, view)
                view = view[n:]
                continue
            except BlockingIOError:
                pass
            except BrokenPipeError:
                return
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_writer(fd, ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_writer(fd)

    def end_input(self) -> None:
        """The end of the program's input (``stdin_pipe`` only: a terminal has none)."""
        if self.stdin_pipe and self.input >= 0:
            os.close(self.input)
            self.input = -1

    def resize(self, cols: int, rows: int) -> None:
        _set_size(self.master, cols, rows)

    async def wait(self) -> int:
        """The exit code: the program's, or 128 + the signal that killed it."""
        assert self.proc is not None
        code = await self.proc.wait()
        return 128 - code if code < 0 else code

    async def close(self) -> None:
        """Hang up the program's session (SIGHUP, then SIGKILL) and free the PTY."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGHUP)
            try:
                await asyncio.wait_for(proc.wait(), 3)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        self.end_input()
        if self.master >= 0:
            os.close(self.master)
            self.master = -1
        self.input = -1
