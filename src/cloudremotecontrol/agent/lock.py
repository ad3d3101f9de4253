"""One agent per state directory.

Two agents on one state dir would share a credential and fight over the server
connection (each replacing the other's), and the second would take over the control
socket scripts talk to. So ``crc agent run`` first takes an exclusive lock on
``STATE_DIR/agent.lock`` and holds it for as long as it runs; a second agent finds it
taken and stops at once (AlreadyRunning, exit 9). The lock is the operating system's
(``flock`` on POSIX, ``msvcrt.locking`` on Windows): it is released when the process
ends, however it ends, so a killed agent never leaves a stale lock behind.

Stdlib only: the agent imports this.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from ..errors import AlreadyRunning, InvalidInput

__all__ = ["LOCK_NAME", "StateDirLock", "state_dir_lock", "unusable_state_dir"]

LOCK_NAME = "agent.lock"


class StateDirLock:
    """The state directory's lock, taken when made (AlreadyRunning if another process
    has it) and held until ``release`` or the end of the process."""

    def __init__(self, state_dir: Path) -> None:
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise unusable_state_dir(state_dir, exc) from None
        try:
            _lock(fd)
        except OSError:
            os.close(fd)
            raise AlreadyRunning(
                f"an agent is already running with state dir {state_dir} "
                "(the service, or another `crc agent run`): talk to it with "
                "`crc agent status`; stop it before starting another"
            ) from None
        if sys.platform != "win32":  # who holds it, for a person looking
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
        self._fd: int | None = fd

    def release(self) -> None:
        """Let another agent use the state directory (closing the file unlocks it; on
        Windows the directory can then be removed)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def unusable_state_dir(state_dir: Path, exc: OSError) -> InvalidInput:
    """The one-line error of a state directory the agent cannot create or write (a
    file in its path, a read-only file system, no permission, a full disk)."""
    why = exc.strerror or str(exc)
    return InvalidInput(
        f"cannot use state directory {state_dir}: {why}: give a writable directory "
        "with --state-dir (or CRC_AGENT_STATE_DIR)"
    )


@contextlib.contextmanager
def state_dir_lock(state_dir: Path) -> Iterator[None]:
    """Hold the state directory's lock, or raise AlreadyRunning if another process has it."""
    lock = StateDirLock(state_dir)
    try:
        yield
    finally:
        lock.release()


def _lock(fd: int) -> None:
    if sys.platform == "win32":
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
