"""A new file gets the permission bits of the file it copies, less the umask, as cp and
scp give them: `crc pull` those of the file on the machine (its agent reports them),
`crc push` those of the local file (less the agent's umask); a replaced file keeps its
own, `--mode` still forces one (`--mode 0` too), and never a setuid, setgid or sticky
bit unless `--mode` says so. A push REMOTE that ends in `/` or names a directory on the
machine is written in it, under the local file's name; a pull of a file that does not
exist says so."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from wire_helpers import assert_error, bearer, enroll, pinned_http, wire_agent

from cloudremotecontrol.master.aclient import AsyncClient

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _crc(env, *argv: str, umask: int) -> subprocess.CompletedProcess[str]:
    """The `crc` CLI run with ``umask``, as a user's shell would have it."""
    return subprocess.run(
        [sys.executable, "-m", "cloudremotecontrol", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env.cli_env},
        umask=umask,
    )


def _agents(env, names: list[str], umask: int = 0o022) -> None:
    with _umask(umask):  # the agent's own umask, which a pushed new file is subject to
        env.group_with_agents("lab", names)


def test_a_new_pulled_file_gets_the_remote_files_bits_less_the_umask(env, tmp_path):
    _agents(env, ["a"])
    cases = [
        (0o640, 0o022, 0o640),  # /etc/shadow's kind: cp gives -rw-r-----
        (0o600, 0o022, 0o600),
        (0o755, 0o022, 0o755),
        (0o755, 0o027, 0o750),
        (0o666, 0o077, 0o600),
        (0o4755, 0o022, 0o755),  # never a setuid, setgid or sticky bit
        (0o3775, 0o002, 0o775),
    ]
    for i, (remote_mode, umask, want) in enumerate(cases):
        remote = tmp_path / f"remote-{i}"
        remote.write_text("pulled\n")
        os.chmod(remote, remote_mode)
        local = tmp_path / f"local-{i}"
        r = _crc(env, "pull", "lab", "--from", "a", str(remote), str(local), umask=umask)
        assert r.returncode == 0, r.stderr
        assert _mode(local) == want, (oct(remote_mode), oct(umask), oct(_mode(local)))
        if remote_mode & 0o400:
            assert local.read_text() == "pulled\n"
    # A file it replaces keeps its own mode, whatever the machine's file has.
    kept = tmp_path / "kept"
    kept.write_text("old\n")
    os.chmod(kept, 0o644)
    remote = tmp_path / "private"
    remote.write_text("new\n")
    os.chmod(remote, 0o600)
    r = _crc(env, "pull", "lab", "--from", "a", str(remote), str(kept), umask=0o022)
    assert r.returncode == 0, r.stderr
    assert kept.read_text() == "new\n" and _mode(kept) == 0o644, oct(_mode(kept))


def test_both_sdk_clients_give_a_new_pulled_file_the_remote_bits(env, tmp_path):
    _agents(env, ["a"])
    remote = tmp_path / "remote.key"
    remote.write_text("secret\n")
    os.chmod(remote, 0o4640)
    pull = env.client.start_pull("lab", "a", str(remote))
    results = [e.result for e in env.client.follow_job(pull["job_id"], pull["targets"])]
    assert [r.ok for r in results if r is not None] == [True]
    assert env.client.download_pulled(pull["job_id"], str(tmp_path / "x"))["mode"] == 0o4640

    async def download(local: Path) -> None:
        async with AsyncClient(env.server.url, env.token, env.server.fingerprint) as c:
            await c.download_pulled(pull["job_id"], str(local))

    sync_new, async_new = tmp_path / "sync.key", tmp_path / "async.key"
    with _umask(0o022):
        env.client.download_pulled(pull["job_id"], str(sync_new))
        asyncio.run(download(async_new))
    assert [_mode(sync_new), _mode(async_new)] == [0o640, 0o640]


def test_a_new_pushed_file_gets_the_local_files_bits(env, tmp_path):
    _agents(env, ["a"], umask=0o022)
    cases = [(0o600, 0o600), (0o640, 0o640), (0o755, 0o755), (0o666, 0o644), (0o4755, 0o755)]
    for i, (local_mode, want) in enumerate(cases):
        src = tmp_path / f"src-{i}"
        src.write_text("pushed\n")
        os.chmod(src, local_mode)
        dest = tmp_path / f"dest-{i}"
        r = _crc(env, "push", "lab", "--to", "a", str(src), str(dest), umask=0o077)
        assert r.returncode == 0, r.stderr
        assert dest.read_text() == "pushed\n"
        assert _mode(dest) == want, (oct(local_mode), oct(_mode(dest)))
    # A file it replaces keeps its own mode; --mode forces one, 0 (as chmod takes it) too.
    src = tmp_path / "secret.key"
    src.write_text("key\n")
    os.chmod(src, 0o600)
    kept = tmp_path / "kept"
    kept.write_text("old\n")
    os.chmod(kept, 0o644)
    r = _crc(env, "push", "lab", "--to", "a", str(src), str(kept), umask=0o022)
    assert r.returncode == 0, r.stderr
    assert kept.read_text() == "key\n" and _mode(kept) == 0o644
    for mode, want in [("0", 0o000), ("000", 0o000), ("0755", 0o755), ("4750", 0o4750)]:
        dest = tmp_path / f"forced-{mode}"
        r = _crc(env, "push", "lab", "--to", "a", str(src), str(dest), "--mode", mode, umask=0)
        assert r.returncode == 0, (mode, r.stderr)
        assert _mode(dest) == want, (mode, oct(_mode(dest)))
    # The SDK sends the local file's mode too.
    dest = tmp_path / "sdk.key"
    job = env.client.push("lab", "a", str(src), str(dest))
    results = [e.result for e in env.client.follow_job(job["job_id"], job["targets"])]
    assert [r.ok for r in results if r is not None] == [True]
    assert _mode(dest) == 0o600


