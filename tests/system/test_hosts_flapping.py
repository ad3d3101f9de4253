"""A machine of a `--sync-hosts` group whose addresses keep changing (broken, or
hostile: its facts are only what it claims) costs its peers and the server a bounded
number of hosts syncs, and the last addresses it reported still reach every hosts file.

Real server (SQLite and PostgreSQL) and real agents writing their own hosts files; the
flapping machine speaks the raw wire protocol with its own credential.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from wire_helpers import assert_no_traceback_in_server_log, enroll, pinned_http, wire_agent

from cloudremotecontrol.errors import NotFound
from cloudremotecontrol.server.ops import hostsync

FLAPS = 50
#: How long the machine of the long test reports new addresses without a pause.
FLAP_SECONDS = 40.0


def _line(i: int) -> bytes:
    return f"\n10.77.0.{i} flappy flappy.lab\n".encode()


def _hosts_syncs(env: Any) -> list[dict[str, Any]]:
    return [
        e["data"]
        for e in env.client.events("lab")
        if e["type"] == "job.created" and e["data"]["type"] == "hosts.sync"
    ]


def test_a_machine_reporting_new_addresses_in_every_message_costs_a_bounded_number_of_syncs(
    db_env,
):
    env = db_env
    began = time.monotonic()
    out = env.client.create_group(
        "lab", ["a", "b", "flappy"], settings={"sync_hosts": True, "hosts_ip": "private"}
    )
    keys = {m["name"]: m["key"] for m in out["machines"]}
    files: dict[str, Path] = {}
    for name in ("a", "b"):
        files[name] = env.tmp / f"hosts-{name}"
        files[name].write_bytes(b"127.0.0.1 localhost\n")
        env.agent(name, keys[name], env={"CRC_AGENT_HOSTS_FILE": str(files[name])})
    env.wait_state("lab", ["a", "b"], "ready")
    with pinned_http(env.server) as http:
        cred = enroll(http, keys["flappy"])

    async def flap() -> None:
        async with wire_agent(env.server, cred, "lab", "flappy") as m:
            for i in range(1, FLAPS + 1):
                ip = f"10.77.0.{i}"
                await m.send_msg("facts", {"hostname": "flappy", "ips": [ip], "private_ips": [ip]})

    asyncio.run(flap())
    # The last addresses reach every machine (once the window they fell in ended).
    deadline = time.monotonic() + 60
    for name, path in files.items():
        while _line(FLAPS) not in path.read_bytes():
            assert time.monotonic() < deadline, (name, path.read_bytes())
            time.sleep(0.1)
    elapsed = time.monotonic() - began
    for name, path in files.items():
        content = path.read_bytes()
        assert content.count(b"10.77.0.") == 1, (name, content)
        assert content.count(b"# BEGIN cloudremotecontrol group=lab") == 1, (name, content)
    # One sync per window at most, whatever the number of messages: before, every one of
    # the 50 facts messages started a sync to all 3 machines (50 jobs, 150 messages).
    syncs = _hosts_syncs(env)
    assert len(syncs) <= 2 + elapsed / hostsync.WINDOW, (len(syncs), elapsed)
    assert sum(len(s["targets"]) for s in syncs) <= 3 * (2 + elapsed / hostsync.WINDOW), syncs
    last = syncs[-1]
    assert ["10.77.0.50", "flappy"] in last["spec"]["entries"], last
    assert sorted(last["targets"]) == ["a", "b", "flappy"], last
    assert_no_traceback_in_server_log(env.server)


def test_addresses_that_keep_changing_are_synced_ever_less_often(db_env):
    """Changes that never stop do not cost a round every 5 seconds for ever: while they
    keep coming, each window is twice as long as the one before (5, 10, 20 s...). Over
    40 s of new addresses every quarter of a second that is 4 syncs, where one per
    window of 5 s was 9; and the group keeps the jobs of its newest syncs only."""
    env = db_env
    out = env.client.create_group(
        "lab", ["a", "b", "flappy"], settings={"sync_hosts": True, "hosts_ip": "private"}
    )
    keys = {m["name"]: m["key"] for m in out["machines"]}
    for name in ("a", "b"):
        hosts = env.tmp / f"hosts-{name}"
        hosts.write_bytes(b"127.0.0.1 localhost\n")
        env.agent(name, keys[name], env={"CRC_AGENT_HOSTS_FILE": str(hosts)})
    env.wait_state("lab", ["a", "b"], "ready")
    with pinned_http(env.server) as http:
        cred = enroll(http, keys["flappy"])

    async def flap() -> tuple[float, float]:
        async with wire_agent(env.server, cred, "lab", "flappy") as m:
            began = time.time()
            i = 0
            while time.time() < began + FLAP_SECONDS:
                i += 1
                ip = f"10.77.{i // 200}.{i % 200 + 1}"
                await m.send_msg("facts", {"hostname": "flappy", "ips": [ip], "private_ips": [ip]})
                await asyncio.sleep(0.25)
            return began, time.time()

    began, ended = asyncio.run(flap())
    syncs = [
        e
        for e in env.client.events("lab")
        if e["type"] == "job.created" and e["data"]["type"] == "hosts.sync"
    ]
    during = [e for e in syncs if began <= e["time"] <= ended]
    # At once, then after windows of 5, 10 and 20 s (longer if one was open already).
    assert 1 <= len(during) <= 5, [e["time"] - began for e in during]
    # The jobs of the newest finished syncs are kept (and the newest, still waiting for
    # flappy, which acknowledges nothing); every sync's events are.
    listed = [j["job_id"] for j in env.client.list_jobs("lab") if j["by"] == "crc (--sync-hosts)"]
    assert 1 <= len(listed) <= hostsync.KEEP + 1, (listed, len(syncs))
    assert listed == [e["job_id"] for e in syncs[-len(listed) :]], (listed, syncs)
    assert_no_traceback_in_server_log(env.server)


def test_an_offline_machine_keeps_only_the_newest_hosts_sync_waiting(db_env):
    """While a machine is offline, the automatic syncs for it are not all kept: each
    newer one supersedes those still waiting (cancelled before start), and when it
    comes back the one it runs lists the last addresses."""
    env = db_env
    out = env.client.create_group(
        "lab", ["a", "off", "flappy"], settings={"sync_hosts": True, "hosts_ip": "private"}
    )
    keys = {m["name"]: m["key"] for m in out["machines"]}
    hosts = env.tmp / "hosts-a"
    hosts.write_bytes(b"127.0.0.1 localhost\n")
    env.agent("a", keys["a"], env={"CRC_AGENT_HOSTS_FILE": str(hosts)})
    env.wait_state("lab", ["a"], "ready")
    with pinned_http(env.server) as http:
        creds = {n: enroll(http, keys[n]) for n in ("off", "flappy")}

    async def goes_away() -> None:
        async with wire_agent(env.server, creds["off"], "lab", "off") as m:
            await m.send_msg("facts", {"hostname": "off", "ips": [], "private_ips": []})

    asyncio.run(goes_away())
    env.wait_state("lab", ["off"], "offline")

    def burst(net: int) -> None:
        async def send() -> None:
            async with wire_agent(env.server, creds["flappy"], "lab", "flappy") as m:
                for i in range(1, 11):
                    ip = f"10.77.{net}.{i}"
                    facts = {"hostname": "flappy", "ips": [ip], "private_ips": [ip]}
                    await m.send_msg("facts", facts)

        asyncio.run(send())
        deadline = time.monotonic() + 60
        while f"\n10.77.{net}.10 flappy flappy.lab\n".encode() not in hosts.read_bytes():
            assert time.monotonic() < deadline, hosts.read_bytes()
            time.sleep(0.1)

    for net in (1, 2, 3):  # each synced to a (and queued for off) before the next
        burst(net)
    held = []  # the syncs whose jobs the group still holds (it forgets older finished ones)
    for s in _hosts_syncs(env):
        try:
            held.append(env.client.job(s["job_id"]))
        except NotFound:
            pass
    targets = [t for job in held for t in job["targets"] if t["machine"] == "off"]
    waiting = [t for t in targets if t["status"] == "queued"]
    assert len(waiting) == 1, targets
    assert len(targets) >= 3, targets  # one per burst at least: the others superseded
    for t in targets:
        if t["status"] != "queued":
            assert t["status"] == "cancelled", targets
            assert t["reason"].startswith("superseded by hosts sync "), targets

    async def comes_back() -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        async with wire_agent(env.server, creds["off"], "lab", "off") as m:
            while not got or got[-1]["type"] != "hosts.sync":
                got.append(await m.next_msg())
        return got

    got = asyncio.run(comes_back())
    assert all(g["type"] == "job.cancel" and g["body"]["before_start"] for g in got[:-1]), got
    assert ["10.77.3.10", "flappy"] in got[-1]["body"]["entries"], got[-1]
    assert_no_traceback_in_server_log(env.server)
