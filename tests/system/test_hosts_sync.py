"""`crc hosts sync` with agents that each see their own /etc/hosts (mount namespaces)."""

from __future__ import annotations

import os
import shutil

import pytest

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare(1) to give each agent its own /etc/hosts",
)


def _own_hosts(tmp, name):
    """A prefix that runs the agent in a mount namespace where /etc/hosts is its own."""
    hosts = tmp / f"hosts-{name}"
    hosts.write_bytes(b"127.0.0.1 localhost\n# keep me \xff\n")
    script = 'mount --bind "$0" /etc/hosts && exec "$@"'
    return hosts, ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(hosts)]


def test_hosts_sync_lists_every_peer_and_is_idempotent(env, crc):
    out = env.client.create_group("lab", ["a", "b"])
    files = {}
    for m in out["machines"]:  # one after the other: a enrolls first
        hosts, prefix = _own_hosts(env.tmp, m["name"])
        files[m["name"]] = hosts
        env.agent(m["name"], m["key"], prefix=prefix)
        env.wait_state("lab", [m["name"]], "ready")
    # Public: the address the server sees each machine connect from (here all loopback).
    r = crc("hosts", "sync", "lab", "--ip", "public")
    assert r.returncode == 0, r.stderr
    first = {n: f.read_bytes() for n, f in files.items()}
    for content in first.values():
        assert content.startswith(b"127.0.0.1 localhost\n# keep me \xff\n")
        # Both agents reach the server from 127.0.0.1 here, so they share one line,
        # the one enrolled first first (what a reverse lookup of the address gives).
        assert b"\n127.0.0.1 a a.lab b b.lab\n" in content
        assert content.count(b"# BEGIN cloudremotecontrol group=lab") == 1
    r = crc("hosts", "sync", "lab", "--ip", "public")
    assert r.returncode == 0, r.stderr
    assert "unchanged" in r.stdout
    assert {n: f.read_bytes() for n, f in files.items()} == first
    # The host's own /etc/hosts was never touched.
    with open("/etc/hosts", "rb") as fh:
        assert b"cloudremotecontrol" not in fh.read()


def test_hosts_sync_before_any_address_is_a_clear_error(env, crc):
    env.client.create_group("lab", ["a"])
    r = crc("hosts", "sync", "lab")
    assert r.returncode == 2
    assert "no machine of the group has reported an address" in r.stderr


def test_sync_hosts_group_keeps_hosts_files_current_as_machines_join(env, crc):
    import json
    import time

    r = crc(
        "group",
        "create",
        "lab",
        "--machines",
        "a,b",
        "--sync-hosts",
        "--hosts-ip",
        "public",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    keys = {m["name"]: m["key"] for m in json.loads(r.stdout)["machines"]}
    files = {}
    hosts, prefix = _own_hosts(env.tmp, "a")
    files["a"] = hosts
    env.agent("a", keys["a"], prefix=prefix)
    env.wait_state("lab", ["a"], "ready")
    deadline = time.monotonic() + 20
    while b"a a.lab" not in files["a"].read_bytes():
        assert time.monotonic() < deadline, files["a"].read_bytes()
        time.sleep(0.05)
    assert b"b.lab" not in files["a"].read_bytes()  # b has not joined yet
    hosts, prefix = _own_hosts(env.tmp, "b")
    files["b"] = hosts
    env.agent("b", keys["b"], prefix=prefix)
    env.wait_state("lab", ["b"], "ready")
    for name in ("a", "b"):
        while b"127.0.0.1 a a.lab b b.lab\n" not in files[name].read_bytes():
            assert time.monotonic() < deadline, files[name].read_bytes()
            time.sleep(0.05)
        assert files[name].read_bytes().count(b"# BEGIN cloudremotecontrol") == 1
    # The automatic syncs went to the machines that were ready (a pending machine gets
    # the list current when it turns ready, not a stale one queued earlier), and each
    # machine applied them in order: the file holds the newest list, not an older one.
    syncs = [
        e["data"]
        for e in env.client.events("lab")
        if e["type"] == "job.created" and e["data"]["type"] == "hosts.sync"
    ]
    assert [s["targets"] for s in syncs] == [["a"], ["a", "b"]], syncs
    time.sleep(1.0)  # nothing still running may overwrite the newest list
    for name in ("a", "b"):
        assert b"127.0.0.1 a a.lab b b.lab\n" in files[name].read_bytes()


def test_deleting_the_group_removes_its_block_from_every_machine(env, crc):
    import time

    out = env.client.create_group("lab", ["a", "b"])
    files = {}
    for m in out["machines"]:
        hosts, prefix = _own_hosts(env.tmp, m["name"])
        files[m["name"]] = hosts
        env.agent(m["name"], m["key"], prefix=prefix)
    env.wait_state("lab", ["a", "b"], "ready")
    r = crc("hosts", "sync", "lab", "--ip", "public")
    assert r.returncode == 0, r.stderr
    # Something written after the block by someone else must survive its removal.
    for f in files.values():
        assert b"# BEGIN cloudremotecontrol group=lab" in f.read_bytes()
        f.write_bytes(f.read_bytes() + b"10.9.9.9 added-later\n")
    env.client.delete_group("lab")
    deadline = time.monotonic() + 30
    for a in env.agents:
        a.wait(max(1.0, deadline - time.monotonic()))  # revoked: the agents stop
    for name, f in files.items():
        assert f.read_bytes() == b"127.0.0.1 localhost\n# keep me \xff\n10.9.9.9 added-later\n", (
            name,
            f.read_bytes(),
        )
