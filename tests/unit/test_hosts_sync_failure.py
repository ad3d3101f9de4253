"""What a hosts sync that cannot write the hosts file says (``hosts_file.failure``): the
hosts file as the agent was given it and why, never the temporary file beside it."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import pytest

from cloudremotecontrol.agent import hosts_file
from cloudremotecontrol.agent.hosts_file import failure, sync_hosts

ENTRIES = [("10.0.0.1", ["a", "a.lab"])]


def _failure_of_sync(path: Path) -> str:
    with pytest.raises(OSError) as failed:
        sync_hosts(str(path), ENTRIES, "lab")
    return failure(str(path), failed.value)


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nohosts" / "hosts"
    said = _failure_of_sync(path)
    assert said == (
        f"cannot write the hosts file {path}: directory {path.parent} does not exist "
        "on this machine"
    )


@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links")
def test_a_link_to_a_missing_directory_names_both(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.symlink_to(tmp_path / "gone" / "hosts")
    said = _failure_of_sync(path)
    assert said == (
        f"cannot write the hosts file {path} (a link to {tmp_path / 'gone' / 'hosts'}): "
        f"directory {tmp_path / 'gone'} does not exist on this machine"
    )


@pytest.mark.parametrize(
    ("code", "why"),
    [
        (errno.EACCES, "Permission denied"),
        (errno.EROFS, "Read-only file system"),
        (errno.ENOSPC, "No space left on device"),
    ],
)
def test_other_failures_name_the_hosts_file_not_the_temporary_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, why: str
) -> None:
    path = tmp_path / "hosts"
    path.write_text("127.0.0.1 localhost\n")

    def refused(*args: object, **kwargs: object) -> tuple[int, str]:
        temporary = str(tmp_path / ".hosts.crc.abcdefgh")
        raise OSError(code, os.strerror(code), temporary)

    monkeypatch.setattr(hosts_file.tempfile, "mkstemp", refused)
    if code == errno.EACCES:  # rewritten in place then: that is refused too
        monkeypatch.setattr(hosts_file, "_rewrite_in_place", refused)
    said = _failure_of_sync(path)
    assert said == f"cannot write the hosts file {path}: {os.strerror(code)}"
    assert ".hosts.crc." not in said
    if sys.platform != "win32":
        assert os.strerror(code) == why