def test_a_new_pushed_file_is_subject_to_the_agents_umask(env, tmp_path):
    _agents(env, ["a"], umask=0o027)
    src = tmp_path / "tool"
    src.write_text("#!/bin/sh\n")
    os.chmod(src, 0o755)
    dest = tmp_path / "installed"
    r = _crc(env, "push", "lab", "--to", "a", str(src), str(dest), umask=0o022)
    assert r.returncode == 0, r.stderr
    assert _mode(dest) == 0o750, oct(_mode(dest))


def test_a_push_into_a_directory_writes_the_file_under_its_own_name(env, tmp_path):
    _agents(env, ["a"])
    src = tmp_path / "app.conf"
    src.write_text("conf\n")
    target = tmp_path / "etc"
    target.mkdir()
    # REMOTE ending in "/": the file goes in it, the path said is the file's.
    r = _crc(env, "push", "lab", "--to", "a", str(src), f"{target}/", umask=0o022)
    assert r.returncode == 0, r.stderr
    assert (target / "app.conf").read_text() == "conf\n"
    assert f"{target}/app.conf: 5 bytes" in r.stdout, r.stdout
    (target / "app.conf").unlink()
    # REMOTE naming a directory that exists on the machine: the same.
    r = _crc(env, "push", "lab", "--to", "a", str(src), str(target), "--json", umask=0o022)
    assert r.returncode == 0, r.stderr
    assert (target / "app.conf").read_text() == "conf\n"
    assert f"{target}/app.conf: 5 bytes" in r.stdout, r.stdout
    assert all(json.loads(line) for line in r.stdout.splitlines())
    assert sorted(p.name for p in target.iterdir()) == ["app.conf"]  # no temporary file
    # A directory of that name there is not replaced.
    (target / "app.conf").unlink()
    (target / "app.conf").mkdir()
    for remote in (str(target), f"{target}/"):
        r = _crc(env, "push", "lab", "--to", "a", str(src), remote, umask=0o022)
        assert r.returncode == 1, r.stderr
        assert f"{target}/app.conf is a directory on this machine" in r.stderr, r.stderr
    assert list((target / "app.conf").iterdir()) == []


def test_a_pull_of_a_missing_file_says_it_does_not_exist(env, crc, tmp_path):
    _agents(env, ["a"])
    missing = tmp_path / "no-such-file"
    r = crc("pull", "lab", "--from", "a", str(missing), str(tmp_path / "out"))
    assert r.returncode == 1, r.stderr
    assert f"{missing} does not exist on this machine" in r.stderr, r.stderr
    assert "is not a file" not in r.stderr, r.stderr
    r = crc("pull", "lab", "--from", "a", str(tmp_path / "x" / "y"), str(tmp_path / "out"))
    assert "does not exist on this machine" in r.stderr, r.stderr
    # A directory is still no file.
    r = crc("pull", "lab", "--from", "a", str(tmp_path), str(tmp_path / "out"))
    assert r.returncode == 1, r.stderr
    assert "is a directory on this machine" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_a_mode_a_machine_reports_is_checked_where_the_server_decodes_it(env, tmp_path):
    """The machine is hostile: a mode that is no octal within 0..7777 is refused with its
    upload; a good one reaches the master as an int, and a set-id bit never a new file."""
    key = env.client.create_group("lab", ["a"])["machines"][0]["key"]
    data = b"from a machine\n"
    sha = hashlib.sha256(data).hexdigest()
    with pinned_http(env.server) as http:
        cred = enroll(http, key)

        async def main() -> str:
            async with wire_agent(env.server, cred, "lab", "a") as a:
                job = env.client.start_pull("lab", "a", "/etc/hostname")["job_id"]
                assert (await a.next_msg())["body"]["job_id"] == job
                await a.send_msg("job.started", {"job_id": job})
                h = {"Authorization": bearer(cred), "X-Content-SHA256": sha}
                url = f"/v1/agent/uploads/{job}"
                for bad in ("17777", "9", "-1", "0x1ff", "6 44", "1e3", "True", "a" * 100):
                    r = await asyncio.to_thread(
                        http.put, url, content=data, headers={**h, "X-File-Mode": bad}
                    )
                    assert_error(r, 400, "invalid_input", "invalid file mode")
                r = await asyncio.to_thread(
                    http.put, url, content=data, headers={**h, "X-File-Mode": "6750"}
                )
                assert r.status_code == 200, r.text
                await a.send_msg(
                    "job.result", {"job_id": job, "status": "succeeded", "exit_code": 0}
                )
                return str(job)

        job = asyncio.run(main())
    for _ in range(100):
        if env.client.job(job)["targets"][0]["status"] == "succeeded":
            break
        time.sleep(0.05)
    local = tmp_path / "got"
    with _umask(0o022):
        info = env.client.download_pulled(job, str(local))
    assert info["mode"] == 0o6750 and local.read_bytes() == data
    assert _mode(local) == 0o750, oct(_mode(local))
