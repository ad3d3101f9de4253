"""The managed hosts block: byte-for-byte preservation, idempotence, line endings."""

from __future__ import annotations

import errno
import os

from hypothesis import given
from hypothesis import strategies as st

from cloudremotecontrol.agent import hosts_file
from cloudremotecontrol.agent.hosts_file import merge, sync_hosts

ENTRIES = [("10.0.0.2", ["web", "web.lab"]), ("10.0.0.1", ["db", "db.lab"])]


def test_block_added_sorted_and_rest_preserved():
    out = merge(b"127.0.0.1 localhost", ENTRIES, "lab")
    assert out == (
        b"127.0.0.1 localhost\n"
        b"# BEGIN cloudremotecontrol group=lab (managed; do not edit)\n"
        b"10.0.0.1 db db.lab\n10.0.0.2 web web.lab\n"
        b"# END cloudremotecontrol group=lab\n"
    )


def test_crlf_files_keep_crlf():
    out = merge(b"127.0.0.1 localhost\r\n", ENTRIES, "lab")
    assert b"\r\n10.0.0.1 db db.lab\r\n" in out
    assert out.count(b"\n") == out.count(b"\r\n")


def test_two_groups_coexist_and_removal_restores_the_file():
    base = b"# top\n127.0.0.1 localhost\n"
    one = merge(base, ENTRIES, "lab")
    two = merge(one, [("10.1.0.1", ["x", "x.prod"])], "prod")
    assert b"group=lab" in two and b"group=prod" in two
    assert merge(merge(two, [], "prod"), [], "lab") == base


def test_damaged_block_is_replaced_to_the_end():
    damaged = b"a\n# BEGIN cloudremotecontrol group=lab (managed; do not edit)\n1.2.3.4 old\n"
    out = merge(damaged, ENTRIES, "lab")
    assert b"old" not in out and out.startswith(b"a\n") and out.count(b"# BEGIN") == 1


@given(st.binary(), st.binary())
def test_surrounding_bytes_survive_and_merge_is_idempotent(head, tail):
    head = head.replace(b"# BEGIN", b"#BEGIN").replace(b"# END", b"#END")
    tail = tail.replace(b"# BEGIN", b"#BEGIN").replace(b"# END", b"#END")
    once = merge(head, ENTRIES, "lab")
    assert merge(once, ENTRIES, "lab") == once
    assert once.startswith(head)
    # Text added after our block keeps the file's line-ending style (a CRLF tail would
    # rightly turn the block to CRLF on the next merge).
    tail = tail.replace(b"\r", b"")
    framed = merge(head.replace(b"\r", b"") + b"\n", ENTRIES, "lab") + tail
    assert framed.endswith(tail) and merge(framed, ENTRIES, "lab") == framed


def test_atomic_replace_keeps_mode_and_skips_unchanged(tmp_path):
    path = tmp_path / "hosts"
    path.write_bytes(b"127.0.0.1 localhost\n")
    os.chmod(path, 0o640)
    assert sync_hosts(str(path), ENTRIES, "lab") is True
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert sync_hosts(str(path), ENTRIES, "lab") is False
    assert sorted(os.listdir(tmp_path)) == ["hosts"]


def test_bind_mounted_file_is_rewritten_in_place(tmp_path, monkeypatch):
    """A bind-mounted /etc/hosts refuses rename with EBUSY (the system test shows it for
    real in a mount namespace); here the refusal is forced to test the fallback alone."""
    path = tmp_path / "hosts"
    path.write_bytes(b"127.0.0.1 localhost\n" * 5)
    inode = os.stat(path).st_ino

    def busy(src, dst):
        raise OSError(errno.EBUSY, "busy")

    monkeypatch.setattr(hosts_file.os, "replace", busy)
    assert sync_hosts(str(path), ENTRIES, "lab") is True
    assert os.stat(path).st_ino == inode
    assert path.read_bytes() == merge(b"127.0.0.1 localhost\n" * 5, ENTRIES, "lab")
    assert sorted(os.listdir(tmp_path)) == ["hosts"]
