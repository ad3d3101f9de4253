"""`--ip auto` chooses each hosts line per pair of machines: a peer's private address
where both are in one private network, its public one elsewhere (one machine outside
the VPC no longer moves every machine's lines to public addresses)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shutil
import time
from contextlib import AsyncExitStack
from typing import Any

import pytest
from wire_helpers import assert_no_traceback_in_server_log, enroll, pinned_http, wire_agent

# Every machine here connects from loopback: the address the server sees.
SEEN = "127.0.0.1"


def test_each_machine_gets_its_own_hosts_list(env):
    """Two machines in a VPC and one outside it, as raw agents: what each is sent."""
    out = env.client.create_group("lab", ["a", "b", "c"])
    with pinned_http(env.server) as http:
        creds = {m["name"]: enroll(http, m["key"]) for m in out["machines"]}
    facts = {
        "a": {"hostname": "a", "ips": ["10.1.96.3"], "private_ips": ["10.1.96.3"]},
        "b": {"hostname": "b", "ips": ["10.1.96.4"], "private_ips": ["10.1.96.4"]},
        "c": {"hostname": "c", "ips": ["203.0.113.9"], "public_ips": ["203.0.113.9"]},
    }

    async def machines() -> dict[str, Any]:
        async with AsyncExitStack() as stack:
            agents = {
                n: await stack.enter_async_context(wire_agent(env.server, creds[n], "lab", n))
                for n in "abc"
            }
            for n, a in agents.items():
                await a.send_msg("facts", facts[n])
            started = await asyncio.to_thread(env.client.hosts_sync, "lab")
            got = {n: await a.next_msg() for n, a in agents.items()}
            return {"started": started, "got": got}

    result = asyncio.run(machines())
    got = result["got"]
    assert {m["type"] for m in got.values()} == {"hosts.sync"}, got
    lines = {n: sorted(map(tuple, m["body"]["entries"])) for n, m in got.items()}
    vpc = [("10.1.96.3", "a"), ("10.1.96.4", "b"), (SEEN, "c")]
    assert lines["a"] == vpc and lines["b"] == vpc, lines
    assert lines["c"] == [(SEEN, "a"), (SEEN, "b"), (SEEN, "c")], lines
    assert len({m["body"]["job_id"] for m in got.values()}) == 1
    # The job records every line some machine got.
    job = env.client.job(result["started"]["job_id"])
    assert sorted(map(tuple, job["spec"]["entries"])) == sorted(
        [("10.1.96.3", "a"), ("10.1.96.4", "b"), (SEEN, "a"), (SEEN, "b"), (SEEN, "c")]
    ), job["spec"]
    assert_no_traceback_in_server_log(env.server)


def test_a_peer_claiming_anothers_private_address_comes_after_it_on_that_line(db_env):
    """A hostile machine reporting web's private address, under a name that sorts
    first: the hosts line of that address names web first (what a reverse lookup of it
    gives), as web enrolled first; each name still leads to its own claim. On SQLite and
    PostgreSQL (the order of enrollment is the store's)."""
    out = db_env.client.create_group("lab", ["web", "db", "aaa"])
    keys = {m["name"]: m["key"] for m in out["machines"]}
    with pinned_http(db_env.server) as http:
        creds = {n: enroll(http, keys[n]) for n in ("web", "db", "aaa")}  # in this order
    facts = {
        "web": {"hostname": "web", "ips": ["10.1.96.5"], "private_ips": ["10.1.96.5"]},
        "db": {"hostname": "db", "ips": ["10.1.96.7"], "private_ips": ["10.1.96.7"]},
        "aaa": {"hostname": "aaa", "ips": ["10.1.96.5"], "private_ips": ["10.1.96.5"]},
    }

    async def db_gets() -> dict[str, Any]:
        async with AsyncExitStack() as stack:
            agents = {
                n: await stack.enter_async_context(wire_agent(db_env.server, creds[n], "lab", n))
                for n in facts
            }
            for n, a in agents.items():
                await a.send_msg("facts", facts[n])
            await asyncio.to_thread(db_env.client.hosts_sync, "lab", "db")
            msg: dict[str, Any] = await agents["db"].next_msg()
            return msg

    msg = asyncio.run(db_gets())
    assert msg["type"] == "hosts.sync", msg
    entries = [tuple(e) for e in msg["body"]["entries"]]
    on_line = [name for ip, name in entries if ip == "10.1.96.5"]
    assert on_line == ["web", "aaa"], entries
    assert ("10.1.96.7", "db") in entries
    assert_no_traceback_in_server_log(db_env.server)


async def _send_facts(agent: Any, facts: dict[str, Any], inbox: list[dict[str, Any]]) -> None:
    """Send facts; what the server delivered meanwhile is acknowledged and kept."""
    for frame in await agent.send_msg("facts", facts):
        if frame["type"] == "msg":
            await agent.ws.send(json.dumps({"type": "ack", "seq": frame["seq"]}))
            inbox.append(frame["msg"])


async def _lines_become(agent: Any, inbox: list[dict[str, Any]], want: list[Any]) -> None:
    """Read hosts syncs (those kept first) until one lists exactly ``want``."""
    deadline = time.monotonic() + 30
    seen = []
    while True:
        left = deadline - time.monotonic()
        try:
            msg = inbox.pop(0) if inbox else await asyncio.wait_for(agent.next_msg(), left)
        except asyncio.TimeoutError:
            raise AssertionError(f"{agent.name} never got {want}, only {seen}") from None
        if msg["type"] == "hosts.sync":
            seen.append(sorted(map(tuple, msg["body"]["entries"])))
            if seen[-1] == want:
                return


def test_sync_hosts_group_follows_a_private_address_change(env):
    """A --sync-hosts group (auto): a change only VPC peers see still updates them."""
    out = env.client.create_group("lab", ["a", "b", "c"], settings={"sync_hosts": True})
    with pinned_http(env.server) as http:
        creds = {m["name"]: enroll(http, m["key"]) for m in out["machines"]}
    facts = {
        "a": {"hostname": "a", "ips": ["10.1.96.3"], "private_ips": ["10.1.96.3"]},
        "b": {"hostname": "b", "ips": ["10.1.96.4"], "private_ips": ["10.1.96.4"]},
        "c": {"hostname": "c", "ips": ["203.0.113.9"], "public_ips": ["203.0.113.9"]},
    }

    async def machines() -> None:
        async with AsyncExitStack() as stack:
            agents = {
                n: await stack.enter_async_context(wire_agent(env.server, creds[n], "lab", n))
                for n in "abc"
            }
            inbox: dict[str, list[dict[str, Any]]] = {n: [] for n in agents}
            for n, a in agents.items():
                await _send_facts(a, facts[n], inbox[n])
            outside = [(SEEN, "a"), (SEEN, "b"), (SEEN, "c")]
            await _lines_become(
                agents["b"], inbox["b"], [("10.1.96.3", "a"), ("10.1.96.4", "b"), (SEEN, "c")]
            )
            await _lines_become(agents["c"], inbox["c"], outside)
            # a moves inside the VPC: nothing changes for c, but b must learn it.
            moved = {**facts["a"], "ips": ["10.1.96.30"], "private_ips": ["10.1.96.30"]}
            await _send_facts(agents["a"], moved, inbox["a"])
            await _lines_become(
                agents["b"], inbox["b"], [("10.1.96.30", "a"), ("10.1.96.4", "b"), (SEEN, "c")]
            )

    asyncio.run(machines())
    assert_no_traceback_in_server_log(env.server)


def _private_network_address(ips: list[str]) -> str | None:
    """The first of ``ips`` in a private network the hosts rule recognises, IPv4 first
    (what it lists for two machines with the same addresses)."""
    nets = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
    for ip in sorted(ips, key=lambda ip: ipaddress.ip_address(ip).version):
        addr = ipaddress.ip_address(ip)
        if any(addr in ipaddress.ip_network(n) for n in nets):
            return ip
    return None


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare(1) to give the agent its own /etc/hosts",
)
def test_a_real_agent_lists_its_vpc_peer_privately_beside_an_outsider(env, crc):
    """A real agent writes its hosts file: its peer in its private network by the private
    address, the machine outside by its public one."""
    out = env.client.create_group("lab", ["a", "b", "c"])
    keys = {m["name"]: m["key"] for m in out["machines"]}
    hosts = env.tmp / "hosts-a"
    hosts.write_bytes(b"127.0.0.1 localhost\n")
    script = 'mount --bind "$0" /etc/hosts && exec "$@"'
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(hosts)]
    env.agent("a", keys["a"], prefix=prefix)
    group = env.wait_state("lab", ["a"], "ready")
    # The real agent reports this computer's addresses.
    facts = next(m.get("facts") or {} for m in group["machines"] if m["name"] == "a")
    own = _private_network_address(facts.get("private_ips") or [])
    if own is None:
        pytest.skip("this computer has no address in a private network")
    # b: another address of a's private network; c: a machine with a public one only.
    neighbour = str(ipaddress.ip_address(int(ipaddress.ip_address(own)) ^ 1))
    claims = {
        "b": {"hostname": "b", "ips": [neighbour], "private_ips": [neighbour]},
        "c": {"hostname": "c", "ips": ["203.0.113.9"], "public_ips": ["203.0.113.9"]},
    }
    with pinned_http(env.server) as http:
        creds = {n: enroll(http, keys[n]) for n in claims}

    async def others() -> None:
        for n, body in claims.items():
            async with wire_agent(env.server, creds[n], "lab", n) as m:
                await m.send_msg("facts", body)

    asyncio.run(others())
    r = crc("hosts", "sync", "lab", "--to", "a")
    assert r.returncode == 0, r.stderr
    content = hosts.read_bytes()
    # Before, the one outsider made every line public: `127.0.0.1 a a.lab b b.lab c c.lab`.
    for line in (f"{own} a a.lab", f"{neighbour} b b.lab", f"{SEEN} c c.lab"):
        assert f"\n{line}\n".encode() in content, content
