"""The mode of the file `crc pull` writes here, as scp and cp give it: a file it replaces
(or that the user's own link leads to) keeps its mode, a new one gets the machine's
file's less the umask (test_push_pull_new_file_modes.py); never a setuid, setgid or
sticky bit. The SDK's clients do the same."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudremotecontrol.master.aclient import AsyncClient

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _pull(env, remote: Path, local: Path, umask: int) -> subprocess.CompletedProcess[str]:
    """`crc pull` run with ``umask``, as a user's shell would have it."""
    argv = ["pull", "lab", "--from", "a", str(remote), str(local)]
    return subprocess.run(
        [sys.executable, "-m", "cloudremotecontrol", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env.cli_env},
        umask=umask,
    )


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _finished_pull(env, remote: Path) -> str:
    pull = env.client.start_pull("lab", "a", str(remote))
    results = [e.result for e in env.client.follow_job(pull["job_id"], pull["targets"])]
    assert [r.ok for r in results if r is not None] == [True]
    return str(pull["job_id"])


def test_a_pull_keeps_the_mode_of_the_file_it_replaces(env, tmp_path):
    env.group_with_agents("lab", ["a"])
    remote = tmp_path / "remote.sh"
    remote.write_text("#!/bin/sh\necho new\n")
    os.chmod(remote, 0o700)
    script = tmp_path / "script.sh"  # an executable script of the user's
    script.write_text("#!/bin/sh\necho old\n")
    os.chmod(script, 0o755)
    conf = tmp_path / "app.conf"  # a file others may read
    conf.write_text("old\n")
    os.chmod(conf, 0o644)
    secret = tmp_path / "secret"  # a private one stays private
    secret.write_text("old\n")
    os.chmod(secret, 0o600)
    for local, mode in [(script, 0o755), (conf, 0o644), (secret, 0o600)]:
        r = _pull(env, remote, local, 0o077)  # the umask is for new files only
        assert r.returncode == 0, r.stderr
        assert local.read_text() == "#!/bin/sh\necho new\n"
        assert _mode(local) == mode, (local.name, oct(_mode(local)))
    # Through the user's own link: the file it leads to keeps its mode, the link stays.
    real = tmp_path / "bin" / "tool"
    real.parent.mkdir()
    real.write_text("old\n")
    os.chmod(real, 0o750)
    link = tmp_path / "tool-link"
    link.symlink_to(real)
    r = _pull(env, remote, link, 0o022)
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and real.read_text() == "#!/bin/sh\necho new\n"
    assert _mode(real) == 0o750, oct(_mode(real))
    assert sorted(p.name for p in real.parent.iterdir()) == ["tool"]  # no temporary file


def test_a_new_file_gets_0666_less_the_umask_and_never_a_set_id_bit(env, tmp_path):
    env.group_with_agents("lab", ["a"])
    remote = tmp_path / "remote.txt"
    remote.write_text("pulled\n")
    os.chmod(remote, 0o666)  # a new file gets the remote file's bits less the umask
    for umask, mode in [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664), (0o077, 0o600)]:
        local = tmp_path / f"new-{umask:03o}.txt"
        r = _pull(env, remote, local, umask)
        assert r.returncode == 0, r.stderr
        assert local.read_text() == "pulled\n"
        assert _mode(local) == mode, (oct(umask), oct(_mode(local)))
    # A file of the user's that is setuid and setgid: its content now comes from the
    # machine, so those bits go (as a write by its owner takes them off); the rest stays.
    setid = tmp_path / "setid"
    setid.write_text("old\n")
    os.chmod(setid, 0o6755)
    r = _pull(env, remote, setid, 0o022)
    assert r.returncode == 0, r.stderr
    assert _mode(setid) == 0o755, oct(_mode(setid))


def test_both_sdk_clients_give_the_same_modes(env, tmp_path):
    env.group_with_agents("lab", ["a"])
    remote = tmp_path / "remote.txt"
    remote.write_text("pulled\n")
    os.chmod(remote, 0o666)
    job_id = _finished_pull(env, remote)

    async def download(local: Path) -> None:
        async with AsyncClient(env.server.url, env.token, env.server.fingerprint) as c:
            await c.download_pulled(job_id, str(local))

    def sync(local: Path) -> None:
        env.client.download_pulled(job_id, str(local))

    def in_async(local: Path) -> None:
        asyncio.run(download(local))

    for name, save in [("sync", sync), ("async", in_async)]:
        kept = tmp_path / f"{name}-kept.sh"
        kept.write_text("old\n")
        os.chmod(kept, 0o755)
        real = tmp_path / f"{name}-real"
        real.write_text("old\n")
        os.chmod(real, 0o640)
        link = tmp_path / f"{name}-link"
        link.symlink_to(real.name)
        new = tmp_path / f"{name}-new.txt"
        with _umask(0o027):
            for local in (kept, link, new):
                save(local)
        assert [p.read_text() for p in (kept, real, new)] == ["pulled\n"] * 3, name
        assert link.is_symlink(), name
        modes = [_mode(p) for p in (kept, real, new)]
        assert modes == [0o755, 0o640, 0o640], (name, [oct(m) for m in modes])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".crc-pull-")] == []
