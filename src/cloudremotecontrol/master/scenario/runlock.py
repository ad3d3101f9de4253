"""A lock file on this computer: one holder at a time, the next one refused at once.

``hold(path, holder)`` takes the lock (or raises ``Busy`` with what the current holder
wrote: ``"crc up, pid 1234"``), writes ``holder`` into the file and keeps the lock until
the block ends; the operating system also lets it go when the process dies.

POSIX: ``fcntl.flock`` on the whole file. Windows: ``msvcrt.locking`` (the C runtime's
``_locking``, a byte range). Windows byte-range locks are mandatory: no other process can
read a locked byte. So the lock there is on one byte far past the holder's text (locking
past the end of a file is allowed), and that text stays readable for the refusal.

Only the standard library: the file can be loaded on its own (the Windows tests run it in
a Windows Python that has nothing else of the project).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LOCK_OFFSET", "Busy", "hold"]

#: Windows: where the locked byte is; the holder's text is much shorter than this.
LOCK_OFFSET = 1 << 20
_HOLDER_BYTES = 200


class Busy(Exception):
    """Someone holds the lock; ``holder`` is what they wrote ('' if nothing yet)."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


if sys.platform == "win32":
    import msvcrt

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # locks 1 byte from the position
        except OSError:  # EACCES: another process holds it
            return False
        return True

    def _unlock(fd: int) -> None:
        # Closing the file also unlocks, but Windows says "in time": unlock now.
        os.lseek(fd, LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _read_holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, _HOLDER_BYTES).decode(errors="replace").strip()


@contextlib.contextmanager
def hold(path: Path, holder: str) -> Iterator[None]:
    """Hold the lock of ``path`` (made 0600 if missing) while the block runs; ``Busy``
    if another open of it (this process or another) holds it. The file stays afterwards:
    removing it would let two holders lock two different files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o600)
    try:
        if not _try_lock(fd):
            raise Busy(_read_holder(fd))
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, holder.encode()[:_HOLDER_BYTES])
            yield
        finally:
            _unlock(fd)
    finally:
        os.close(fd)
