"""The line a push ends with on the machine (``PATH: N bytes, sha256 ...``) is job
output a terminal shows: whatever the path holds (the master refuses control
characters in it, an older server may not have), none reaches the terminal raw."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator

import pytest

from cloudremotecontrol.agent import files
from httpserve import serving_blob

BLOB = b"x\n"
SHA = hashlib.sha256(BLOB).hexdigest()


@pytest.fixture
def url() -> Iterator[str]:
    with serving_blob(BLOB) as served:
        yield served


@pytest.mark.skipif(sys.platform == "win32", reason="such file names are POSIX ones")
def test_the_summary_of_a_push_carries_no_raw_control(url, tmp_path) -> None:
    dest = tmp_path / "esc\x1b[31mRED\rX\nline2\x9b.txt"
    summary = files.fetch_blob(lambda: (url, None), "cred", SHA, 2, str(dest), None, None)
    assert dest.read_bytes() == BLOB
    assert summary == f"{tmp_path}/esc\\x1b[31mRED\\rX\\nline2\\x9b.txt: 2 bytes, sha256 {SHA}"
