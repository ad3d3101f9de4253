"""Which address of a peer a machine's hosts file lists (``--ip auto|private|public``)."""

from __future__ import annotations

from typing import Any

import pytest

from cloudremotecontrol.errors import InvalidInput
from cloudremotecontrol.server.ops.roster import hosts_entries, hosts_table


def machine(name: str, public: str | None, private: list[str] | None = None) -> dict[str, Any]:
    """A roster entry: ``public`` the address the server sees, ``private`` the facts'."""
    private = private or []
    ips = [*private, *([public] if public else [])]
    return {"name": name, "public_ip": public, "ips": ips, "private_ips": private}


# Two machines in one VPC (10.1.96.0/20) and one outside any.
A = machine("a", "198.51.100.1", ["10.1.96.3"])
B = machine("b", "198.51.100.2", ["10.1.96.4"])
C = machine("c", "203.0.113.9")
GROUP = [A, B, C]


def test_auto_pairs_vpc_machines_by_private_address_and_the_outsider_by_public():
    table = hosts_table(GROUP, GROUP)
    # The two VPC machines reach each other (and themselves) privately, the outsider
    # publicly: one machine without a private address no longer switches everyone.
    assert table["a"] == [("10.1.96.3", "a"), ("10.1.96.4", "b"), ("203.0.113.9", "c")]
    assert table["b"] == [("10.1.96.3", "a"), ("10.1.96.4", "b"), ("203.0.113.9", "c")]
    # The outsider cannot reach a private address: everyone's public one.
    assert table["c"] == [("198.51.100.1", "a"), ("198.51.100.2", "b"), ("203.0.113.9", "c")]
    for m in GROUP:
        assert hosts_entries(GROUP, "auto", m) == table[m["name"]]


def test_auto_without_a_target_lists_what_the_server_sees():
    assert hosts_entries(GROUP) == [
        ("198.51.100.1", "a"),
        ("198.51.100.2", "b"),
        ("203.0.113.9", "c"),
    ]


def test_private_and_public_are_the_same_for_every_target():
    assert hosts_table(GROUP, GROUP, "private") == {
        name: [("10.1.96.3", "a"), ("10.1.96.4", "b")] for name in "abc"
    }
    public = [("198.51.100.1", "a"), ("198.51.100.2", "b"), ("203.0.113.9", "c")]
    assert hosts_table(GROUP, GROUP, "public") == {name: public for name in "abc"}


def test_machines_in_different_private_networks_use_public_addresses():
    home = machine("h", "192.0.2.7", ["192.168.1.20"])
    lab = [A, home]
    assert hosts_entries(lab, "auto", A) == [("10.1.96.3", "a"), ("192.0.2.7", "h")]
    assert hosts_entries(lab, "auto", home) == [("198.51.100.1", "a"), ("192.168.1.20", "h")]
    # IPv6 unique local addresses: the same /48 is one site, another /48 is not.
    x = machine("x", "2001:db8::1", ["fd12:3456:789a:1::5"])
    y = machine("y", "2001:db8::2", ["fd12:3456:789a:2::6"])
    z = machine("z", "2001:db8::3", ["fdff:3456:789a:1::7"])
    assert hosts_entries([x, y, z], "auto", x) == [
        ("fd12:3456:789a:1::5", "x"),
        ("fd12:3456:789a:2::6", "y"),
        ("2001:db8::3", "z"),
    ]


def test_the_peers_first_address_in_a_shared_network_is_chosen_ipv4_first():
    # Several private networks on the peer (a VPC, a container bridge, a ULA): the first,
    # IPv4 before IPv6, of those the target has an address in too.
    peer = machine("p", "198.51.100.5", ["fd00:1::9", "172.18.0.1", "10.1.96.9", "10.200.0.9"])
    target = machine("t", "198.51.100.6", ["fd00:1::8", "10.1.96.8"])
    assert hosts_entries([peer], "auto", target) == [("10.1.96.9", "p")]
    only_v6 = machine("t6", "198.51.100.7", ["fd00:1::8"])
    assert hosts_entries([peer], "auto", only_v6) == [("fd00:1::9", "p")]


def test_an_address_both_machines_have_is_never_the_way_to_the_other():
    # Docker's bridge is 172.17.0.1 on every host: it leads each one to itself.
    vpc = machine("v", "198.51.100.10", ["10.1.96.10", "172.17.0.1"])
    bridge_first = machine("w", "198.51.100.11", ["172.17.0.1", "10.1.96.11"])
    outside = machine("o", "198.51.100.12", ["172.17.0.1"])
    group = [vpc, bridge_first, outside]
    table = hosts_table(group, group)
    assert table["v"] == [("10.1.96.10", "v"), ("10.1.96.11", "w"), ("198.51.100.12", "o")]
    assert table["w"] == [("10.1.96.10", "v"), ("10.1.96.11", "w"), ("198.51.100.12", "o")]
    # Its own line is its own private address, whatever the others have.
    assert table["o"] == [("198.51.100.10", "v"), ("198.51.100.11", "w"), ("172.17.0.1", "o")]


