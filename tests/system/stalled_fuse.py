"""A FUSE file system (Linux, root) with one regular file whose reads are never
answered, and in which a file created (an open for writing) is never answered either:
what a hung network mount is to the process reading or writing there. Spoken directly
on ``/dev/fuse`` (no FUSE library); closing it fails every request waiting (EIO) and
detaches the mount point.

A request the kernel interrupts (a signal to the waiting thread: the fatal one that
ends a process among them) is answered EINTR, as a FUSE file system supporting
interrupts does, and as a hung NFS hard mount lets a killed process go: a process that
exits is not held by its thread stuck here, while any other signal leaves that thread
stuck (Python makes the call again, PEP 475)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import stat
import struct
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["StalledFuse", "needs_fuse", "stalled_mount"]

needs_fuse = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0,
    reason="mounts a FUSE file system (Linux, root)",
)

_LOOKUP, _GETATTR, _OPEN, _READ, _RELEASE, _FLUSH, _INIT, _OPENDIR, _RELEASEDIR = (
    1,
    3,
    14,
    15,
    18,
    25,
    26,
    27,
    29,
)
_CREATE, _INTERRUPT = 35, 36
_IN_HEADER = struct.Struct("<IIQQIIII")  # len, opcode, unique, nodeid, uid, gid, pid, pad
_OUT_HEADER = struct.Struct("<IiQ")  # len, error, unique
_ROOT, _FILE = 1, 2
NAME, SIZE = "stalled", 4096
MNT_DETACH = 2


def _attr(node: int) -> bytes:
    mode, size = (stat.S_IFDIR | 0o755, 0) if node == _ROOT else (stat.S_IFREG | 0o644, SIZE)
    # ino, size, blocks, atime, mtime, ctime; their nsec; mode, nlink, uid, gid, rdev,
    # blksize, flags
    return struct.pack("<QQQQQQIIIIIIIIII", node, size, 8, 0, 0, 0, 0, 0, 0, mode, 1, 0, 0, 0,
                       4096, 0)  # fmt: skip


class StalledFuse:
    def __init__(self, mountpoint: Path) -> None:
        self.mountpoint = mountpoint
        self.path = mountpoint / NAME
        self.reading = threading.Event()  # a read of the file is waiting
        self.creating = threading.Event()  # a create of a file (to write it) is waiting
        self._fd = -1
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending: list[int] = []  # the reads and creates not answered
        self._closing = False

    def mount(self) -> StalledFuse:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self._fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        options = f"fd={self._fd},rootmode=40000,user_id=0,group_id=0,allow_other"
        if libc.mount(b"crc-stalled", str(self.mountpoint).encode(), b"fuse", 0,
                      options.encode()) != 0:  # fmt: skip
            err = ctypes.get_errno()
            os.close(self._fd)
            raise OSError(err, f"mount fuse: {os.strerror(err)}")
        self._libc = libc
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Fail the reads and creates waiting (EIO) and detach the mount: once nothing
        holds the file system open, it ends, and so does its connection."""
        with self._lock:
            pending, self._pending, self._closing = self._pending, [], True
        for unique in pending:
            self._reply(unique, error=errno.EIO)
        self._libc.umount2(str(self.mountpoint).encode(), MNT_DETACH)
        if self._thread is not None:
            self._thread.join(timeout=30)
        os.close(self._fd)

    def _reply(self, unique: int, body: bytes = b"", error: int = 0) -> None:
        with contextlib.suppress(OSError):
            os.write(self._fd, _OUT_HEADER.pack(_OUT_HEADER.size + len(body), -error, unique)
                     + body)  # fmt: skip

    def _serve(self) -> None:
        while True:
            try:
                request = os.read(self._fd, 1 << 20 | 4096)
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.ENOENT):
                    continue
                return  # the connection was aborted or the mount is gone
            if not request:
                return
            _, opcode, unique, node, *_ = _IN_HEADER.unpack_from(request)
            arg = request[_IN_HEADER.size :]
            if opcode == _INIT:
                readahead = struct.unpack_from("<IIII", arg)[2]
                # major, minor, max_readahead, flags, max_background, congestion, max_write
                self._reply(unique, struct.pack("<IIIIHHI", 7, 19, readahead, 0, 16, 12, 65536))
            elif opcode == _LOOKUP:
                name = arg.split(b"\0", 1)[0].decode()
                if node == _ROOT and name == NAME:
                    # nodeid, generation, entry and attr validity (s, ns), attributes
                    self._reply(unique, struct.pack("<QQQQII", _FILE, 0, 0, 0, 0, 0) + _attr(_FILE))
                else:
                    self._reply(unique, error=errno.ENOENT)
            elif opcode == _GETATTR:
                self._reply(unique, struct.pack("<QII", 0, 0, 0) + _attr(node))
            elif opcode in (_OPEN, _OPENDIR):
                self._reply(unique, struct.pack("<QII", 0, 0, 0))  # fh, open flags
            elif (opcode == _READ and node == _FILE) or opcode == _CREATE:
                with self._lock:
                    closing = self._closing
                    if not closing:
                        self._pending.append(unique)  # not answered before close()
                if closing:
                    self._reply(unique, error=errno.EIO)
                (self.reading if opcode == _READ else self.creating).set()
            elif opcode == _INTERRUPT:
                # fuse_interrupt_in: the request interrupted. The interrupt itself is
                # never answered (an answer would be an error: interrupts unsupported).
                (interrupted,) = struct.unpack_from("<Q", arg)
                with self._lock:
                    waiting = interrupted in self._pending
                    if waiting:
                        self._pending.remove(interrupted)
                if waiting:
                    self._reply(interrupted, error=errno.EINTR)
            elif opcode in (_RELEASE, _RELEASEDIR, _FLUSH):
                self._reply(unique)
            else:
                self._reply(unique, error=errno.ENOSYS)


@pytest.fixture(name="stalled")
def stalled_mount(tmp_path: Path) -> Iterator[StalledFuse]:
    """Fixture ``stalled``: a ``StalledFuse`` mounted at ``tmp_path/mnt``, closed after
    the test: the calls still waiting fail, and the threads that made them end. Listed
    after the ``env`` fixture, it is closed before the agents are stopped."""
    try:
        fs = StalledFuse(tmp_path / "mnt").mount()
    except OSError as exc:
        pytest.skip(f"no FUSE mount here: {exc}")
    try:
        yield fs
    finally:
        fs.close()
