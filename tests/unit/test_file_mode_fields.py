"""The optional fields a push and a pull carry about the file: the mode a machine
reports (hostile: checked where decoded, masked to permission bits where used), the
local file's mode and name a push sends, and a push to a server older than them."""

from __future__ import annotations

import os
import stat
import sys

import pytest

from cloudremotecontrol.errors import InvalidInput
from cloudremotecontrol.master.client import (
    download_mode,
    older_server,
    push_fields,
    set_download_mode,
)
from cloudremotecontrol.protocol.messages import FilePut, decode_file_mode

posix = pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")


def test_a_reported_mode_is_an_int_within_0_and_7777():
    assert decode_file_mode(None) is None
    assert decode_file_mode("640") == 0o640
    assert decode_file_mode("0") == 0
    assert decode_file_mode("7777") == 0o7777
    assert decode_file_mode(0o4755) == 0o4755
    for bad in ("", "8", "17777", "-1", "0x1ff", " 644", "6.4", "६४४", True, -1, 0o10000, 1.0, []):
        with pytest.raises(InvalidInput, match="invalid file mode"):
            decode_file_mode(bad)


def test_a_new_file_gets_the_remote_bits_less_the_umask_never_a_set_id_bit():
    assert download_mode(None, 0o022, 0o640) == 0o640
    assert download_mode(None, 0o027, 0o755) == 0o750
    assert download_mode(None, 0o022, 0o7777) == 0o755
    assert download_mode(None, 0o022, None) == 0o644  # no mode reported: as before
    assert download_mode(stat.S_IFREG | 0o4700, 0o022, 0o644) == 0o700  # replaced: its own


@posix
def test_a_hostile_reported_mode_is_ignored(tmp_path):
    old = os.umask(0o022)
    try:
        for reported, want in [
            (0o4750, 0o750),
            ("x", 0o644),
            (True, 0o644),
            (0o17777, 0o644),
            (-1, 0o644),
            (None, 0o644),
        ]:
            tmp = tmp_path / "tmp"
            tmp.write_bytes(b"x")
            os.chmod(tmp, 0o600)
            fd = os.open(tmp, os.O_RDWR)
            try:
                set_download_mode(fd, str(tmp), str(tmp_path / "new"), reported)
            finally:
                os.close(fd)
            assert stat.S_IMODE(os.stat(tmp).st_mode) == want, (reported, oct(want))
    finally:
        os.umask(old)


@posix
def test_a_push_sends_the_local_files_bits_and_name(tmp_path):
    src = tmp_path / "secret.key"
    src.write_text("k")
    os.chmod(src, 0o4600)
    assert push_fields(str(src), "/etc/x.key") == ("/etc/x.key", "0600", "secret.key")
    assert push_fields(str(src), "/etc/ssl/") == ("/etc/ssl/secret.key", "0600", None)
    assert push_fields(str(src), "C:\\keys\\")[0] == "C:\\keys\\secret.key"
    # A Linux path ending in a backslash is a file's name, not a directory.
    assert push_fields(str(src), "/etc/odd\\")[0] == "/etc/odd\\"
    odd = tmp_path / "esc\x1b[31m"
    odd.write_text("k")
    # A name no push could write is not sent: REMOTE must then name the file.
    assert push_fields(str(odd), "/etc/x")[2] is None
    assert push_fields(str(odd), "/etc/")[0] == "/etc/"


def test_the_file_name_a_push_carries_is_a_name_only():
    body = {"job_id": "j", "sha256": "0" * 64, "size": 0, "path": "/srv/"}
    assert FilePut.from_body({**body, "name": "app.conf"}).name == "app.conf"
    assert FilePut.from_body({**body, "new_mode": "0"}).new_mode == "0"
    assert FilePut.from_body({**body, "mode": "0"}).mode == "0"
    for bad in ("", ".", "..", "a/b", "..\\x", "a\x1bb", "x" * 256, 5):
        with pytest.raises(InvalidInput):
            FilePut.from_body({**body, "name": bad})


def test_a_server_older_than_the_fields_is_told_apart():
    assert older_server(
        InvalidInput("invalid new_mode: is not a field of this request", field="new_mode")
    )
    assert older_server(InvalidInput("invalid name: Extra inputs are not permitted"))
    assert not older_server(InvalidInput("invalid new_mode '9': use octal like 0640"))
    assert not older_server(InvalidInput("no machine 'x' in group 'lab'", field="machine"))
