"""The managed hosts block: what stays byte for byte, what is replaced, how it is written."""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloudremotecontrol.agent import hosts_file
from cloudremotecontrol.agent.hosts_file import merge, render_block, sync_hosts, write_hosts

LAB = [("10.0.0.2", ["web", "web.lab"]), ("10.0.0.1", ["db", "db.lab"])]
PROD = [("10.1.0.1", ["api", "api.prod"])]
BEGIN_LAB = b"# BEGIN cloudremotecontrol group=lab (managed; do not edit)"
END_LAB = b"# END cloudremotecontrol group=lab"
LAB_BLOCK = BEGIN_LAB + b"\n10.0.0.1 db db.lab\n10.0.0.2 web web.lab\n" + END_LAB + b"\n"


# -- render_block ----------------------------------------------------------------------------


def test_block_lines_are_sorted_by_name_whatever_the_input_order():
    assert render_block(LAB, "lab", "\n") == render_block(LAB[::-1], "lab", "\n")
    assert render_block(LAB, "lab", "\n").encode() == LAB_BLOCK


def test_block_uses_the_requested_line_ending():
    text = render_block(LAB, "lab", "\r\n")
    assert text.count("\r\n") == 4 and text.count("\n") == 4


@pytest.mark.parametrize(
    "entries, group",
    [
        ([("10.0.0.1", ["db\n10.6.6.6 evil"])], "lab"),  # a newline would inject a line
        ([("10.0.0.1", ["db #x"])], "lab"),
        ([("not-an-ip", ["db"])], "lab"),
        ([("10.0.0.1", [])], "lab"),
        ([("10.0.0.1", "db")], "lab"),  # names must be a list
        (LAB, "lab extra"),
        (LAB, ""),
    ],
)
def test_what_cannot_be_written_safely_is_refused(entries, group):
    with pytest.raises(ValueError):
        render_block(entries, group, "\n")
    with pytest.raises(ValueError):
        merge(b"127.0.0.1 localhost\n", entries, group)


# What a hostile machine put in its facts, relayed by a server that did not check them.
INJECTED = [
    "fe80::1%x\n6.6.6.6 bank.example.com\n#",  # a scope id carrying a whole line
    "fe80::1%x\n# END cloudremotecontrol group=lab\n7.7.7.7 evil\n#",  # out of the block
    "fe80::1%eth0",  # a scope id at all: only the owner knows its zone
    "10.0.0.1 ",
    " 10.0.0.1",
    "10.0.0.1\n",
    "10.0.0.1/24",
    "::ffff:10.0.0.1%1",
]


@pytest.mark.parametrize("ip", INJECTED)
def test_an_address_that_is_not_one_plain_token_is_refused(ip, tmp_path):
    with pytest.raises(ValueError):
        render_block([(ip, ["c", "c.lab"])], "lab", "\n")
    path = tmp_path / "hosts"
    path.write_bytes(b"127.0.0.1 localhost\n")
    with pytest.raises(ValueError):
        sync_hosts(str(path), [("10.0.0.2", ["web"]), (ip, ["c", "c.lab"])], "lab")
    assert path.read_bytes() == b"127.0.0.1 localhost\n"  # nothing written


@pytest.mark.parametrize(
    "name",
    [
        "c\n6.6.6.6",
        "c\r",
        "c\t",
        "c d",
        "-c",
        "c-",
        "c..lab",
        ".c",
        "c.",
        "x" * 64,
        ("a." * 127) + "a",  # 255 characters
        "c#x",
        "é",
        "",
    ],
)
def test_a_name_that_is_not_an_rfc1123_host_name_is_refused(name):
    with pytest.raises(ValueError):
        render_block([("10.0.0.1", [name])], "lab", "\n")


@given(st.text(max_size=60), st.lists(st.text(max_size=30), min_size=1, max_size=3))
def test_every_written_line_is_one_address_and_valid_names(ip, names):
    try:
        block = render_block([(ip, names)], "lab", "\n")
    except ValueError:
        return
    lines = block.split("\n")
    assert len(lines) == 4 and lines[-1] == ""  # BEGIN, the one entry, END
    tokens = lines[1].split(" ")
    assert ipaddress.ip_address(tokens[0]) and "%" not in tokens[0]
    assert all(re.fullmatch(r"[A-Za-z0-9.-]+", t) for t in tokens[1:])


def test_ipv6_addresses_are_written_in_canonical_form():
    out = render_block([("FD00:0:0::0002", ["a"])], "lab", "\n")
    assert "\nfd00::2 a\n" in out


# -- merge -----------------------------------------------------------------------------------


def test_block_appended_after_a_missing_final_newline():
    assert merge(b"127.0.0.1 localhost", LAB, "lab") == b"127.0.0.1 localhost\n" + LAB_BLOCK