def test_targets_alike_share_a_list_but_each_has_its_own_line():
    vpc = [machine(f"m{i}", f"198.51.100.{i + 20}", [f"10.1.96.{i + 20}"]) for i in range(5)]
    group = [*vpc, C]
    table = hosts_table(group, group)
    for m in vpc:
        assert table[m["name"]] == [
            *[(f"10.1.96.{i + 20}", f"m{i}") for i in range(5)],
            ("203.0.113.9", "c"),
        ]
    assert table["c"] == [
        *[(f"198.51.100.{i + 20}", f"m{i}") for i in range(5)],
        ("203.0.113.9", "c"),
    ]


def test_claimed_private_addresses_that_are_not_private_are_not_trusted():
    # Facts are what a machine claims: a public address called private, or garbage.
    liar = machine("l", "198.51.100.8", ["8.8.8.8", "10.1.96.7\n6.6.6.6 bank", "not-an-ip"])
    mate = machine("m", "198.51.100.9", ["8.8.8.8", "10.1.96.5"])
    assert hosts_entries([liar, mate], "auto", mate) == [
        ("198.51.100.8", "l"),
        ("10.1.96.5", "m"),
    ]
    assert hosts_entries([liar, mate], "auto", liar) == [
        ("198.51.100.8", "l"),
        ("198.51.100.9", "m"),
    ]


def test_a_peer_without_any_address_is_left_out_and_bad_modes_are_refused():
    silent = {"name": "s", "public_ip": None, "ips": [], "private_ips": ["10.1.96.1"]}
    assert hosts_entries([A, silent], "auto", A) == [("10.1.96.3", "a")]
    with pytest.raises(InvalidInput):
        hosts_table(GROUP, GROUP, "vpc")


def test_a_peer_claiming_another_machines_address_never_comes_first_on_its_line():
    """The first name of a hosts line is what a reverse lookup of its address gives: a
    machine reporting another's address (its facts are only what it claims) comes after
    the owner, whatever the names: the one the server sees connect from it, else the
    one enrolled first."""
    web = machine("web", "198.51.100.5", ["10.1.96.5"])
    hostile = machine("aaa", "198.51.100.66", ["10.1.96.5"])  # web's address
    db = machine("db", "198.51.100.7", ["10.1.96.7"])
    group = [hostile, db, web]  # the roster's order: by name
    enrolled = {"web": 100.0, "db": 101.0, "aaa": 102.0}
    table = hosts_table(group, group, "auto", enrolled)
    assert table["db"] == [("10.1.96.5", "web"), ("10.1.96.7", "db"), ("10.1.96.5", "aaa")]
    assert hosts_table(group, group, "private", enrolled)["db"][0] == ("10.1.96.5", "web")
    # Each name still leads to its own claim only: web's to web's address.
    assert dict((n, ip) for ip, n in table["db"])["web"] == "10.1.96.5"
    # Enrolled first, but not the machine the server sees at that address: second.
    lan = machine("web", "192.168.1.20", ["192.168.1.20"])
    early = machine("aaa", "198.51.100.66", ["192.168.1.20"])
    home = machine("home", "192.168.1.30", ["192.168.1.30"])
    group = [early, home, lan]
    table = hosts_table(group, group, "auto", {"aaa": 1.0, "home": 2.0, "web": 3.0})
    assert table["home"][0] == ("192.168.1.20", "web")
    assert table["home"][2] == ("192.168.1.20", "aaa")


def test_machines_behind_one_address_each_list_themselves_by_their_own_and_the_owner_first():
    """Machines behind one NAT with only a container bridge's address each (no network
    in common): every target lists itself by its bridge address (its line of its own)
    and the others at the address the server sees them connect from, by enrollment
    whatever the names. The enrollment order is asked for once,
    and only because two machines are at one address."""
    nat = "203.0.113.9"
    group = [machine(f"m{i}", "198.51.100.1" if i == 2 else nat, ["172.17.0.1"]) for i in range(5)]
    calls = []

    def enrolled() -> dict[str, float]:
        calls.append(1)
        return {"m4": 1.0, "m3": 2.0, "m0": 3.0, "m1": 4.0, "m2": 5.0}

    table = hosts_table(group, group, "auto", enrolled)
    assert calls == [1]
    for t in group:
        mine = [ip for ip, name in table[t["name"]] if name == t["name"]]
        assert mine == ["172.17.0.1"]
        names_at_nat = [name for ip, name in table[t["name"]] if ip == nat]
        others = [n for n in ("m4", "m3", "m0", "m1") if n != t["name"]]
        assert names_at_nat == others, t["name"]
    calls.clear()
    apart = [machine(f"m{i}", f"198.51.100.{i + 1}", ["172.17.0.1"]) for i in range(3)]
    hosts_table(apart, apart, "auto", enrolled)
    assert calls == []  # no address with two machines: nothing to ask
