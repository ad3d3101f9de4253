"""`crc push` / `crc pull` on a machine whose directories other users own, with files
that change, and with several pushes at once: the agent (root) writes only its own
temporary file, never readable by others, and sends exactly what it hashed."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from growing import growing_log

NOBODY = 65534


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _part(directory: Path, name: str, data: bytes) -> Path:
    return directory / f".crc-{name}.{_sha(data)[:16]}.part"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, as the agent runs")
@pytest.mark.parametrize("planted", ["symlink", "hardlink"])
@pytest.mark.parametrize("victim_text", ["", "root secret\n"])
def test_a_planted_temporary_file_is_never_written_through(
    env, crc, tmp_path, planted, victim_text
):
    env.group_with_agents("lab", ["a"])
    victim = tmp_path / "root-only"
    victim.write_text(victim_text)
    os.chmod(victim, 0o600)
    home = tmp_path / "home"  # a directory an unprivileged user owns
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    src = tmp_path / "authorized_keys"
    data = b"ssh-ed25519 AAAA admin@example\n"
    src.write_bytes(data)
    part = _part(home, "authorized_keys", data)
    if planted == "symlink":
        os.symlink(victim, part)
        os.lchown(part, NOBODY, NOBODY)
    else:
        os.link(victim, part)
    r = crc("push", "lab", "--to", "a", str(src), str(home / "authorized_keys"), "--mode", "0644")
    assert victim.read_text() == victim_text  # the root-only file: untouched
    assert stat.S_IMODE(os.lstat(victim).st_mode) == 0o600
    assert r.returncode == 0, r.stderr
    dest = home / "authorized_keys"
    st = os.lstat(dest)
    assert stat.S_ISREG(st.st_mode) and st.st_uid == 0 and st.st_nlink == 1
    assert stat.S_IMODE(st.st_mode) == 0o644
    assert dest.read_bytes() == data
    assert sorted(p.name for p in home.iterdir()) == ["authorized_keys"]


def test_a_secret_is_never_readable_by_others_while_it_downloads(env, crc, tmp_path):
    env.group_with_agents("lab", ["a"])
    data = os.urandom(96 << 20)
    src = tmp_path / "secret.key"
    src.write_bytes(data)
    etc = tmp_path / "etc"
    etc.mkdir()
    part = _part(etc, "secret.key", data)
    modes: set[int] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                modes.add(stat.S_IMODE(os.lstat(part).st_mode))
            except OSError:
                time.sleep(0.0005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        r = crc("push", "lab", "--to", "a", str(src), str(etc / "secret.key"), "--mode", "0600")
    finally:
        stop.set()
        watcher.join()
    assert r.returncode == 0, r.stderr
    assert modes, "the temporary file was never seen"
    assert modes == {0o600}, sorted(oct(m) for m in modes)
    assert stat.S_IMODE(os.stat(etc / "secret.key").st_mode) == 0o600


def test_concurrent_pushes_of_one_file_to_one_path_all_succeed(env, crc, tmp_path):
    env.group_with_agents("lab", ["a"])
    data = os.urandom(100 << 20)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    r = crc("push", "lab", "--to", "a", str(src), str(out / "warm.bin"))  # uploaded once
    assert r.returncode == 0, r.stderr
    dest = out / "dest.bin"
    argv = [sys.executable, "-m", "cloudremotecontrol", "push", "lab", "--to", "a"]
    for _ in range(2):
        procs = [
            subprocess.Popen(
                [*argv, str(src), str(dest)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, **env.cli_env},
            )
            for _ in range(3)
        ]
        results = [(p.communicate(timeout=300), p.returncode) for p in procs]
        assert [rc for _, rc in results] == [0, 0, 0], [err for (_, err), _ in results]
        assert _sha(dest.read_bytes()) == _sha(data)
        assert sorted(p.name for p in out.iterdir()) == ["dest.bin", "warm.bin"]


def test_a_file_growing_while_it_is_pulled_comes_back_as_it_was_hashed(env, crc, tmp_path):
    env.group_with_agents("lab", ["a"])
    with growing_log(tmp_path / "app.log", 50 << 20) as log:
        for i in range(3):
            got = tmp_path / f"got{i}.log"
            r = crc("pull", "lab", "--from", "a", str(log), str(got), timeout=120)
            assert r.returncode == 0, r.stderr
            pulled = got.read_bytes()
            assert len(pulled) >= 50 << 20
            with open(log, "rb") as fh:  # a prefix of the log: what was there when hashed
                assert _sha(fh.read(len(pulled))) == _sha(pulled)
    # A file that is different at every read is read once, and sent as read.
    r = crc("pull", "lab", "--from", "a", "/proc/meminfo", str(tmp_path / "meminfo"))
    assert r.returncode == 0, r.stderr
    assert b"MemTotal" in (tmp_path / "meminfo").read_bytes()
    assert "Traceback" not in env.server.log_path.read_text()


@pytest.mark.skipif(sys.platform == "win32", reason="a C: path is absolute on Windows")
def test_a_windows_path_is_refused_by_a_linux_machine(env, crc, tmp_path):
    agents = env.group_with_agents("lab", ["a"])
    cwd = Path(f"/proc/{agents['a'].proc.pid}/cwd").resolve()
    before = set(os.listdir(cwd))
    src = tmp_path / "f.txt"
    src.write_text("x\n")
    r = crc("push", "lab", "--to", "a", str(src), "C:\\crc-safety-test.txt")
    assert r.returncode == 1
    assert "C:\\crc-safety-test.txt is not an absolute path on this machine" in r.stderr
    r = crc("pull", "lab", "--from", "a", "C:\\crc-safety-test.txt", str(tmp_path / "back"))
    assert r.returncode == 1
    assert "C:\\crc-safety-test.txt is not an absolute path on this machine" in r.stderr
    assert set(os.listdir(cwd)) == before  # nothing written in the agent's directory
    assert not (tmp_path / "back").exists()


def test_a_push_never_replaces_a_device_or_a_fifo(env, crc, tmp_path):
    # A push to /dev/null used to rename a plain file over the device node, which broke
    # every program on the machine writing to /dev/null. (A FIFO stands in for it here.)
    env.group_with_agents("lab", ["a"])
    src = tmp_path / "f.txt"
    src.write_text("x\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link-to-fifo"
    link.symlink_to(fifo)
    for dest in (fifo, link):
        r = crc("push", "lab", "--to", "a", str(src), str(dest))
        assert r.returncode == 1, (dest, r.stdout, r.stderr)
        assert "is not a regular file on this machine" in r.stderr, r.stderr
        assert stat.S_ISFIFO(os.stat(fifo).st_mode)
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".crc-")] == []
    assert link.is_symlink()


def test_a_pull_never_replaces_a_local_device_or_fifo(env, crc, tmp_path):
    # `crc pull ... /dev/null` (or /dev/stdout, a link to the terminal or a pipe) used
    # to move the file it wrote over the device node: as root, /dev/null became a plain
    # file, which broke every program on the computer writing to it. (A FIFO, and a link
    # to it, stand in for them here.) Refused before the job starts.
    env.group_with_agents("lab", ["a"])
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link-to-fifo"  # as /dev/stdout -> /proc/self/fd/1
    link.symlink_to(fifo)
    for dest in (fifo, link):
        r = crc("pull", "lab", "--from", "a", "/etc/hostname", str(dest))
        assert r.returncode == 2, (dest, r.stdout, r.stderr)
        assert r.stderr == (
            f"crc: error: cannot write {dest}: it is a FIFO, not a regular file (crc pull "
            "writes a file: give its path)\n"
        ), r.stderr
        assert stat.S_ISFIFO(os.stat(fifo).st_mode)
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".crc-")] == []
    assert link.is_symlink()
    assert env.client.list_jobs("lab") == []  # refused before anything ran


def test_a_pull_into_a_link_writes_the_file_it_leads_to_and_keeps_the_link(env, crc, tmp_path):
    # As cp does (and crc push on a machine): LOCAL a symbolic link of this user's (a
    # config file kept in a dotfiles repo, say) is followed; the file it leads to gets
    # the content, and the link stays a link. It used to be replaced by a plain file.
    env.group_with_agents("lab", ["a"])
    remote = tmp_path / "remote.txt"
    remote.write_text("pulled\n")
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    real = real_dir / "conf.txt"
    real.write_text("old\n")
    link = tmp_path / "conf-link"
    link.symlink_to("real/conf.txt")  # relative, as most are
    again = tmp_path / "again"
    again.symlink_to(link)  # a link to a link
    r = crc("pull", "lab", "--from", "a", str(remote), str(again))
    assert r.returncode == 0, r.stderr
    assert os.readlink(link) == "real/conf.txt" and os.readlink(again) == str(link)
    assert real.read_text() == "pulled\n"
    assert sorted(p.name for p in real_dir.iterdir()) == ["conf.txt"]  # no temporary file
    # The SDK's download_pulled does the same.
    real.write_text("before\n")
    pull = env.client.start_pull("lab", "a", str(remote))
    results = [e.result for e in env.client.follow_job(pull["job_id"], pull["targets"])]
    assert [r.ok for r in results if r is not None] == [True]
    env.client.download_pulled(pull["job_id"], str(link))
    assert link.is_symlink() and real.read_text() == "pulled\n"
    # A dangling link, or one in a loop, is refused before the job starts (as cp does).
    jobs = len(env.client.list_jobs("lab"))
    dangling = tmp_path / "dangling"
    dangling.symlink_to(real_dir / "gone.txt")
    loop_a, loop_b = tmp_path / "loop-a", tmp_path / "loop-b"
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    for dest, said in [
        (dangling, f"is a symbolic link to {real_dir / 'gone.txt'}, which does not exist: "),
        (loop_a, "is a symbolic link in a loop"),
    ]:
        r = crc("pull", "lab", "--from", "a", str(remote), str(dest))
        assert r.returncode == 2, (dest, r.stdout, r.stderr)
        assert r.stderr.startswith(f"crc: error: {dest} {said}"), r.stderr
        assert dest.is_symlink()
    assert not (real_dir / "gone.txt").exists()
    assert len(env.client.list_jobs("lab")) == jobs


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own a link as another user")
def test_a_pull_never_writes_through_another_users_link(env, crc, tmp_path):
    # A link planted in a directory everyone may write (/tmp) by another user would turn
    # an operator's pull into a write to any file the operator may write.
    env.group_with_agents("lab", ["a"])
    remote = tmp_path / "remote.txt"
    remote.write_text("pulled\n")
    victim = tmp_path / "victim"
    victim.write_text("mine\n")
    trap = tmp_path / "trap"
    trap.symlink_to(victim)
    os.lchown(trap, 65534, 65534)
    r = crc("pull", "lab", "--from", "a", str(remote), str(trap))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr == (
        f"crc: error: {trap} is a symbolic link of another user's (uid 65534) to {victim}: "
        "not written through, pull to the file's own path\n"
    ), r.stderr
    assert victim.read_text() == "mine\n" and trap.is_symlink()
    assert env.client.list_jobs("lab") == []


def test_a_pull_of_a_fifo_a_device_or_a_directory_fails_with_the_reason(env, crc, tmp_path):
    env.group_with_agents("lab", ["a"])
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link-to-fifo"
    link.symlink_to(fifo)
    cases = [
        (fifo, "is a FIFO on this machine"),
        (link, "is a FIFO on this machine"),
        (Path("/dev/zero"), "is a character device on this machine"),
        (tmp_path, "is a directory on this machine"),
    ]
    for remote, reason in cases:
        local = tmp_path / "back"
        r = crc("pull", "lab", "--from", "a", str(remote), str(local))
        assert r.returncode == 1, (remote, r.stdout, r.stderr)
        assert reason in r.stderr and "crc pull only reads regular files" in r.stderr, r.stderr
        assert not local.exists()
    # A link to a regular file is still followed, as before.
    data = tmp_path / "data.txt"
    data.write_text("through the link\n")
    (tmp_path / "link-to-data").symlink_to(data)
    r = crc("pull", "lab", "--from", "a", str(tmp_path / "link-to-data"), str(tmp_path / "x"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "x").read_text() == "through the link\n"


def _opens(path: Path) -> Callable[[], int]:
    """Count the opens of ``path`` from now on (inotify ``IN_OPEN``): the returned
    function gives how many happened since."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    assert libc.inotify_add_watch(fd, os.fsencode(path), 0x20) >= 0  # IN_OPEN

    def count() -> int:
        n = 0
        with contextlib.suppress(BlockingIOError):
            while data := os.read(fd, 4096):
                while data:  # struct inotify_event: wd, mask, cookie, len, name[len]
                    n += 1
                    data = data[16 + int.from_bytes(data[12:16], sys.byteorder) :]
        return n

    return count


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify")
def test_a_pull_never_opens_what_is_not_a_regular_file(env, crc, tmp_path):
    # Opening a device can act on it (a watchdog arms, a tape rewinds): a pull of one
    # must fail without opening it, even through a link.
    env.group_with_agents("lab", ["a"])
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link-to-fifo"
    link.symlink_to(fifo)
    opened = _opens(fifo)
    for remote in (fifo, link):
        r = crc("pull", "lab", "--from", "a", str(remote), str(tmp_path / "back"))
        assert r.returncode == 1 and "is a FIFO on this machine" in r.stderr, r.stderr
    assert opened() == 0


