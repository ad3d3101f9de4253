"""The managed block of a hosts file: one ``IP name name.GROUP`` line per peer.

A machine may belong to one group at a time in practice, but nothing stops two agents
(or two groups over time) from sharing a hosts file, so every group owns its own block::

    # BEGIN cloudremotecontrol group=lab (managed; do not edit)
    10.0.0.1 db db.lab
    10.0.0.2 web web.lab
    # END cloudremotecontrol group=lab

Promises, each pinned by ``tests/unit/test_hosts_file.py``:

* Everything outside the group's block is kept byte for byte. The file is handled as
  bytes, never decoded, so a hosts file in a legacy code page survives unchanged.
* The block uses the file's own line ending: that of the first line ending found outside
  the block (CRLF in a Windows file, LF otherwise), so a merge never mixes styles.
* :func:`merge` is idempotent, and an empty entry list removes the block entirely.
* A damaged block is repaired conservatively (see :func:`merge`).

:func:`write_hosts` replaces the file atomically where it can and rewrites it in place
where it must (a bind-mounted ``/etc/hosts`` in a container). Other programs edit the
file too: :func:`sync_hosts` looks at it again right before the swap, and merges again
if it changed meanwhile, so their change is not lost under a stale copy.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import re
import stat
import sys
import tempfile
import time

from ..protocol.fields import check_hostname, check_ip
from ..protocol.names import reserved_name

__all__ = ["failure", "merge", "render_block", "sync_hosts", "write_hosts"]

_PREFIX_BEGIN = b"# BEGIN cloudremotecontrol group="
_PREFIX_END = b"# END cloudremotecontrol group="
_ANY_MARKER = re.compile(rb"# (BEGIN|END) cloudremotecontrol\b")
# Group and host names reach a file every resolver on the machine reads: refuse anything
# that could break the line format (spaces, '#', newlines) instead of escaping it.
_GROUP = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}")
# What every line of the block is: an address, then names, single spaces between.
_LINE = re.compile(r"[0-9A-Fa-f:.]+( [A-Za-z0-9.-]+)+")

Entries = list[tuple[str, list[str]]]


def render_block(entries: Entries, group: str, newline: str = "\n") -> str:
    """Return the group's block for ``entries`` (``(ip, [name, ...])``), markers included.

    Lines are sorted by first name (then IP), so the same roster always renders the same
    bytes; names keep the order the caller gave. The block ends with ``newline``. Raises
    ValueError for a group, IP or name that cannot be written safely, or for an entry
    without names: callers report it as a failed sync. Each line is checked to be one
    ``IP name...`` line of valid tokens, whatever the caller passed.
    """
    if newline not in ("\n", "\r\n"):
        raise ValueError(f"newline must be LF or CRLF, not {newline!r}")
    _check_group(group)
    lines = [_begin(group).decode()]
    for ip, names in sorted(_checked(entries), key=lambda e: (e[1][0], e[0])):
        lines.append(f"{ip} {' '.join(names)}")
    lines.append(_end(group).decode())
    return newline.join(lines) + newline


def merge(existing: bytes, entries: Entries, group: str) -> bytes:
    """Return the new content of a hosts file whose current content is ``existing``.

    The group's block is replaced where it stands, or appended at the end (after a line
    ending, if the file lacks a final one); with no ``entries`` it is removed. Blocks of
    other groups and every other byte are left as they are.

    Damaged blocks, repaired without ever touching what may be someone else's:

    * BEGIN with a matching END and nothing but ordinary lines between: the whole span
      is ours (hand edits inside a block marked "do not edit" are discarded).
    * BEGIN with no END before the next cloudremotecontrol marker or the end of file:
      the BEGIN line and the run of plain ``IP name...`` lines right after it are
      removed, and nothing more. Cutting to the end of file instead would delete lines
      added later by people or tools, and the next group's block.
    * END without BEGIN: left alone, as any other foreign line.
    * Several blocks of the group: all removed, the new one takes the first one's place.
    """
    block_lines = _render_checked(entries, group)  # validate before anything else
    lines = _split_lines(existing)
    kept: list[bytes] = []
    old_block: list[bytes] = []
    insert_at: int | None = None
    i = 0
    while i < len(lines):
        if not _is_marker(lines[i], _PREFIX_BEGIN, group):
            kept.append(lines[i])
            i += 1
            continue
        if insert_at is None:
            insert_at = len(kept)
        stop = _block_end(lines, i, group)
        old_block.extend(lines[i:stop])
        i = stop
    if not entries:
        return b"".join(kept)
    if insert_at is None:
        insert_at = len(kept)
        # Appending: the block must start on a line of its own. A file ending in a lone
        # CR gets the LF that completes its CRLF (anything else would add a blank line).
        if kept and not kept[-1].endswith(b"\n"):
            sep = b"\n" if kept[-1].endswith(b"\r") else _newline(b"".join(kept), b"")
            kept[-1] += sep
    before, after = b"".join(kept[:insert_at]), b"".join(kept[insert_at:])
    # Decided from the text outside the block (separator included), which the next merge
    # sees unchanged: that is what makes merge(merge(x)) == merge(x).
    newline = _newline(before + after, b"".join(old_block))
    return before + newline.join(block_lines) + newline + after


# Attempts at a sync whose file another program changed while it was being written.
RACE_ATTEMPTS = 5
_TEMP_PREFIX = ".hosts.crc."
# A temporary file this old was left by a sync that never ended (kill -9, power loss):
# no sync takes that long, the agent's or another agent's sharing the file.
STALE_TEMP_SECONDS = 3600.0


class _Changed(Exception):
    """The hosts file is no longer what the new content was made from."""


def write_hosts(path: str, content: bytes, expect: bytes | None = None) -> bool:
    """Make the file at ``path`` hold ``content``; return False if it already did.

    With ``expect`` (what ``content`` was made from; ``b""`` for a missing file), the
    file is read again just before it is replaced: another program that changed it
    meanwhile (a hand edit, cloud-init, a container runtime) raises ``_Changed``
    instead of losing its change, and :func:`sync_hosts` merges again.

    The normal way is atomic: a temporary file in the same directory, fsynced, given the
    original's mode (its owner too when we run as root, and its SELinux label), then
    renamed over the original, so a reader sees the old file or the new one, never half.
    A symlinked ``path`` is followed: the link stays and its target is replaced.

    Where the rename is refused because the file is a mount point (Docker and Kubernetes
    bind-mount ``/etc/hosts``: EBUSY, EXDEV) or the directory is not writable to us
    (EPERM, EACCES), the file is rewritten in place: write, truncate, fsync. That is not
    atomic -- a reader in that instant can see a mix -- but it is the only way such a file
    can change at all (the container runtime itself updates it that way), the new content
    goes out in one write before the truncation, and a reader retries on the next lookup.
    Any other OSError (read-only file system, disk full) is raised to the caller.
    """
    path = os.path.realpath(path)
    try:
        with open(path, "rb") as fh:
            now = fh.read()
        st: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        now, st = b"", None
    if expect is not None and now != expect:
        raise _Changed
    if now == content and (st is not None or not content):
        return False  # (a missing file is not made just to be empty)
    directory = os.path.dirname(path)
    _remove_stale_temporaries(directory)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=directory)
    except OSError as exc:
        if st is None or exc.errno not in (errno.EACCES, errno.EPERM):
            raise
        _check_unchanged(path, expect)
        _rewrite_in_place(path, content)
        return True
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            _copy_attributes(st, path, tmp)
            # Writing and syncing took a while: the last look, right before the swap.
            _check_unchanged(path, expect)
            os.replace(tmp, path)
        except OSError as exc:
            # EPERM/EINVAL also come from chown in a user namespace (rootless containers)
            # where the original's owner is unmapped: in place, the owner stays as it was.
            if st is None or exc.errno not in (
                errno.EBUSY,
                errno.EXDEV,
                errno.EPERM,
                errno.EACCES,
                errno.EINVAL,
            ):
                raise
            _check_unchanged(path, expect)
            _rewrite_in_place(path, content)
        else:
            _fsync_directory(directory)
    finally:
        # OSError, not just FileNotFoundError: Windows refuses to delete a read-only file,
        # and a leftover temporary file must not hide the real outcome.
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return True


def sync_hosts(path: str, entries: Entries, group: str) -> bool:
    """Make the hosts file at ``path`` list ``entries`` in the group's block.

    Returns True if the file changed. An empty ``entries`` removes the block (a deleted
    group). A missing file is created. Raises ValueError for entries that cannot be
    written (see :func:`render_block`) and OSError when the file cannot be read or written.
    A change another program makes to the file while it is written is kept: the block is
    merged again into what the file then holds (``RACE_ATTEMPTS`` times at most).
    """
    for _ in range(RACE_ATTEMPTS):
        existing = _read(path)
        try:
            return write_hosts(path, merge(existing, entries, group), expect=existing)
        except _Changed:
            continue
    raise OSError(
        errno.EAGAIN, f"{path} kept being changed by another program while it was written"
    )


def failure(path: str, exc: OSError) -> str:
    """What a sync that failed with ``exc`` says: the hosts file at ``path`` (as the agent
    was given it) and why, never a temporary file of the sync, which the user never
    named (a missing directory fails first on the temporary file made in it)."""
    try:
        real = os.path.realpath(path)
        linked = os.path.normcase(real) != os.path.normcase(os.path.abspath(path))
    except (OSError, ValueError):
        real, linked = path, False
    shown = f"{path} (a link to {real})" if linked else path
    directory = os.path.dirname(real) or "."
    if exc.errno == errno.EAGAIN and exc.filename is None and exc.strerror:
        return str(exc.strerror)  # sync_hosts' own: it names the file already
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)) and not os.path.isdir(directory):
        return (
            f"cannot write the hosts file {shown}: directory {directory} does not exist "
            "on this machine"
        )
    return f"cannot write the hosts file {shown}: {exc.strerror or exc}"


def _read(path: str) -> bytes:
    """The file's content; a missing file is empty."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return b""


