"""`crc push` REMOTE, --owner and the machine's own refusals: a numeric owner as chown
takes it, a missing user or group said plainly, a REMOTE holding control characters
refused before anything is uploaded, and a file that cannot be written said in one
sentence, not in Python's words."""

from __future__ import annotations

import hashlib
import os

import pytest
from wire_helpers import assert_error, bearer, pinned_http

from cloudremotecontrol.errors import InvalidInput

ESCAPES = "/tmp/x/esc\x1b[31mRED\rX\nline2.txt"


def _blobs(env):
    root = env.server.data_dir / "blobs"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file another owner")
def test_a_numeric_owner_is_taken_as_an_id_as_chown_does(env, crc, tmp_path):
    env.group_with_agents("lab", ["a"])
    src = tmp_path / "f.txt"
    src.write_text("x\n")
    dest = tmp_path / "own.txt"
    r = crc("push", "lab", "--to", "a", str(src), str(dest), "--owner", "65534")
    assert r.returncode == 0, r.stderr
    assert (dest.stat().st_uid, dest.stat().st_gid) == (65534, 0)
    # An id no name is given to on the machine, and a group given by its id too.
    r = crc("push", "lab", "--to", "a", str(src), str(dest), "--owner", "54321:54320")
    assert r.returncode == 0, r.stderr
    assert (dest.stat().st_uid, dest.stat().st_gid) == (54321, 54320)


def test_a_missing_user_or_group_is_said_plainly(env, crc, tmp_path):
    env.group_with_agents("lab", ["a"])
    src = tmp_path / "f.txt"
    src.write_text("x\n")
    dest = tmp_path / "own.txt"
    cases = [
        ("nosuchuser", "no user 'nosuchuser' on this machine"),
        ("nobody:nosuchgroup", "no group 'nosuchgroup' on this machine"),
        ("root:99999999999", "no group '99999999999' on this machine"),  # past any id
    ]
    for owner, words in cases:
        r = crc("push", "lab", "--to", "a", str(src), str(dest), "--owner", owner)
        assert r.returncode == 1, (owner, r.stderr)
        assert words in r.stderr, (owner, r.stderr)
        assert "getpwnam" not in r.stderr and "getgrnam" not in r.stderr, r.stderr
    assert not dest.exists()


def test_a_remote_with_control_characters_is_refused_before_the_upload(env, crc, tmp_path):
    env.group_with_agents("lab", ["a"])
    src = tmp_path / "empty.txt"
    src.write_text("")
    for remote in (ESCAPES, "/tmp/x/del\x7f.txt", "/tmp/x/c1\x9b31m.txt", "/tmp/x/tab\t.txt"):
        r = crc("push", "lab", "--to", "a", str(src), remote)
        assert r.returncode == 2, (remote, r.returncode, r.stdout, r.stderr)
        assert "control character" in r.stderr, r.stderr
        assert not any(c in r.stdout + r.stderr for c in "\x1b\r\x7f\x9b\t"), repr(r.stderr)
        with pytest.raises(InvalidInput, match="control character"):
            env.client.push("lab", "a", str(src), remote)
    assert _blobs(env) == []  # nothing uploaded for nothing
    # The API refuses it too (its content uploaded first), naming the field.
    sha = hashlib.sha256(b"").hexdigest()
    with pinned_http(env.server) as http:
        auth = {"authorization": bearer(env.token)}
        assert http.put(f"/v1/blobs/{sha}", content=b"", headers=auth).status_code == 200
        resp = http.post(
            "/v1/groups/lab/files",
            json={"to": "a", "sha256": sha, "path": ESCAPES},
            headers=auth,
        )
        assert_error(resp, 400, "invalid_input", "control character")
        assert resp.json()["error"]["details"] == {"field": "path"}, resp.text
    assert env.client.list_jobs("lab") == []  # no job made
    # Non-ASCII that is no control still goes.
    dest = tmp_path / "café ünï.txt"
    r = crc("push", "lab", "--to", "a", str(src), str(dest))
    assert r.returncode == 0, r.stderr
    assert dest.exists()


def test_a_file_name_too_long_is_said_in_one_sentence(env, crc, tmp_path):
    env.group_with_agents("lab", ["a"])
    src = tmp_path / "f.txt"
    src.write_text("x\n")
    etc = tmp_path / "etc"
    etc.mkdir()
    name = "x" * 300
    r = crc("push", "lab", "--to", "a", str(src), str(etc / name))
    assert r.returncode == 1, r.stderr
    assert "[Errno" not in r.stderr and name not in r.stderr, r.stderr
    assert "its name is 300 bytes long, and file names there are 255 bytes at most" in r.stderr
    assert f"cannot write {etc / name[:60]}..." in r.stderr, r.stderr
    assert list(etc.iterdir()) == []


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_a_file_of_proc_is_said_to_take_no_push(env, crc, tmp_path):
    env.group_with_agents("lab", ["a"])
    src = tmp_path / "f.txt"
    src.write_text("x\n")
    r = crc("push", "lab", "--to", "a", str(src), "/proc/self/status")
    assert r.returncode == 1, r.stderr
    assert "No such file or directory" not in r.stderr, r.stderr
    assert (
        "cannot write /proc/self/status on this machine: no new file can be made in "
        "/proc/self (a virtual file system such as /proc or /sys)"
    ) in r.stderr, r.stderr


def test_a_push_still_names_what_it_wrote(env, crc, tmp_path):
    env.group_with_agents("lab", ["a"])
    src = tmp_path / "f.txt"
    src.write_text("x\n")
    r = crc("push", "lab", "--to", "a", str(src), str(tmp_path / "out.txt"))
    assert r.returncode == 0, r.stderr
    assert f"{tmp_path / 'out.txt'}: 2 bytes, sha256" in r.stdout + r.stderr