_SWAPPER = """
import os, sys
d = sys.argv[1]
path, reg, fifo, stop = (os.path.join(d, n) for n in ("f", "r", "p", "stop"))
n = 0
while n % 256 or not os.path.exists(stop):
    n += 1
    with open(reg, "wb") as fh:
        fh.write(b"regular\\n")
    os.replace(reg, path)
    os.mkfifo(fifo)
    os.replace(fifo, path)
"""


def test_a_fifo_swapped_in_during_a_pull_never_leaves_it_stuck(env, tmp_path):
    # The agent checked the name, then opened it blocking: a FIFO put there in between
    # (by any user who may write the directory) held the open, and the pull, forever.
    env.group_with_agents("lab", ["a"])
    box = tmp_path / "box"
    box.mkdir()
    swapper = subprocess.Popen([sys.executable, "-c", _SWAPPER, str(box)])
    try:
        # From its first swap on, the name is always there: a regular file or a FIFO.
        started = time.monotonic() + 60
        while not os.path.lexists(box / "f"):
            assert time.monotonic() < started and swapper.poll() is None, "no swapper"
            time.sleep(0.01)
        jobs = [env.client.start_pull("lab", "a", str(box / "f"))["job_id"] for _ in range(150)]
        statuses = {}
        deadline = time.monotonic() + 120  # a stuck pull never ends; all others do at once
        while len(statuses) < len(jobs) and time.monotonic() < deadline:
            for job_id in jobs:
                if job_id not in statuses:
                    target = env.client.job(job_id)["targets"][0]
                    if target["status"] in ("succeeded", "failed"):
                        statuses[job_id] = (target["status"], target.get("reason"))
            time.sleep(0.2)
    finally:
        (box / "stop").touch()
        swapper.wait(timeout=30)
    assert len(statuses) == len(jobs), f"{len(jobs) - len(statuses)} pulls stuck"
    for status, reason in statuses.values():
        assert status == "succeeded" or "FIFO" in reason or "not a file" in reason, reason