def _check_unchanged(path: str, expect: bytes | None) -> None:
    if expect is not None and _read(path) != expect:
        raise _Changed


# -- block parsing ------------------------------------------------------------------------


def _begin(group: str) -> bytes:
    return _PREFIX_BEGIN + group.encode() + b" (managed; do not edit)"


def _end(group: str) -> bytes:
    return _PREFIX_END + group.encode()


def _split_lines(data: bytes) -> list[bytes]:
    """Lines with their endings; joined they give ``data`` back exactly.

    Split on LF only: a lone CR is data (``bytes.splitlines`` would cut there too).
    """
    parts = data.split(b"\n")
    lines = [p + b"\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _is_marker(line: bytes, prefix: bytes, group: str) -> bool:
    """Whether ``line`` is this group's BEGIN/END line (``group=lab`` is not ``lab2``)."""
    text = line.rstrip()
    head = prefix + group.encode()
    return text == head or text.startswith((head + b" ", head + b"\t"))


def _block_end(lines: list[bytes], begin: int, group: str) -> int:
    """Index just past the block whose BEGIN line is ``lines[begin]``."""
    for j in range(begin + 1, len(lines)):
        if _is_marker(lines[j], _PREFIX_END, group):
            return j + 1
        if _ANY_MARKER.match(lines[j]):
            break  # another block starts (or ends) before ours ended: ours is damaged
    j = begin + 1
    while j < len(lines) and _is_entry_line(lines[j]):
        j += 1
    return j


def _is_entry_line(line: bytes) -> bool:
    """Whether ``line`` looks like one we write: ``IP name...``, no comment."""
    if b"#" in line:
        return False
    fields = line.split()
    if len(fields) < 2:
        return False
    try:
        ipaddress.ip_address(fields[0].decode("ascii"))
    except ValueError:  # UnicodeDecodeError included
        return False
    return True


def _newline(outside: bytes, old_block: bytes) -> bytes:
    """The first line ending outside the block; else the old block's; else LF."""
    for text in (outside, old_block):
        idx = text.find(b"\n")
        if idx >= 0:
            return b"\r\n" if text[idx - 1 : idx] == b"\r" else b"\n"
    return b"\n"


# -- validation ---------------------------------------------------------------------------


def _check_group(group: str) -> None:
    if not isinstance(group, str) or not _GROUP.fullmatch(group):
        raise ValueError(f"invalid group name {group!r} for a hosts file")


def _checked(entries: Entries) -> Entries:
    """Every entry as one ``IP name...`` line of valid tokens, or ValueError: a plain
    address (no scope id: after its ``%`` anything, newlines included, could follow)
    and RFC 1123 host names, none with a label a system gives a meaning (``localhost``,
    ``ip6-loopback``: ``protocol.names.reserved_name``) - whatever the server sent (one
    older than that rule). An all-digit machine name an older server let be made is
    written (``1234.lab`` is looked up; a bare ``1234`` is read as an address)."""
    out: Entries = []
    for ip, names in entries:
        addr = check_ip(ip)  # ValueError names the address
        if isinstance(names, (str, bytes)):
            raise ValueError(f"hosts entry for {addr}: names must be a list, not {names!r}")
        names = list(names)
        if not names:
            raise ValueError(f"hosts entry for {addr} has no names")
        for name in names:
            try:
                check_hostname(name)
            except ValueError:
                raise ValueError(f"invalid host name {name!r} for a hosts file") from None
            for label in name.lower().split("."):
                why = reserved_name(label, numeric=False)
                if why is not None:
                    raise ValueError(f"refusing host name {name!r} for a hosts file: {why}")
        line = f"{addr} {' '.join(names)}"
        if not _LINE.fullmatch(line):  # cannot happen after the checks above: belt and braces
            raise ValueError(f"refusing hosts line {line!r}")
        out.append((addr, names))
    return out


def _render_checked(entries: Entries, group: str) -> list[bytes]:
    """The block's lines without endings (markers included), validated."""
    return [line.encode("ascii") for line in render_block(entries, group).splitlines()]


# -- file attributes ----------------------------------------------------------------------


def _copy_attributes(st: os.stat_result | None, path: str, tmp: str) -> None:
    """Give ``tmp`` what the original had, so the replacement is indistinguishable."""
    if st is None:
        os.chmod(tmp, 0o644)  # hosts files are world-readable: every resolver reads them
        return
    os.chmod(tmp, st.st_mode & 0o7777)
    if sys.platform != "win32" and hasattr(os, "geteuid") and os.geteuid() == 0:
        os.chown(tmp, st.st_uid, st.st_gid)
    # On SELinux systems /etc/hosts is net_conf_t while a new file in /etc gets etc_t;
    # copying the label keeps confined daemons able to read it. Absent or unsupported
    # labels (most systems) are simply not copied.
    if sys.platform != "win32" and hasattr(os, "getxattr"):
        with contextlib.suppress(OSError):
            os.setxattr(tmp, "security.selinux", os.getxattr(path, "security.selinux"))


def _remove_stale_temporaries(directory: str) -> None:
    """Remove the temporary files of syncs killed midway (plain files of ours, older
    than ``STALE_TEMP_SECONDS``), which would otherwise pile up in ``/etc``."""
    cutoff = time.time() - STALE_TEMP_SECONDS
    owner = os.geteuid() if hasattr(os, "geteuid") else None
    with contextlib.suppress(OSError), os.scandir(directory) as found:
        for entry in found:
            if not entry.name.startswith(_TEMP_PREFIX):
                continue
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                if (
                    stat.S_ISREG(st.st_mode)
                    and st.st_mtime < cutoff
                    and (owner is None or st.st_uid == owner)
                ):
                    os.unlink(entry.path)


def _fsync_directory(directory: str) -> None:
    """Make the rename itself durable (POSIX); Windows cannot open directories."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _rewrite_in_place(path: str, content: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.write(content)
        fh.truncate()
        fh.flush()
        os.fsync(fh.fileno())