def test_block_in_an_empty_file():
    assert merge(b"", LAB, "lab") == LAB_BLOCK


def test_merge_is_idempotent():
    once = merge(b"127.0.0.1 localhost\n", LAB, "lab")
    assert merge(once, LAB, "lab") == once


def test_block_replaced_where_it_stands_and_the_rest_kept():
    head, tail = b"127.0.0.1 localhost\n", b"# after us\n1.1.1.1 other\n"
    old = head + BEGIN_LAB + b"\n10.9.9.9 gone gone.lab\n" + END_LAB + b"\n" + tail
    assert merge(old, LAB, "lab") == head + LAB_BLOCK + tail


def test_crlf_file_gets_a_crlf_block_and_keeps_every_byte():
    head = b"# Copyright (c) 1993-2009 Microsoft Corp.\r\n127.0.0.1 localhost\r\n"
    out = merge(head, LAB, "lab")
    assert out.startswith(head)
    assert out[len(head) :] == LAB_BLOCK.replace(b"\n", b"\r\n")
    assert merge(out, LAB, "lab") == out


def test_separator_before_the_block_follows_the_file_style():
    out = merge(b"127.0.0.1 localhost", LAB, "lab")
    assert out.startswith(b"127.0.0.1 localhost\n")
    out = merge(b"a\r\nb", LAB, "lab")
    assert out.startswith(b"a\r\nb\r\n" + BEGIN_LAB + b"\r\n")


def test_file_ending_in_a_lone_cr_is_completed_not_given_a_blank_line():
    out = merge(b"127.0.0.1 localhost\r", LAB, "lab")
    assert out == b"127.0.0.1 localhost\r\n" + LAB_BLOCK.replace(b"\n", b"\r\n")
    assert merge(out, LAB, "lab") == out


def test_non_utf8_bytes_outside_the_block_survive():
    head = b"127.0.0.1 localhost\n# caf\xe9 \xff\xfe\n"
    tail = b"# \x80\x81 latin-1 and garbage\n"
    out = merge(merge(head, LAB, "lab") + tail, PROD, "lab")
    assert out.startswith(head) and out.endswith(tail)


def test_two_groups_blocks_coexist_and_each_is_changed_alone():
    base = b"127.0.0.1 localhost\n"
    both = merge(merge(base, LAB, "lab"), PROD, "prod")
    assert both.count(b"# BEGIN cloudremotecontrol") == 2
    changed = merge(both, [("10.0.0.3", ["db", "db.lab"])], "lab")
    prod_block = render_block(PROD, "prod", "\n").encode()
    assert prod_block in changed and b"10.0.0.2" not in changed
    assert changed.index(BEGIN_LAB) < changed.index(prod_block)  # replaced in place


def test_group_name_prefix_of_another_is_not_confused():
    both = merge(merge(b"", LAB, "lab"), PROD, "lab2")
    assert merge(both, [], "lab") == render_block(PROD, "lab2", "\n").encode()


def test_empty_entries_remove_the_block_and_restore_the_file():
    base = b"# top\n127.0.0.1 localhost\n"
    both = merge(merge(base, LAB, "lab"), PROD, "prod")
    assert merge(merge(both, [], "prod"), [], "lab") == base
    assert merge(base, [], "lab") == base  # nothing to remove: nothing changes


def test_damaged_block_without_end_removes_only_its_own_lines():
    """BEGIN without END: the BEGIN line and the plain ``IP name`` lines right after it
    go; the first other line (a comment, a blank line, another block) and all that
    follows stay, because cutting to the end of file could delete other people's lines."""
    damaged = (
        b"127.0.0.1 localhost\n" + BEGIN_LAB + b"\n10.9.9.9 old old.lab\n"
        b"10.9.9.8 older\n\n# added by hand later\n5.5.5.5 mine\n"
    )
    out = merge(damaged, LAB, "lab")
    assert out == (
        b"127.0.0.1 localhost\n" + LAB_BLOCK + b"\n# added by hand later\n5.5.5.5 mine\n"
    )
    assert merge(out, LAB, "lab") == out


def test_damaged_block_does_not_swallow_the_next_groups_block():
    prod = render_block(PROD, "prod", "\n").encode()
    damaged = BEGIN_LAB + b"\n10.9.9.9 old\n" + prod
    out = merge(damaged, LAB, "lab")
    assert out == LAB_BLOCK + prod
    assert merge(damaged, [], "lab") == prod


def test_damaged_block_at_end_of_file():
    assert merge(b"x\n" + BEGIN_LAB + b"\n10.9.9.9 old", LAB, "lab") == b"x\n" + LAB_BLOCK


