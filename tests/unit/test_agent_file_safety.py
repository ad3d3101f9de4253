"""The agent's file helpers: paths absolute by this machine's rules, and the temporary
file of a push opened safely in a directory another user owns."""

from __future__ import annotations

import os
import stat
import sys

import pytest

from cloudremotecontrol.agent import files
from cloudremotecontrol.errors import InvalidInput

NOWHERE = lambda: ("https://127.0.0.1:1", None)  # noqa: E731


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX rules")
@pytest.mark.parametrize("path", ["C:\\x", "C:/x", "relative", "", "c:"])
def test_a_path_not_absolute_here_is_refused(path):
    with pytest.raises(InvalidInput, match="not an absolute path on this machine"):
        files.fetch_blob(NOWHERE, "cred", "0" * 64, 1, path, None, None)
    with pytest.raises(InvalidInput, match="not an absolute path on this machine"):
        files.upload_file(NOWHERE, "cred", "job", path)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX links and modes")
def test_the_temporary_file_is_created_private_and_never_through_a_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("secret\n")
    part = tmp_path / "x.part"
    for plant in (lambda: os.symlink(victim, part), lambda: os.link(victim, part)):
        plant()
        fd = files._open_part(str(part))
        try:
            st = os.fstat(fd)
            assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1
            assert stat.S_IMODE(st.st_mode) == 0o600
            assert (st.st_dev, st.st_ino) == (os.lstat(part).st_dev, os.lstat(part).st_ino)
        finally:
            os.close(fd)
        assert victim.read_text() == "secret\n"
        part.unlink()
    part.write_bytes(b"resumed")  # a partial download of the agent's own: kept
    os.chmod(part, 0o644)
    fd = files._open_part(str(part))
    try:
        assert os.fstat(fd).st_size == len(b"resumed")
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
    finally:
        os.close(fd)


@pytest.mark.parametrize("change", ["rewritten", "shrunk", "grown"])
def test_a_pull_sends_exactly_what_was_hashed_or_stops(tmp_path, change):
    import hashlib

    path = tmp_path / "f.log"
    data = os.urandom(3 * files.CHUNK + 5)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        body = files._Exactly(fd, len(data), hashlib.sha256(data).hexdigest())
        if change == "rewritten":
            path.write_bytes(data[::-1])
        elif change == "shrunk":
            os.truncate(path, len(data) // 2)
        else:
            with open(path, "ab") as fh:
                fh.write(b"more lines\n" * 1000)

        def send() -> bytes:
            out = b""
            while chunk := body.read(8192):
                out += chunk
            return out

        if change == "grown":
            assert send() == data  # exactly the bytes hashed, not one more
        else:
            with pytest.raises(files._Changed):
                send()
    finally:
        os.close(fd)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX umask")
@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_a_new_pushed_file_follows_the_agents_umask(mask, mode):
    old = os.umask(mask)
    try:
        assert files._new_file_mode() == mode
    finally:
        os.umask(old)


@pytest.mark.skipif(
    sys.platform == "win32" or os.geteuid() != 0,
    reason="needs root (as the agent runs) to plant a file of another user",
)
def test_another_users_locked_part_file_never_makes_a_push_wait(tmp_path):
    # Its owner holds a lock on it: locking it first would wait for ever.
    import fcntl
    import threading

    part = tmp_path / "x.part"
    part.write_text("planted")
    os.chown(part, 65534, 65534)  # nobody
    holder = os.open(part, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    got: list[int] = []
    t = threading.Thread(target=lambda: got.append(files._open_part(str(part))), daemon=True)
    t.start()
    t.join(10)
    try:
        assert got, "the push waited on a lock held by another user's file"
        st = os.fstat(got[0])
        assert st.st_uid == os.geteuid() and st.st_size == 0
    finally:
        os.close(holder)
        t.join(5)
        for fd in got:
            os.close(fd)
