"""Files on the machine: fetch a pushed blob (resumable, verified, atomic) and upload a
file for a pull. Blocking code, run in a worker thread; memory use is one chunk.

The agent runs as root (or LocalSystem) and writes into directories other users may
own: the temporary file is opened without following a symbolic link, created readable
by the agent only, resumed only if it is a plain file of the agent's own, and locked so
that two pushes to one path take turns instead of writing into each other.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import os
import re
import ssl
import stat
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from ..errors import CrcError, InvalidInput, TooLarge, Unavailable
from ..fslinks import through_links
from ..protocol.limits import MAX_FILE_BYTES, file_too_large
from ..protocol.messages import FILE_MODE_HEADER
from ..terminal import safe
from .http import call_json, http_error

__all__ = ["Stopped", "Where", "fetch_blob", "upload_file"]

#: Where the server is now: its URL and the TLS context for it, asked again at every
#: attempt. An agent given several URLs (replicas) moves to the next when one stops
#: answering (core.py), and a transfer cut by that follows it there.
Where = Callable[[], tuple[str, ssl.SSLContext | None]]

CHUNK = 1 << 20
ATTEMPTS = 5
# An upload is tried for longer: after a cut, the server may hold the first attempt's
# place until it notices (its body timeout, 30 s) and refuses another meanwhile
# (409 upload_in_progress). 0.5 + 1 + 2 + 4 + 8 + 10 + 10 s between the 8 attempts.
UPLOAD_ATTEMPTS = 8
# A file this small is read once into memory for a pull: what is sent is what was
# hashed, even for a file that changes at every read (/proc/meminfo).
SMALL = 4 << 20
# How long a push waits for another push of the same content to the same path.
LOCK_WAIT = 15 * 60.0
# A partial file of a push untouched for this long is not resumed by anyone: the next
# push into its directory removes it (a content never pushed again kept it forever).
STALE_PART = 24 * 3600.0
_PART_NAME = re.compile(r"\.crc-.+\.[0-9a-f]{16}\.part\Z", re.DOTALL)


class Stopped(Exception):
    """The transfer was cancelled (``stopped()`` said so): a pull's upload stops at its
    next read or attempt, a push's download at its next write or attempt, before the
    rename that puts the file in place."""


def _never() -> bool:
    return False


def _check_absolute(path: str) -> None:
    """Refuse a path that is not absolute by this machine's own rules: the master
    accepts both styles (it does not know the machine's system), and a relative one
    would land in the agent's working directory."""
    absolute = os.path.isabs(path)
    if sys.platform == "win32":
        absolute = absolute and bool(os.path.splitdrive(path)[0])
    if not absolute:
        system = {"win32": "Windows", "linux": "Linux", "darwin": "macOS"}.get(
            sys.platform, sys.platform
        )
        raise InvalidInput(
            f"{path} is not an absolute path on this machine ({system}): give the full path"
        )


def _hash_fd(fd: int) -> tuple[Any, int]:
    digest = hashlib.sha256()
    size = 0
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest, size


def _lock(fd: int) -> bool:
    """Take the exclusive lock on the temporary file: False if another push holds it
    (Windows, which then closes and tries again: an open handle stops the holder's
    rename there); on Linux, wait for it."""
    if sys.platform == "win32":
        import msvcrt

        # One byte past the data of all but huge files (the C runtime takes a 32-bit
        # offset): the lock is mandatory on Windows, for other handles only.
        os.lseek(fd, 0x7FFFFFFE, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        finally:
            os.lseek(fd, 0, os.SEEK_SET)
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # the caller waits (at most LOCK_WAIT), as on Windows
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return True  # a file system without locks (NFS without lockd): as before
        raise
    return True


def _trusted(st: os.stat_result) -> bool:
    """A plain file of the agent's own, with no other name: safe to resume and write."""
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        return False
    return sys.platform == "win32" or st.st_uid == os.geteuid()


def _check_replaceable(dest: str) -> None:
    """Refuse to replace anything but a regular file (or a link to one): a push to
    ``/dev/null`` or a FIFO would put a plain file where the system expects a device."""
    for st in (_lstat(dest), _stat(dest)):
        if st is None or stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
            continue
        raise InvalidInput(
            f"{dest} is not a regular file on this machine (a device, a FIFO or a socket): "
            "crc push only writes regular files"
        )


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:  # missing, or a dangling link
        return None


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _new_file_mode(source: str | None = None) -> int:
    """The mode a new file gets, as cp(1) and scp give it: the permission bits of the
    master's own file (``source``, octal; never a setuid, setgid or sticky bit), or
    0666 without one (an older master), less the agent's umask (a hardened machine's
    umask 027 or 077 is kept)."""
    bits = int(source, 8) & 0o777 if source is not None else 0o666
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return bits & ~int(line.split()[1], 8)
    mask = os.umask(0o022)  # no /proc: read it the only other way, and put it back
    os.umask(mask)
    return bits & ~mask


def _into_directory(dest: str, name: str | None) -> str:
    """``dest`` itself, or ``dest/name`` when ``dest`` is a directory on this machine (as
    scp and cp copy into one): ``name`` (the master's file's own name) checked again by
    this machine's rules, a name only, never a path. Without ``name`` (an older master)
    a directory is refused, as before."""
    if not os.path.isdir(dest):
        return dest
    if name is None:
        raise InvalidInput(f"{dest} is a directory on this machine: give the file's path")
    seps = "/\\:" if sys.platform == "win32" else "/"
    if name in ("", ".", "..") or any(c in name for c in seps) or "\0" in name:
        raise InvalidInput(
            f"{dest} is a directory on this machine, and {safe(name)!r} cannot be a file's "
            "name there: give the file's path"
        )
    return os.path.join(dest, name)


def _replace_when_free(part: str, dest: str) -> None:
    """``os.replace`` on Windows, where a file another handle has open cannot be renamed:
    a push waiting for this one may hold it for a moment (it then closes it again)."""
    deadline = time.monotonic() + 10
    waited = False
    while True:
        try:
            os.replace(part, dest)
            return
        except PermissionError:
            if time.monotonic() > deadline:
                raise
            waited = True
            time.sleep(0.1)
        except FileNotFoundError:
            if waited:  # the other push (the same content: the name has its hash) put
                return  # the file in place meanwhile
            raise


def _open_part(part: str, stopped: Callable[[], bool] = _never) -> int:
    """Open (or create, mode 0600) the temporary file, never through a symbolic link,
    locked, and still the file at that name once locked. ``Stopped`` while it waits for
    another push's lock, once ``stopped()``."""
    flags = (
        os.O_RDWR
        | os.O_CREAT
        | getattr(os, "O_NOFOLLOW", 0)
        | getattr(os, "O_CLOEXEC", 0)
        | getattr(os, "O_BINARY", 0)
        | getattr(os, "O_NOINHERIT", 0)
    )
    deadline = time.monotonic() + LOCK_WAIT
    tries = 0
    while tries < 10:
        tries += 1
        if sys.platform == "win32" and os.path.islink(part):
            os.unlink(part)  # Windows follows links whatever the flags: removed first
        try:
            fd = os.open(part, flags, 0o600)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EMLINK) or os.path.islink(part):
                os.unlink(part)  # a symbolic link planted there: removed, not followed
                continue
            raise
        try:
            # A file that is not ours is never locked (its owner could hold the lock).
            if not _trusted(os.fstat(fd)):
                os.close(fd)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(part)
                continue
            locked = _lock(fd)
            st = os.fstat(fd)
            now = _lstat(part) if sys.platform != "win32" else st
        except BaseException:
            os.close(fd)
            raise
        if not locked:
            os.close(fd)
            if time.monotonic() > deadline:
                raise InvalidInput(f"{part} is still being written by another push")
            if stopped():
                raise Stopped
            tries -= 1  # waiting is not a failed try
            time.sleep(0.2)
            continue
        # Renamed by the push that held the lock (then a new file is made), or replaced
        # meanwhile. (On Windows no open file can be renamed or removed.)
        if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            os.close(fd)
            continue
        if not _trusted(st):
            # Not ours (a hard link to another file, a FIFO, another user's file): never
            # written to; the name is freed and a new file created.
            os.close(fd)
            os.unlink(part)
            continue
        if sys.platform != "win32":
            try:
                os.fchmod(fd, 0o600)  # left by an older agent with the umask's mode
            except BaseException:
                os.close(fd)
                raise
        return fd
    raise InvalidInput(f"{part} keeps being replaced on this machine: push again")


def _remove_stale_parts(directory: str, mine: str) -> None:
    """Remove the partial files of earlier pushes in ``directory`` untouched for
    ``STALE_PART``: only plain files of the agent's own with a push's name, never
    followed through a link, and never one a push is writing (it holds its lock).
    Best effort: whatever cannot be checked or removed is left as it is."""
    if sys.platform == "win32":
        return  # an open file cannot be removed there; the lock is of another kind
    import fcntl

    cutoff = time.time() - STALE_PART
    try:
        names = [e.name for e in os.scandir(directory) if _PART_NAME.match(e.name)]
    except OSError:
        return
    for name in names:
        path = os.path.join(directory, name)
        if path == mine:
            continue
        st = _lstat_quiet(path)
        if st is None or not _trusted(st) or st.st_mtime > cutoff:
            continue
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except OSError:
            continue
        try:
            held = os.fstat(fd)
            if (held.st_dev, held.st_ino) != (st.st_dev, st.st_ino) or not _trusted(held):
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a push writing it: skipped
            now = _lstat_quiet(path)
            if now is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                os.unlink(path)
        except OSError:
            continue
        finally:
            os.close(fd)


def _lstat_quiet(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def _part_path(dest: str, sha: str) -> str:
    """The temporary file beside ``dest``: ``.crc-<name>.<sha>.part``. A name too long
    to take 27 more bytes (file names are 255 bytes at most) is shortened to its first
    50 characters and a hash of it, so that any file that can be written can be pushed."""
    name = os.path.basename(dest)
    raw = name.encode("utf-8", "surrogatepass")
    if len(raw) > 200:
        name = f"{name[:50]}~{hashlib.sha256(raw).hexdigest()[:16]}"
    return os.path.join(os.path.dirname(dest) or ".", f".crc-{name}.{sha[:16]}.part")


def fetch_blob(
    where: Where,
    credential: str,
    sha: str,
    size: int,
    dest: str,
    mode: str | None,
    owner: str | None,
    sleep: Callable[[float], None] = time.sleep,
    stopped: Callable[[], bool] = _never,
    *,
    new_mode: str | None = None,
    name: str | None = None,
) -> str:
    """Download blob ``sha`` to ``dest``: into ``.crc-<name>.<sha>.part`` beside it,
    resuming with a Range request after a broken transfer, verify the SHA-256, apply
    mode/owner, then rename over ``dest`` (atomic in one directory). Returns a summary,
    which names the file written. ``dest`` naming a directory: the file is written in
    it as ``name`` (the master's file's name). The mode: ``mode`` if given, else an
    existing file's own, else ``new_mode`` (the master's file's) less the umask
    (``_new_file_mode``). Once ``stopped()`` (the push was cancelled), ``Stopped`` at
    the next write or attempt, its partial file removed and ``dest`` left as it was;
    cancelled before it began, nothing is looked at or written."""
    if stopped():
        raise Stopped
    _check_absolute(dest)
    dest = _into_directory(dest, name)
    given = dest
    if os.path.isdir(dest):
        raise InvalidInput(f"{dest} is a directory on this machine: give the file's path")
    try:
        dest = through_links(dest, "push", " on this machine")
        directory = os.path.dirname(dest) or "."
        if not os.path.isdir(directory):
            raise InvalidInput(f"directory {directory} does not exist on this machine")
        _check_replaceable(dest)
        uid_gid = _owner_ids(owner) if owner is not None else None
        part = _part_path(dest, sha)
        fd = _open_part(part, stopped)
    except OSError as exc:  # a name too long, a directory that takes no new file
        raise InvalidInput(_cannot_write(dest, exc, creating=True)) from None
    keep = True  # a broken download stays for the next push to resume
    try:
        if os.fstat(fd).st_size == 0:  # a new partial file, not one resumed: the
            _remove_stale_parts(directory, part)  # directory is read once per new file
        _download(where, credential, sha, size, fd, sleep, stopped)
        keep = False
        digest, got = _hash_fd(fd)
        if digest.hexdigest() != sha or got != size:
            raise InvalidInput(
                f"downloaded content does not match sha256 {sha} "
                f"({got} of {size} bytes): removed, push again",
                code="hash_mismatch",
            )
        final = int(mode, 8) if mode is not None else None
        if final is None:
            with contextlib.suppress(OSError):
                kept = os.stat(dest)
                if stat.S_ISREG(kept.st_mode):
                    final = kept.st_mode & 0o7777
        if stopped():  # the last moment a cancel can leave dest as it was
            raise Stopped
        if sys.platform == "win32":
            # Windows renames no open file: closed (and unlocked) first.
            os.close(fd)
            fd = -1
            if final is not None:
                os.chmod(part, final)
            _replace_when_free(part, dest)
        else:
            if uid_gid is not None:
                os.fchown(fd, *uid_gid)  # before the mode: chown may clear set-id bits
            os.fchmod(fd, final if final is not None else _new_file_mode(new_mode))
            os.replace(part, dest)  # still locked: a waiting push then starts afresh
    except BaseException as exc:
        if keep and not isinstance(exc, (_CannotWrite, OSError, Stopped)):
            raise
        # An OSError while downloading is this machine's file system, not the transfer:
        # the partial file is kept to resume. Otherwise (a cancel too: the master wants
        # none of it) it is removed.
        with contextlib.suppress(OSError):
            if keep and isinstance(exc, OSError):
                pass
            elif fd >= 0 and sys.platform != "win32":
                # Only the file this push holds: another one's is never removed.
                st, now = os.fstat(fd), os.lstat(part)
                if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
                    os.unlink(part)
            else:
                if fd >= 0:  # Windows removes no open file
                    os.close(fd)
                    fd = -1
                os.unlink(part)
        if isinstance(exc, _CannotWrite):
            # The machine's own disk (full, read-only, a name too long): trying again
            # cannot help, and a partial file must not keep a full disk full.
            raise InvalidInput(_cannot_write(dest, exc.error)) from None
        if isinstance(exc, OSError):
            raise InvalidInput(_cannot_write(dest, exc)) from None
        raise
    finally:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
    shown = dest if dest == given else f"{given} (a link to {dest})"
    # A line of the job's output: whatever the path holds, no control reaches a terminal.
    return f"{safe(shown)}: {size} bytes, sha256 {sha}"


def _cannot_write(dest: str, exc: OSError, creating: bool = False) -> str:
    """Why ``dest`` cannot be written, in one sentence: the system's own words
    ("Permission denied", "No space left on device") unless they would mislead.
    ``creating``: ``exc`` came while checking ``dest`` or creating the temporary file
    beside it."""
    directory, name = os.path.split(dest)
    shown = os.path.join(directory, f"{name[:60]}...") if len(name) > 80 else dest
    if exc.errno == errno.ENAMETOOLONG or getattr(exc, "winerror", None) == 206:
        size = len(name.encode("utf-8", "surrogatepass"))
        most = 255  # Windows' (in UTF-16 units) and most file systems'
        if sys.platform != "win32":
            with contextlib.suppress(OSError, ValueError):
                most = os.pathconf(directory or ".", "PC_NAME_MAX")
        if size > most:
            return (
                f"cannot write {shown} on this machine: its name is {size} bytes long, "
                f"and file names there are {most} bytes at most"
            )
        return f"cannot write {shown} on this machine: its path is too long for this machine"
    if creating and exc.errno == errno.ENOENT and sys.platform != "win32":
        if not os.path.isdir(directory or "."):
            return f"directory {directory} does not exist on this machine"
        # It exists and still no file can be made there: /proc, /sys and the like.
        return (
            f"cannot write {shown} on this machine: no new file can be made in {directory} "
            "(a virtual file system such as /proc or /sys), and a push writes a new file "
            "there and renames it over the old one"
        )
    return f"cannot write {shown} on this machine: {exc.strerror or exc}"


def _download(
    where: Where,
    credential: str,
    sha: str,
    size: int,
    fd: int,
    sleep: Callable[[float], None],
    stopped: Callable[[], bool],
) -> None:
    """Fill the locked temporary file ``fd`` with the blob, resuming where it ends (at
    the server the agent is connected to at each attempt)."""
    for attempt in range(ATTEMPTS):
        if stopped():
            raise Stopped
        base_url, ctx = where()
        url = f"{base_url.rstrip('/')}/v1/agent/blobs/{sha}"
        have = os.fstat(fd).st_size
        if have > size:
            os.ftruncate(fd, 0)
            have = 0
        if have == size:
            return
        headers = {"Authorization": f"Bearer {credential}"}
        if have:
            headers["Range"] = f"bytes={have}-"
        req = urllib.request.Request(url, headers=headers)  # noqa: S310 -- https URL
        try:
            with urllib.request.urlopen(req, timeout=60, context=ctx) as resp:  # noqa: S310
                append = resp.status == 206
                _receive(resp, fd, append, size - have if append else size, stopped)
        except _CannotWrite:
            raise
        except urllib.error.HTTPError as exc:
            raise http_error(exc, base_url) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException, _Broken) as exc:
            # An answer that is not HTTP as the server speaks it (a proxy or another
            # program in its place, a link that cuts it) is tried again, then fails.
            if attempt == ATTEMPTS - 1:
                cause = exc.error if isinstance(exc, _Broken) else exc
                why = str(cause)
                if not isinstance(cause, OSError):  # http.client's: its name says most
                    why = f"{type(cause).__name__}: {why}"
                raise Unavailable(f"download of {sha[:12]} failed: {why}") from None
            sleep(min(10.0, 0.5 * 2**attempt))


class _CannotWrite(Exception):
    """Writing the partial file failed (the machine's disk, not the network)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class _Broken(Exception):
    """Reading the response failed (the network, or a body that is not HTTP: the
    download is resumed)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _receive(resp: Any, fd: int, append: bool, limit: int, stopped: Callable[[], bool]) -> None:
    """Copy the response's body into ``fd`` (appended for a 206), synced to disk: at
    most ``limit`` bytes, what is left of the blob. An answer going on past it (a proxy
    or another program in the server's place) does not fill the machine's disk: the
    rest is not read, and the hash tells whether what was kept is the blob. ``Stopped``
    before the next chunk once ``stopped()``."""

    def read() -> bytes:
        nonlocal limit
        if stopped():
            raise Stopped
        if limit <= 0:
            return b""
        try:
            chunk = bytes(resp.read(min(CHUNK, limit)))
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # ValueError: a chunk size that is not hexadecimal (http.client).
            raise _Broken(exc) from None
        limit -= len(chunk)
        return chunk

    try:
        if append:
            os.lseek(fd, 0, os.SEEK_END)
        else:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
        while chunk := read():
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:  # write or sync of the file
        raise _CannotWrite(exc) from None


def _owner_ids(owner: str) -> tuple[int, int]:
    if sys.platform == "win32":
        raise InvalidInput(
            "--owner is not supported on Windows (files get the ACL of their directory)"
        )
    import grp
    import pwd

    user, _, group = owner.partition(":")
    uid = _owner_id(user, "user", lambda name: pwd.getpwnam(name).pw_uid)
    gid = _owner_id(group, "group", lambda name: grp.getgrnam(name).gr_gid) if group else -1
    return uid, gid


# The ids chown(2) takes: 32 bits, less (uid_t) -1, which means "leave it as it is".
_MAX_ID = 2**32 - 2


def _owner_id(name: str, kind: str, lookup: Callable[[str], int]) -> int:
    """The id of user or group ``name``, as chown(1) finds it: by name, else an
    all-digit ``name`` is taken as the id itself (ids no name is given to are common in
    containers and on shared volumes)."""
    try:
        return lookup(name)
    except KeyError:
        pass
    if name.isascii() and name.isdigit() and int(name) <= _MAX_ID:
        return int(name)
    raise InvalidInput(f"no {kind} {name!r} on this machine")


class _Changed(Exception):
    """The file being uploaded is no longer what was hashed."""


class _Exactly:
    """The first ``size`` bytes of ``fd``, hashed again as they are sent: a file that
    grows is sent as it was hashed, one that changed stops the upload, and so does a
    cancel (``stopped``)."""

    def __init__(self, fd: int, size: int, sha: str, stopped: Callable[[], bool] = _never) -> None:
        self.fd, self.left, self.sha, self.stopped = fd, size, sha, stopped
        self.digest = hashlib.sha256()
        os.lseek(fd, 0, os.SEEK_SET)

    def read(self, n: int = CHUNK) -> bytes:
        if self.stopped():
            raise Stopped
        if self.left <= 0:
            return b""
        chunk = os.read(self.fd, min(n if n > 0 else CHUNK, self.left, CHUNK))
        if not chunk:
            raise _Changed("it shrank")
        self.left -= len(chunk)
        self.digest.update(chunk)
        if self.left == 0 and self.digest.hexdigest() != self.sha:
            raise _Changed("its content differs")
        return chunk


def _too_large(path: str) -> TooLarge:
    return TooLarge(file_too_large(path, "pulled"))


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _open_regular(path: str) -> int:
    """Open ``path`` for a pull, following a symbolic link as before, and only if it is
    a regular file. Nothing else is ever opened: a FIFO would block the open, and the
    pull, until some writer came, and opening a device can act on it (a watchdog arms).
    On Linux the file is first taken by an ``O_PATH`` descriptor, which opens nothing,
    checked, then opened through that descriptor: a FIFO or a link put there meanwhile
    is never reached. Elsewhere it is checked by name, opened non-blocking and checked
    again on the open file."""
    flags = (
        os.O_RDONLY
        | getattr(os, "O_NONBLOCK", 0)
        | getattr(os, "O_NOCTTY", 0)
        | getattr(os, "O_CLOEXEC", 0)
        | getattr(os, "O_BINARY", 0)
    )
    try:
        fd = -1
        if sys.platform.startswith("linux"):
            handle = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                _check_regular(path, os.fstat(handle).st_mode)
                with contextlib.suppress(FileNotFoundError):
                    # No /proc here (a chroot, a bare container): by name, as below.
                    fd = os.open(f"/proc/self/fd/{handle}", flags)
            finally:
                os.close(handle)
        if fd < 0:
            _check_regular(path, os.stat(path).st_mode)
            fd = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError):
        raise InvalidInput(f"{path} does not exist on this machine") from None
    except OSError as exc:
        if os.path.isdir(path):  # Windows opens no directory as a file
            _check_regular(path, stat.S_IFDIR)
        raise InvalidInput(f"cannot read {path} on this machine: {exc.strerror or exc}") from None
    try:
        _check_regular(path, os.fstat(fd).st_mode)
        if sys.platform != "win32":
            os.set_blocking(fd, True)  # a regular file: reads of it never wait anyway
    except OSError as exc:
        os.close(fd)
        raise InvalidInput(f"cannot read {path} on this machine: {exc.strerror or exc}") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_regular(path: str, mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        raise InvalidInput(
            f"{path} is {kind} on this machine, not a regular file: "
            "crc pull only reads regular files"
        )


def upload_file(
    where: Where,
    credential: str,
    job_id: str,
    path: str,
    sleep: Callable[[float], None] = time.sleep,
    stopped: Callable[[], bool] = _never,
) -> str:
    """Upload ``path`` for pull job ``job_id`` (streamed, with its SHA-256): exactly the
    bytes that were hashed. An upload the network cuts is sent again (to the server the
    agent is connected to then), up to ``UPLOAD_ATTEMPTS`` times, and so is one refused
    while the server still holds a cut one (409 ``upload_in_progress``): the server
    keeps one upload per pull, and takes the same content again as a success. Once
    ``stopped()`` (the pull was cancelled), ``Stopped`` at the next read or attempt."""
    _check_absolute(path)
    fd = _open_regular(path)
    try:
        if os.fstat(fd).st_size > MAX_FILE_BYTES:
            raise _too_large(path)  # before reading it, not after sending it all
        digest = hashlib.sha256()
        size = 0
        kept: list[bytes] | None = []
        while chunk := os.read(fd, CHUNK):
            if stopped():
                raise Stopped
            digest.update(chunk)
            size += len(chunk)
            if size > MAX_FILE_BYTES:  # it grew meanwhile
                raise _too_large(path)
            if kept is not None:
                kept.append(chunk)
                if size > SMALL:
                    kept = None
        sha = digest.hexdigest()
        small = b"".join(kept) if kept is not None else None
        headers = {
            "Content-Length": str(size),
            "Content-Type": "application/octet-stream",
            "X-Content-SHA256": sha,
        }
        if sys.platform != "win32":  # Windows' modes say little: none is sent
            # The file's mode (octal): a new local file gets its permission bits.
            headers[FILE_MODE_HEADER] = format(stat.S_IMODE(os.fstat(fd).st_mode), "o")
        for attempt in range(UPLOAD_ATTEMPTS):
            if stopped():
                raise Stopped
            base_url, ctx = where()
            data: Any = small if small is not None else _Exactly(fd, size, sha, stopped)
            try:
                call_json(
                    base_url,
                    f"/v1/agent/uploads/{job_id}",
                    ctx,
                    method="PUT",
                    data=data,
                    credential=credential,
                    timeout=300,
                    headers=headers,
                )
                break
            except _Changed as exc:
                raise InvalidInput(
                    f"{path} changed while it was read ({exc}): pull it again"
                ) from None
            except CrcError as exc:
                final = exc.code in ("not_crc_server", "tls_untrusted")  # no better later
                again = (isinstance(exc, Unavailable) and not final) or (
                    exc.code == "upload_in_progress"
                )
                if not again or attempt == UPLOAD_ATTEMPTS - 1:
                    raise
                sleep(min(10.0, 0.5 * 2**attempt))
    except OSError as exc:
        raise InvalidInput(f"cannot read {path} on this machine: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return f"{path}: {size} bytes, sha256 {sha}"