def test_end_without_begin_is_left_alone():
    orphan = b"127.0.0.1 localhost\n" + END_LAB + b"\n"
    out = merge(orphan, LAB, "lab")
    assert out == orphan + LAB_BLOCK and merge(out, LAB, "lab") == out


def test_hand_edits_inside_a_complete_block_are_discarded():
    edited = BEGIN_LAB + b"\n# my note\n10.9.9.9 x\n" + END_LAB + b"\nrest\n"
    assert merge(edited, LAB, "lab") == LAB_BLOCK + b"rest\n"


def test_duplicate_blocks_collapse_into_the_first_place():
    dup = b"a\n" + LAB_BLOCK + b"b\n" + LAB_BLOCK + b"c\n"
    assert merge(dup, LAB, "lab") == b"a\n" + LAB_BLOCK + b"b\nc\n"


def _no_markers(data: bytes) -> bytes:
    return data.replace(b"# BEGIN", b"#BEGIN").replace(b"# END", b"#END")


@given(st.binary(), st.binary(), st.sampled_from([b"\n", b"\r\n"]))
def test_surrounding_bytes_survive_and_merge_is_idempotent(head, tail, nl):
    head, tail = _no_markers(head), _no_markers(tail)
    once = merge(head, LAB, "lab")
    assert once.startswith(head)
    assert merge(once, LAB, "lab") == once
    # A block between a first line ending in ``nl`` and arbitrary bytes: replacing it
    # keeps both sides, follows the file's style, and removing it gives them back.
    first = _no_markers(head.replace(b"\n", b"").replace(b"\r", b"")) + nl
    framed = first + merge(b"", PROD, "lab") + tail
    again = merge(framed, LAB, "lab")
    assert again == first + LAB_BLOCK.replace(b"\n", nl) + tail
    assert merge(again, LAB, "lab") == again
    assert merge(again, [], "lab") == first + tail


# -- writing ---------------------------------------------------------------------------------


def test_atomic_replace_keeps_mode_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "hosts"
    path.write_bytes(b"127.0.0.1 localhost\n")
    os.chmod(path, 0o640)
    inode = os.stat(path).st_ino
    assert sync_hosts(str(path), LAB, "lab") is True
    assert path.read_bytes() == b"127.0.0.1 localhost\n" + LAB_BLOCK
    assert os.stat(path).st_mode & 0o7777 == 0o640
    assert os.stat(path).st_ino != inode  # a new file was renamed over the old one
    assert sorted(os.listdir(tmp_path)) == ["hosts"]


def test_unchanged_content_is_not_written(tmp_path):
    path = tmp_path / "hosts"
    path.write_bytes(b"127.0.0.1 localhost\n")
    assert sync_hosts(str(path), LAB, "lab") is True
    mtime, inode = os.stat(path).st_mtime_ns, os.stat(path).st_ino
    assert sync_hosts(str(path), LAB, "lab") is False
    assert (os.stat(path).st_mtime_ns, os.stat(path).st_ino) == (mtime, inode)
    assert write_hosts(str(path), path.read_bytes()) is False


def test_missing_file_is_created_world_readable(tmp_path):
    path = tmp_path / "hosts"
    assert sync_hosts(str(path), LAB, "lab") is True
    assert path.read_bytes() == LAB_BLOCK
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_symlinked_hosts_file_keeps_its_link(tmp_path):
    real = tmp_path / "real-hosts"
    real.write_bytes(b"127.0.0.1 localhost\n")
    link = tmp_path / "hosts"
    link.symlink_to(real)
    assert sync_hosts(str(link), LAB, "lab") is True
    assert link.is_symlink() and real.read_bytes().endswith(LAB_BLOCK)


def test_group_deletion_removes_the_block_from_the_file(tmp_path):
    path = tmp_path / "hosts"
    path.write_bytes(b"127.0.0.1 localhost\n")
    sync_hosts(str(path), LAB, "lab")
    assert sync_hosts(str(path), [], "lab") is True
    assert path.read_bytes() == b"127.0.0.1 localhost\n"


@pytest.mark.parametrize("code", [errno.EBUSY, errno.EXDEV, errno.EPERM, errno.EACCES])
def test_refused_rename_falls_back_to_rewriting_in_place(tmp_path, monkeypatch, code):
    """A bind-mounted /etc/hosts (Docker) refuses rename with EBUSY. Setting up a real
    bind mount needs privileges and namespaces this unit tier does not use (the system
    test does it for real), so here the refusal is forced to test the fallback alone."""
    path = tmp_path / "hosts"
    original = b"127.0.0.1 localhost\n" * 50  # longer than the result: truncation matters
    path.write_bytes(original)
    os.chmod(path, 0o604)
    inode = os.stat(path).st_ino

    def refuse(src, dst):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(hosts_file.os, "replace", refuse)
    assert sync_hosts(str(path), LAB, "lab") is True
    assert os.stat(path).st_ino == inode
    assert os.stat(path).st_mode & 0o777 == 0o604
    assert path.read_bytes() == merge(original, LAB, "lab")
    assert sorted(os.listdir(tmp_path)) == ["hosts"]


