"""`crc push` / `crc pull`: content-addressed, verified, atomic, streamed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time
from pathlib import Path

import pytest


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _private_dir(path):
    """A prefix giving an agent its own (empty, tmpfs) ``path``, as a VM has its own disk."""
    script = 'mount -t tmpfs crc-test "$0" && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(path)]


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare(1) to give each agent its own disk",
)
def test_push_a_multi_mib_file_to_several_machines_at_once(env, crc, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    out = env.client.create_group("lab", ["a", "b", "c"])
    agents = {
        m["name"]: env.agent(m["name"], m["key"], prefix=_private_dir(disk))
        for m in out["machines"]
    }
    env.wait_state("lab", list(agents), "ready")
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(5 << 20) + b"end")
    r = crc(
        "push", "lab", "--to", "all", str(src), str(disk / "app.bin"), "--mode", "0640", "--json"
    )
    assert r.returncode == 0, r.stderr
    results = [json.loads(x) for x in r.stdout.splitlines() if '"status"' in x]
    assert sorted((x["machine"], x["status"]) for x in results) == [
        ("a", "succeeded"),
        ("b", "succeeded"),
        ("c", "succeeded"),
    ]
    for agent in agents.values():
        # The agent's own view of the disk, through its mount namespace.
        view = Path(f"/proc/{agent.proc.pid}/root{disk}")
        assert _sha(view / "app.bin") == _sha(src)
        assert stat.S_IMODE(os.stat(view / "app.bin").st_mode) == 0o640
        assert [p.name for p in view.iterdir()] == ["app.bin"]  # no temp file left
    assert list(disk.iterdir()) == []  # nothing landed on the host's disk
    # Pushing the same content again uploads nothing and still succeeds everywhere.
    r = crc("push", "lab", "--to", "all", str(src), str(disk / "app.bin"))
    assert r.returncode == 0, r.stderr


def test_push_writes_atomically_with_mode(env, crc, tmp_path):
    env.group_with_agents("lab", ["a"])
    src = tmp_path / "app.conf"
    src.write_text("listen 80\n")
    dest_dir = tmp_path / "etc"
    dest_dir.mkdir()
    (dest_dir / "app.conf").write_text("old\n")
    r = crc("push", "lab", "--to", "a", str(src), str(dest_dir / "app.conf"), "--mode", "600")
    assert r.returncode == 0, r.stderr
    assert (dest_dir / "app.conf").read_text() == "listen 80\n"
    assert stat.S_IMODE(os.stat(dest_dir / "app.conf").st_mode) == 0o600
    assert [p.name for p in dest_dir.iterdir()] == ["app.conf"]


def test_push_to_a_link_writes_its_target_and_keeps_the_link(env, crc, tmp_path):
    env.group_with_agents("lab", ["a"])
    src = tmp_path / "app.conf"
    src.write_text("listen 80\n")
    real = tmp_path / "real.conf"
    real.write_text("old\n")
    link = tmp_path / "link.conf"
    link.symlink_to("real.conf")
    r = crc("push", "lab", "--to", "a", str(src), str(link))
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and os.readlink(link) == "real.conf"
    assert real.read_text() == "listen 80\n"
    dangling = tmp_path / "dangling.conf"
    dangling.symlink_to("gone.conf")
    r = crc("push", "lab", "--to", "a", str(src), str(dangling))
    assert r.returncode == 1
    assert "which does not exist on this machine" in r.stderr, r.stderr
    assert dangling.is_symlink() and not (tmp_path / "gone.conf").exists()


def test_push_to_a_missing_directory_fails_clearly(env, crc, tmp_path):
    env.group_with_agents("lab", ["a"])
    src = tmp_path / "f.txt"
    src.write_text("x")
    r = crc("push", "lab", "--to", "a", str(src), str(tmp_path / "nope" / "f.txt"))
    assert r.returncode == 1
    assert "does not exist" in r.stderr


@pytest.mark.parametrize("name", ["n" * 255, "é" * 125 + ".conf"])
def test_push_to_a_file_whose_name_is_as_long_as_names_go(env, crc, tmp_path, name):
    """A name of 255 bytes, the most a file name takes: the temporary file beside it
    cannot be named after it in full, and the push still works."""
    env.group_with_agents("lab", ["a"])
    src = tmp_path / "f.txt"
    src.write_text("long\n")
    dest_dir = tmp_path / "etc"
    dest_dir.mkdir()
    assert len(name.encode()) in (254, 255)
    r = crc("push", "lab", "--to", "a", str(src), str(dest_dir / name))
    assert r.returncode == 0, r.stdout + r.stderr
    assert (dest_dir / name).read_text() == "long\n"
    assert [p.name for p in dest_dir.iterdir()] == [name]


def test_push_over_a_directory_of_the_files_name_fails_clearly_and_leaves_it_alone(
    env, crc, tmp_path
):
    """A push into a directory writes LOCAL's name in it (test_push_pull_new_file_modes):
    a directory of that name there is never replaced."""
    env.group_with_agents("lab", ["a"])
    src = tmp_path / "f.txt"
    src.write_text("x")
    target = tmp_path / "etc"
    (target / "f.txt").mkdir(parents=True)
    for dest in (str(target), str(target) + "/"):
        r = crc("push", "lab", "--to", "a", str(src), dest)
        assert r.returncode == 1
        assert f"{target / 'f.txt'} is a directory on this machine" in r.stderr, r.stderr
    assert list((target / "f.txt").iterdir()) == [] and not list(target.glob(".crc-*"))


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare(1) to give the agent a small disk of its own",
)
def test_a_push_that_fills_the_disk_fails_at_once_and_leaves_no_partial_file(env, crc, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    small_disk = 'mount -t tmpfs -o size=1m crc-test "$0" && exec "$@"'
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", small_disk, str(disk)]
    out = env.client.create_group("lab", ["a"])
    agent = env.agent("a", out["machines"][0]["key"], prefix=prefix)
    env.wait_state("lab", ["a"], "ready")
    view = Path(f"/proc/{agent.proc.pid}/root{disk}")  # the agent's own disk
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 << 20))
    r = crc("push", "lab", "--to", "a", str(big), str(disk / "big.bin"))
    assert r.returncode == 1
    assert f"cannot write {disk / 'big.bin'} on this machine: No space left" in r.stderr
    assert list(view.iterdir()) == []  # the partial file does not keep the disk full
    small = tmp_path / "small.txt"
    small.write_text("fits\n")
    r = crc("push", "lab", "--to", "a", str(small), str(disk / "small.txt"))
    assert r.returncode == 0, r.stderr
    assert (view / "small.txt").read_text() == "fits\n"


def test_pull_brings_a_file_back(env, crc, tmp_path):
    env.group_with_agents("lab", ["a"])
    remote = tmp_path / "remote.log"
    remote.write_bytes(os.urandom(3 << 20))
    local = tmp_path / "local.log"
    r = crc("pull", "lab", "--from", "a", str(remote), str(local))
    assert r.returncode == 0, r.stderr
    assert _sha(local) == _sha(remote)
    r = crc("pull", "lab", "--from", "a", str(tmp_path / "missing"), str(local))
    assert r.returncode == 1 and "missing does not exist on this machine" in r.stderr


def test_a_machine_cannot_read_blobs_it_was_not_sent(env, tmp_path):
    import httpx

    from cloudremotecontrol.agent.state import AgentState
    from cloudremotecontrol.tlspin import client_context

    env.group_with_agents("lab", ["a"])
    src = tmp_path / "secret.txt"
    src.write_text("top secret")
    blob = env.client.upload(str(src))
    state = AgentState(env.tmp / "agents" / "a")
    cred = state.load_credential()
    state.close()
    ctx, _ = client_context(env.server.url, env.server.fingerprint)
    with httpx.Client(verify=ctx) as http:
        r = http.get(
            f"{env.server.url}/v1/agent/blobs/{blob['sha256']}",
            headers={"Authorization": f"Bearer {cred.credential}"},
        )
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        r = http.put(
            f"{env.server.url}/v1/blobs/{blob['sha256']}",
            content=b"x",
            headers={"Authorization": f"Bearer {cred.credential}"},
        )
        assert r.status_code == 403


def test_upload_with_wrong_hash_is_refused_and_nothing_kept(env):
    import httpx

    from cloudremotecontrol.tlspin import client_context

    ctx, _ = client_context(env.server.url, env.server.fingerprint)
    with httpx.Client(verify=ctx) as http:
        r = http.put(
            f"{env.server.url}/v1/blobs/{'0' * 64}",
            content=b"hello",
            headers={"Authorization": f"Bearer {env.token}"},
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "hash_mismatch"
        r = http.head(
            f"{env.server.url}/v1/blobs/{'0' * 64}",
            headers={"Authorization": f"Bearer {env.token}"},
        )
        assert r.status_code == 404
    blobs = env.server.data_dir / "blobs"
    assert [p for p in blobs.rglob("*") if p.is_file()] == []


def test_a_push_the_server_would_refuse_is_refused_before_its_file_is_uploaded(env, crc, tmp_path):
    """A mistyped target, path, mode or owner used to be found only once the file was
    uploaded (a large one, for nothing): each is refused first, in the server's words,
    by the CLI, the SDK and the async SDK alike, and nothing reaches the server's store."""
    import asyncio

    from cloudremotecontrol.errors import InvalidInput, NotFound
    from cloudremotecontrol.master.aclient import AsyncClient

    env.client.create_group("lab", [{"name": "a", "labels": {"role": "db"}}, {"name": "b"}])
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(1 << 20))
    # (to, remote, mode, owner, exit code, error, words)
    cases = [
        ("c", "/tmp/x", None, None, 4, NotFound, "no machine 'c' in group 'lab'"),
        ("role=web", "/tmp/x", None, None, 4, NotFound, "target 'role=web' matches no machine"),
        ("a", "relative/x", None, None, 2, InvalidInput, "absolute"),
        ("a", "/tmp/x", "999", None, 2, InvalidInput, "invalid mode '999'"),
        ("a", "/tmp/x", None, "a b", 2, InvalidInput, "invalid owner 'a b'"),
    ]
    for to, remote, mode, owner, code, error, words in cases:
        options = [*(["--mode", mode] if mode else []), *(["--owner", owner] if owner else [])]
        r = crc("push", "lab", "--to", to, str(src), remote, *options)
        assert r.returncode == code, (to, remote, options, r.returncode, r.stderr)
        assert words in r.stderr, (to, remote, options, r.stderr)
        with pytest.raises(error, match=words):
            env.client.push("lab", to, str(src), remote, mode, owner)

        async def push_async(to=to, remote=remote, mode=mode, owner=owner):
            async with AsyncClient(env.server.url, env.token, env.server.fingerprint) as c:
                await c.push("lab", to, str(src), remote, mode, owner)

        with pytest.raises(error, match=words):
            asyncio.run(push_async())
    blobs = env.server.data_dir / "blobs"
    assert [p for p in blobs.rglob("*") if p.is_file()] == []
    # A group whose TTL passed: said as the server says it, and nothing uploaded.
    env.client.create_group("old", ["a"], ttl=1)
    deadline = time.monotonic() + 30
    while not env.client.group("old").get("expired"):
        assert time.monotonic() < deadline, "the group never expired"
        time.sleep(0.2)
    with pytest.raises(NotFound, match=r"^group 'old' has expired \(its TTL\)"):
        env.client.push("old", "a", str(src), "/tmp/x")
    assert [p for p in blobs.rglob("*") if p.is_file()] == []
    # The same push to a machine of the group goes (positive control; it waits for b).
    assert env.client.push("lab", "b", str(src), "/tmp/x")["targets"] == ["b"]
    assert len([p for p in blobs.rglob("*") if p.is_file()]) == 1
