"""A push to a path that is a symbolic link (``agent/files.fetch_blob``, against a real
HTTP server on loopback serving the blob): the content is written to the link's target
and the link stays, as ``cp`` does; a dangling link, a loop, and a link of another
user's (a trap planted in /tmp for the root agent) are refused.
A push also removes the stale partial files of earlier ones beside it, and only those."""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudremotecontrol.agent import files
from cloudremotecontrol.errors import InvalidInput
from httpserve import serving_blob

BLOB = b"listen 80\n"
SHA = hashlib.sha256(BLOB).hexdigest()


@pytest.fixture
def url() -> Iterator[str]:
    with serving_blob(BLOB) as served:
        yield served


def push(url: str, dest: Path) -> str:
    return files.fetch_blob(lambda: (url, None), "cred", SHA, len(BLOB), str(dest), None, None)


def test_a_push_to_a_link_writes_its_target_and_keeps_the_link(url, tmp_path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "app.conf").write_text("old\n")
    os.chmod(real / "app.conf", 0o640)
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "app.conf").symlink_to("../real/app.conf")  # relative, as most are
    (etc / "again.conf").symlink_to(etc / "app.conf")  # a link to a link
    summary = push(url, etc / "again.conf")
    assert (etc / "app.conf").is_symlink() and (etc / "again.conf").is_symlink()
    assert os.readlink(etc / "app.conf") == "../real/app.conf"
    assert (real / "app.conf").read_bytes() == BLOB
    assert (real / "app.conf").stat().st_mode & 0o777 == 0o640  # the target's mode kept
    assert f"(a link to {real / 'app.conf'})" in summary
    assert sorted(p.name for p in real.iterdir()) == ["app.conf"]  # no temporary file
    assert sorted(p.name for p in etc.iterdir()) == ["again.conf", "app.conf"]


def test_a_push_to_a_dangling_link_is_refused(url, tmp_path) -> None:
    (tmp_path / "app.conf").symlink_to(tmp_path / "gone.conf")
    with pytest.raises(InvalidInput, match="which does not exist on this machine"):
        push(url, tmp_path / "app.conf")
    assert (tmp_path / "app.conf").is_symlink() and not (tmp_path / "gone.conf").exists()


def test_a_push_to_a_link_looping_is_refused(url, tmp_path) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(InvalidInput, match="symbolic link in a loop"):
        push(url, tmp_path / "a")
    assert (tmp_path / "a").is_symlink() and (tmp_path / "b").is_symlink()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own a link as another user")
def test_another_users_link_is_not_followed(url, tmp_path) -> None:
    victim = tmp_path / "shadow"
    victim.write_text("root's\n")
    trap = tmp_path / "app.conf"
    trap.symlink_to(victim)
    os.lchown(trap, 65534, 65534)
    with pytest.raises(InvalidInput, match=r"symbolic link of another user's \(uid 65534\)"):
        push(url, trap)
    assert victim.read_text() == "root's\n" and trap.is_symlink()
    # Not even to a file of that user's own: the directories on the way are its to
    # swap for links while the push runs (into /etc, say).
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    (theirs / "passwd").write_text("theirs\n")
    os.chown(theirs / "passwd", 65534, 65534)
    trap.unlink()
    trap.symlink_to(theirs / "passwd")
    os.lchown(trap, 65534, 65534)
    with pytest.raises(InvalidInput, match=r"symbolic link of another user's \(uid 65534\)"):
        push(url, trap)
    assert (theirs / "passwd").read_text() == "theirs\n" and trap.is_symlink()


def _old(path: Path) -> None:
    when = time.time() - 2 * 24 * 3600  # two days: past STALE_PART
    os.utime(path, (when, when), follow_symlinks=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own a file as another user")
def test_a_push_removes_stale_partial_files_of_its_own_only(url, tmp_path) -> None:
    """A partial file of a content never pushed again is removed by the next push into
    its directory once untouched for a day (STALE_PART); nothing else is: a fresh one, another
    user's, a link (nor its target), a file with another name, one a push is writing."""
    stale = tmp_path / f".crc-app.conf.{'1' * 16}.part"
    fresh = tmp_path / f".crc-app.conf.{'2' * 16}.part"
    theirs = tmp_path / f".crc-app.conf.{'3' * 16}.part"
    link = tmp_path / f".crc-app.conf.{'4' * 16}.part"
    writing = tmp_path / f".crc-other.{'5' * 16}.part"
    other = tmp_path / ".crc-app.conf.part"
    target = tmp_path / "target"
    for path in (stale, fresh, theirs, writing, other, target):
        path.write_bytes(b"partial")
    os.chown(theirs, 65534, 65534)
    link.symlink_to(target)
    for path in (stale, theirs, link, writing, other, target):
        _old(path)
    held = os.open(writing, os.O_RDWR)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        push(url, tmp_path / "app.conf")
    finally:
        os.close(held)
    assert (tmp_path / "app.conf").read_bytes() == BLOB
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (fresh, theirs, link, writing, other, target, tmp_path / "app.conf")
    )
    assert target.read_bytes() == b"partial"