def test_unwritable_directory_falls_back_to_rewriting_in_place(tmp_path, monkeypatch):
    """The directory refuses new files (as for a non-root agent, or a read-only bind
    mount of the directory); tests run as root, so the refusal is forced."""
    path = tmp_path / "hosts"
    path.write_bytes(b"127.0.0.1 localhost\n")

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(hosts_file.tempfile, "mkstemp", refuse)
    assert sync_hosts(str(path), LAB, "lab") is True
    assert path.read_bytes() == b"127.0.0.1 localhost\n" + LAB_BLOCK


def test_other_write_errors_are_raised_and_the_file_is_kept(tmp_path, monkeypatch):
    path = tmp_path / "hosts"
    path.write_bytes(b"127.0.0.1 localhost\n")

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hosts_file.os, "replace", full)
    with pytest.raises(OSError) as info:
        sync_hosts(str(path), LAB, "lab")
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"127.0.0.1 localhost\n"
    assert sorted(os.listdir(tmp_path)) == ["hosts"]


def test_a_change_made_by_another_program_while_writing_is_kept(tmp_path, monkeypatch):
    """Another program (a hand edit, cloud-init, a container runtime) appends a line
    while the agent writes and syncs its new file: the sync merges its block again into
    what the file then holds, rather than rename the stale copy over that line."""
    path = tmp_path / "hosts"
    path.write_bytes(b"127.0.0.1 localhost\n")
    real_fsync = os.fsync
    edits = []

    def fsync_while_another_edits(fd):
        real_fsync(fd)
        if not edits:
            edits.append(1)
            with open(path, "ab") as fh:  # as `echo ... >> /etc/hosts` does
                fh.write(b"10.9.9.9 added-meanwhile\n")

    monkeypatch.setattr(hosts_file.os, "fsync", fsync_while_another_edits)
    assert sync_hosts(str(path), LAB, "lab") is True
    assert path.read_bytes() == b"127.0.0.1 localhost\n10.9.9.9 added-meanwhile\n" + LAB_BLOCK
    assert sorted(os.listdir(tmp_path)) == ["hosts"]


def test_a_file_that_keeps_changing_fails_the_sync_and_keeps_every_change(tmp_path, monkeypatch):
    path = tmp_path / "hosts"
    path.write_bytes(b"127.0.0.1 localhost\n")
    real_fsync = os.fsync
    added = []

    def fsync_while_another_edits(fd):
        real_fsync(fd)
        added.append(f"10.9.9.{len(added)} n{len(added)}\n".encode())
        with open(path, "ab") as fh:
            fh.write(added[-1])

    monkeypatch.setattr(hosts_file.os, "fsync", fsync_while_another_edits)
    with pytest.raises(OSError, match="kept being changed"):
        sync_hosts(str(path), LAB, "lab")
    assert path.read_bytes() == b"127.0.0.1 localhost\n" + b"".join(added)
    assert sorted(os.listdir(tmp_path)) == ["hosts"]


def test_removing_a_block_from_a_missing_file_creates_nothing(tmp_path):
    assert sync_hosts(str(tmp_path / "hosts"), [], "lab") is False
    assert os.listdir(tmp_path) == []


def test_temporary_files_left_by_a_killed_sync_are_removed(tmp_path):
    """A sync killed between writing its temporary file and the swap (kill -9, a power
    loss) leaves it in the hosts file's directory (/etc): the next sync removes such
    leftovers, and nothing recent, nothing else and no link."""
    path = tmp_path / "hosts"
    path.write_bytes(b"127.0.0.1 localhost\n")
    old = time.time() - hosts_file.STALE_TEMP_SECONDS - 60
    stale = tmp_path / ".hosts.crc.abc123"
    stale.write_bytes(b"half")
    recent = tmp_path / ".hosts.crc.def456"  # another agent's sync, in progress
    recent.write_bytes(b"half")
    link = tmp_path / ".hosts.crc.link"
    link.symlink_to(tmp_path / "elsewhere")
    other = tmp_path / ".hosts.other"
    other.write_bytes(b"x")
    for p in (stale, other):
        os.utime(p, (old, old))
    os.utime(link, (old, old), follow_symlinks=False)
    assert sync_hosts(str(path), LAB, "lab") is True
    assert sorted(os.listdir(tmp_path)) == sorted(["hosts", recent.name, link.name, other.name])
