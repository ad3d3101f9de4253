"""`crc bootstrap -o FILE` as root never hands the fresh enrollment key to another user:
a FILE another user made beforehand (in /tmp) is replaced by a new file of root's, mode
0600, not written into; another user's link is not written through (as `crc pull`
refuses it), nor a FIFO of theirs written to; a dangling link is one clear sentence.
The files are another user's by ``os.chown`` to uid 65534 (nobody)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cloudremotecontrol.master.client import Client

NOBODY = 65534
URL = "https://crc.example.net:8443"

pytestmark = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root (files of nobody's)"
)


def _reissues(client: Client, group: str) -> int:
    return sum(1 for r in client.audit(group) if r.get("action") == "machine.key_reissue")


_CRC = (sys.executable, "-m", "cloudremotecontrol")
_ARGS = ("bootstrap", "rb", "m1", "--os", "linux", "--url", URL)


def _bootstrap(crc, out: Path | str) -> subprocess.CompletedProcess[str]:
    return crc(*_ARGS, "-o", str(out), timeout=30)


def _no_key_in_files_of_others(*dirs: Path) -> None:
    for d in dirs:
        for p in d.rglob("*"):
            st = p.lstat()
            if stat.S_ISREG(st.st_mode) and st.st_uid != os.geteuid():
                assert b"crck_" not in p.read_bytes(), p


def _sticky_dir(tmp_path: Path) -> Path:
    pub = tmp_path / "pub"  # as /tmp: everyone may make files there
    pub.mkdir()
    pub.chmod(0o1777)
    return pub


def test_a_file_another_user_made_beforehand_is_replaced_not_written_into(env, crc, tmp_path):
    env.client.create_group("rb", ["m1"])
    pub = _sticky_dir(tmp_path)
    target = pub / "qa2-db.sh"
    target.write_text("nobody's\n")
    target.chmod(0o644)
    os.chown(target, NOBODY, NOBODY)
    with open(target) as kept:  # what nobody opened before the command ran
        r = _bootstrap(crc, target)
        assert r.returncode == 0, r.stderr
        assert r.stderr == f"wrote {target} (holds the enrollment key of m1: mode 0600)\n"
        assert kept.read() == "nobody's\n"  # its file still holds what it held
    st = target.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.geteuid(), 0o600)
    assert "crck_" in target.read_text()
    assert sorted(p.name for p in pub.iterdir()) == ["qa2-db.sh"]  # no temporary left
    _no_key_in_files_of_others(pub)


def test_a_link_of_another_user_is_not_written_through(env, crc, tmp_path):
    env.client.create_group("rb", ["m1"])
    victim = tmp_path / "roots.conf"
    victim.write_text("root's own\n")
    victim.chmod(0o644)
    nobdir = tmp_path / "nobdir"
    nobdir.mkdir()
    os.chown(nobdir, NOBODY, NOBODY)
    link = nobdir / "trap2.sh"
    link.symlink_to(victim)
    os.lchown(link, NOBODY, NOBODY)
    r = _bootstrap(crc, link)
    assert r.returncode == 2, r.stderr
    assert r.stderr == (
        f"crc: error: -o: {link} is a symbolic link of another user's (uid {NOBODY}) to "
        f"{victim}: not written through, write to the file's own path\n"
    )
    assert r.stdout == ""
    assert victim.read_text() == "root's own\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert link.is_symlink() and sorted(p.name for p in nobdir.iterdir()) == ["trap2.sh"]
    assert _reissues(env.client, "rb") == 0
    _no_key_in_files_of_others(tmp_path)


def test_a_link_of_another_user_to_a_device_is_not_written_through(env, crc, tmp_path):
    env.client.create_group("rb", ["m1"])
    pub = _sticky_dir(tmp_path)
    link = pub / "boot.sh"
    link.symlink_to(os.devnull)
    os.lchown(link, NOBODY, NOBODY)
    r = _bootstrap(crc, link)
    assert r.returncode == 2, r.stderr
    assert r.stderr == (
        f"crc: error: -o: {link} is a symbolic link of another user's (uid {NOBODY}) to "
        f"{os.devnull}: not written through, write to the file's own path\n"
    )
    assert _reissues(env.client, "rb") == 0


def test_a_fifo_of_another_user_is_not_written_to(env, crc, tmp_path):
    env.client.create_group("rb", ["m1"])
    pub = _sticky_dir(tmp_path)
    fifo = pub / "boot.sh"
    os.mkfifo(fifo, 0o666)
    os.chown(fifo, NOBODY, NOBODY)
    try:
        r = _bootstrap(crc, fifo)
    except subprocess.TimeoutExpired:
        pytest.fail("crc bootstrap waited for a reader of another user's FIFO")
    assert r.returncode == 2, r.stderr
    assert r.stderr == (
        f"crc: error: -o: {fifo} is a FIFO of another user's (uid {NOBODY}): the script "
        "holds the key, not written to it: write it to a path of your own\n"
    )
    assert _reissues(env.client, "rb") == 0


def test_a_dangling_link_says_so_in_a_sentence(env, crc, tmp_path):
    env.client.create_group("rb", ["m1"])
    link = tmp_path / "dangling-link"
    link.symlink_to(tmp_path / "gone" / "boot.sh")
    r = _bootstrap(crc, link)
    assert r.returncode == 2, r.stderr
    assert r.stderr == (
        f"crc: error: -o: {link} is a symbolic link to {tmp_path / 'gone' / 'boot.sh'}, "
        "which does not exist: write to the file's own path, or remove the link\n"
    )
    assert link.is_symlink() and not (tmp_path / "gone").exists()
    assert _reissues(env.client, "rb") == 0


def test_a_link_of_ones_own_is_followed_and_kept(env, crc, tmp_path):
    env.client.create_group("rb", ["m1"])
    real = tmp_path / "scripts" / "boot.sh"
    real.parent.mkdir()
    real.write_text("older\n")
    real.chmod(0o644)
    link = tmp_path / "boot.sh"
    link.symlink_to(real)
    r = _bootstrap(crc, link)
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert "crck_" in real.read_text() and stat.S_IMODE(real.stat().st_mode) == 0o600
    assert sorted(p.name for p in real.parent.iterdir()) == ["boot.sh"]


def test_a_command_that_fails_leaves_the_file_as_it_was_and_no_temporary(env, crc, tmp_path):
    """The key is asked for after the new file is made: a machine that is not there
    fails then, and the file another user made stays theirs, as it was."""
    env.client.create_group("rb", ["m1"])
    pub = _sticky_dir(tmp_path)
    target = pub / "boot.sh"
    target.write_text("nobody's\n")
    os.chown(target, NOBODY, NOBODY)
    r = crc("bootstrap", "rb", "nosuch", "--os", "linux", "--url", URL, "-o", str(target))
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert target.read_text() == "nobody's\n" and target.stat().st_uid == NOBODY
    assert sorted(p.name for p in pub.iterdir()) == ["boot.sh"]


def test_a_pipe_with_no_name_is_written_to_as_before(env, crc, tmp_path):
    """`-o >(...)`: /dev/fd/N, this process's own pipe (nobody's file), still works."""
    env.client.create_group("rb", ["m1"])
    got = tmp_path / "got.sh"
    r = subprocess.run(
        ["bash", "-c", 'exec "$@" -o >(cat > "$GOT")', "bash", *_CRC, *_ARGS],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env.cli_env, "GOT": str(got)},
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("wrote /dev/fd/") and r.stderr.endswith(
        " (holds the enrollment key of m1)\n"
    ), r.stderr
    for _ in range(100):  # cat may still be writing
        if got.exists() and got.read_text().endswith("\n"):
            break
        time.sleep(0.05)
    assert got.read_text().startswith("#!") and "crck_" in got.read_text()
