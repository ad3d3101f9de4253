"""A hosts sync that cannot write the hosts file names that file and why, never the
temporary file the sync writes beside it."""

from __future__ import annotations


def test_a_hosts_file_in_a_missing_directory_is_named_with_its_directory(env, crc, tmp_path):
    hosts = tmp_path / "nohosts" / "hosts"
    key = env.client.create_group("lab", ["a"])["machines"][0]["key"]
    env.agent("a", key, extra=["--hosts-file", str(hosts)])
    env.wait_state("lab", ["a"], "ready")
    r = crc("hosts", "sync", "lab")
    assert r.returncode == 1, r.stderr
    said = (
        f"[a] failed (exit 1): cannot write the hosts file {hosts}: directory "
        f"{hosts.parent} does not exist on this machine"
    )
    assert said in r.stdout + r.stderr, r.stdout + r.stderr
    assert ".hosts.crc." not in r.stdout + r.stderr, r.stdout + r.stderr


def test_a_hosts_file_that_is_a_directory_is_named(env, crc, tmp_path):
    hosts = tmp_path / "adir"
    key = env.client.create_group("lab", ["a"])["machines"][0]["key"]
    env.agent("a", key, extra=["--hosts-file", str(hosts)])
    env.wait_state("lab", ["a"], "ready")
    hosts.mkdir()  # since the agent started (which refuses a directory)
    r = crc("hosts", "sync", "lab")
    assert r.returncode == 1, r.stderr
    said = f"cannot write the hosts file {hosts}: Is a directory"
    assert said in r.stdout + r.stderr, r.stdout + r.stderr
