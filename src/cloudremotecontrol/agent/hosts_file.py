"""The managed block of a hosts file: ``IP name name.GROUP`` for every peer.

Everything outside the block is kept byte for byte (the file is handled as bytes), the
block uses the file's own line ending (CRLF on Windows), and applying the same entries
twice changes nothing. A block whose END line is missing (a damaged edit) is replaced
from its BEGIN line to the end of the file: what follows an unterminated block was
written by us, and keeping it could leave stale peers behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile

__all__ = ["merge", "render_block", "sync_hosts", "write_hosts"]


def _begin(group: str) -> bytes:
    return f"# BEGIN cloudremotecontrol group={group} (managed; do not edit)".encode()


def _end(group: str) -> bytes:
    return f"# END cloudremotecontrol group={group}".encode()


def render_block(entries: list[tuple[str, list[str]]], group: str, newline: str = "\n") -> str:
    """The block for ``entries`` (``(ip, [names])``), sorted by first name."""
    lines = [_begin(group).decode()]
    for ip, names in sorted(entries, key=lambda e: (e[1][0] if e[1] else "", e[0])):
        lines.append(f"{ip} {' '.join(names)}")
    lines.append(_end(group).decode())
    return newline.join(lines) + newline


def merge(existing: bytes, entries: list[tuple[str, list[str]]], group: str) -> bytes:
    """New file content with the group's block replaced, added, or (no entries) removed."""
    newline = b"\r\n" if b"\r\n" in existing else b"\n"
    begin, end = _begin(group), _end(group)
    start = _line_start(existing, begin)
    if start is None:
        before, after = existing, b""
    else:
        stop = _line_start(existing, end, start)
        if stop is None:
            before, after = existing[:start], b""
        else:
            eol = existing.find(b"\n", stop)
            after = b"" if eol < 0 else existing[eol + 1:]
            before = existing[:start]
    if not entries:
        return before + after
    if before and not before.endswith(b"\n"):
        before += newline
    # Decide the block's line ending from what surrounds it (separator included), so a
    # second merge sees the same surroundings and makes the same choice.
    newline = b"\r\n" if b"\r\n" in before + after else b"\n"
    block = render_block(entries, group, newline.decode()).encode()
    return before + block + after


def _line_start(data: bytes, marker: bytes, start: int = 0) -> int | None:
    """Offset of the first line at or after ``start`` that begins with ``marker``."""
    pos = start
    while True:
        idx = data.find(marker, pos)
        if idx < 0:
            return None
        if idx == 0 or data[idx - 1:idx] == b"\n":
            return idx
        pos = idx + 1


def write_hosts(path: str, content: bytes) -> bool:
    """Replace ``path`` atomically with ``content``; return False if nothing changed.

    Temp file in the same directory + fsync + rename, keeping mode (and owner as root).
    Where the rename is impossible because the file is a bind mount (containers mount
    /etc/hosts that way: EBUSY/EXDEV) or the directory is read-only to us, the file is
    rewritten in place: not atomic, but the only way to change such a file at all, and
    the content is complete before truncation (write, then truncate, then fsync).
    """
    try:
        with open(path, "rb") as fh:
            if fh.read() == content:
                return False
        st: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        st = None
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".hosts.", dir=directory)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            _rewrite_in_place(path, content)
            return True
        raise
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        if st is not None:
            os.chmod(tmp, st.st_mode & 0o7777)
            if hasattr(os, "chown") and hasattr(os, "geteuid") and os.geteuid() == 0:
                os.chown(tmp, st.st_uid, st.st_gid)
        else:
            os.chmod(tmp, 0o644)
        try:
            os.replace(tmp, path)
        except OSError as exc:
            if exc.errno not in (errno.EBUSY, errno.EXDEV, errno.EPERM, errno.EACCES):
                raise
            _rewrite_in_place(path, content)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return True


def _rewrite_in_place(path: str, content: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.write(content)
        fh.truncate()
        fh.flush()
        os.fsync(fh.fileno())


def sync_hosts(path: str, entries: list[tuple[str, list[str]]], group: str) -> bool:
    """Make ``path`` list ``entries`` in the group's block; return True if it changed."""
    try:
        with open(path, "rb") as fh:
            existing = fh.read()
    except FileNotFoundError:
        existing = b""
    return write_hosts(path, merge(existing, entries, group))
