"""The roster: what a group's machines know of each other, and hosts-file entries."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from ...errors import InvalidInput
from ...protocol.fields import check_ip
from ..store.base import Tx
from .common import loads

__all__ = ["enrollment_order", "hosts_entries", "hosts_table", "roster"]


def roster(tx: Tx, group_id: str) -> list[dict[str, Any]]:
    """Every live machine of the group: name, labels, state, addresses (no secrets)."""
    rows = tx.all(
        "SELECT name, labels, state, facts, peer_ip, last_seen FROM machines "
        "WHERE group_id = ? AND state != 'revoked' ORDER BY name",
        (group_id,),
    )
    out = []
    for r in rows:
        facts = loads(r["facts"]) or {}
        out.append(
            {
                "name": r["name"],
                "labels": loads(r["labels"]) or {},
                "state": r["state"],
                "hostname": facts.get("hostname"),
                "os": facts.get("os"),
                "ips": facts.get("ips", []),
                "private_ips": facts.get("private_ips", []),
                "public_ip": r["peer_ip"],
                "last_seen": r["last_seen"],
            }
        )
    return out


def enrollment_order(tx: Tx, group_id: str) -> dict[str, float]:
    """When each enrolled machine of the group used its key, by name: of two machines
    claiming one address, the one there first is taken for its owner
    (:func:`hosts_table`)."""
    rows = tx.all(
        "SELECT name, key_used FROM machines WHERE group_id = ? AND key_used IS NOT NULL",
        (group_id,),
    )
    return {r["name"]: float(r["key_used"]) for r in rows}


def _addresses(value: Any) -> list[str]:
    """The plain addresses in ``value`` (a list from a machine's facts; facts stored by
    an older server were not checked, so nothing else is trusted to be one)."""
    out = []
    for item in value if isinstance(value, list) else []:
        try:
            out.append(check_ip(item))
        except ValueError:
            continue
    return out


def _pick(ips: list[str]) -> str | None:
    """The first IPv4 address, else the first address."""
    v4 = [ip for ip in ips if ipaddress.ip_address(ip).version == 4]
    return (v4 or ips)[0] if ips else None


# What a bare address tells of its private network (facts carry no prefix lengths): the
# RFC 1918 or RFC 6598 block of an IPv4 address, the /48 of an IPv6 unique local address
# (RFC 4193: one site's random prefix). Any other address is not private, whatever the
# machine calls it.
_PRIVATE_V4 = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
)
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _network(ip: str) -> Network | None:
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        return next((n for n in _PRIVATE_V4 if addr in n), None)
    if addr in _UNIQUE_LOCAL:
        return ipaddress.ip_network(f"{addr}/48", strict=False)
    return None


class _Peer:
    """One machine's addresses, checked and parsed once per sync."""

    def __init__(self, m: dict[str, Any]) -> None:
        self.name: str = m["name"]
        self.private = _addresses(m.get("private_ips"))
        self.seen = _address(m.get("public_ip")) or _pick(_addresses(m.get("ips")))
        # Its private addresses in a private network, IPv4 first, else in its own order
        # (an agent lists its primary address first and container bridges last).
        found = [(ip, net) for ip in self.private if (net := _network(ip)) is not None]
        self.candidates = sorted(found, key=lambda c: c[1].version)
        self.nets = frozenset(net for _, net in self.candidates)
        self.own = frozenset(ip for ip, _ in self.candidates)

    def private_for(self, nets: frozenset[Network], own: frozenset[str]) -> str | None:
        """This machine's private address that a machine with addresses ``own`` in the
        private networks ``nets`` can reach: the first in a network of theirs. Never one
        they have too: the same address on two machines (a container bridge's
        172.17.0.1) is each one's own, and leads nowhere else."""
        for ip, net in self.candidates:
            if net in nets and ip not in own:
                return ip
        return None


def _check(which: str) -> None:
    if which not in ("auto", "private", "public"):
        raise InvalidInput("--ip must be auto, private or public", field="ip")


def hosts_entries(
    machines: list[dict[str, Any]], which: str = "auto", target: dict[str, Any] | None = None
) -> list[tuple[str, str]]:
    """``(ip, name)`` per machine of ``machines``, for the hosts file of ``target`` (a
    roster entry; None: a machine without private addresses).

    ``private``/``public`` force a kind, the same for every target. ``auto`` chooses per
    pair: a peer's private address when it is in a private network the target also has
    an address in (the same RFC 1918/6598 block, or the same unique local /48), else the
    address the server sees the peer connect from; the target itself by its own private
    address if it has one. Only plain addresses are used: a hosts line is built from
    them, and facts are only what a machine claims."""
    viewer = target if target is not None else {"name": ""}  # no machine's name
    return hosts_table(machines, [viewer], which)[viewer["name"]]


def hosts_table(
    machines: list[dict[str, Any]],
    targets: list[dict[str, Any]],
    which: str = "auto",
    enrolled: dict[str, float] | Callable[[], dict[str, float]] | None = None,
) -> dict[str, list[tuple[str, str]]]:
    """Each target's :func:`hosts_entries` by name (``targets``: roster entries). The
    addresses are parsed once, and targets alike in what decides the choice share it,
    so a group costs about one list per private network, not one per machine.

    Machines listed at one address are on one hosts line, and the first name of a line
    is what a reverse lookup of the address gives: that is its owner's, whatever the
    names (a machine may claim any address in its facts). The owner is the machine the
    server sees connect from that address, else the one enrolled first (``enrolled``:
    :func:`enrollment_order`, or a function giving it: asked only when two machines
    are at one address), else the first by name."""
    _check(which)
    parsed = {id(m): _Peer(m) for m in machines}
    peers = [p for p in parsed.values() if p.seen]  # those with an address to list
    seen = {p.name: p.seen for p in peers}
    asked: list[dict[str, float]] = []

    def first(name: str) -> float:
        if not asked:
            asked.append((enrolled() if callable(enrolled) else enrolled) or {})
        return asked[0].get(name, float("inf"))

    def owner_first(entries: list[tuple[str, str]]) -> list[tuple[str, str]]:
        count: dict[str, int] = {}
        for ip, _ in entries:
            count[ip] = count.get(ip, 0) + 1
        if all(n == 1 for n in count.values()):
            return entries
        rank = sorted(
            (e for e in entries if count[e[0]] > 1),
            key=lambda e: (seen.get(e[1]) != e[0], first(e[1])),
        )
        lines: dict[str, list[tuple[str, str]]] = {}
        for e in rank:
            lines.setdefault(e[0], []).append(e)
        turn = {ip: iter(line) for ip, line in lines.items()}
        return [next(turn[ip]) if ip in turn else (ip, name) for ip, name in entries]

    # Per list the targets alike share (by id; each is kept in ``lists``): its
    # owner_first order, where each machine is in it, and how many entries each
    # address has.
    shared_info: dict[int, tuple[list[tuple[str, str]], dict[str, int], dict[str, int]]] = {}

    def shared_owner_first(
        entries: list[tuple[str, str]],
    ) -> tuple[list[tuple[str, str]], dict[str, int], dict[str, int]]:
        got = shared_info.get(id(entries))
        if got is None:
            ordered = owner_first(entries)
            where = {name: i for i, (_, name) in enumerate(ordered)}
            count: dict[str, int] = {}
            for ip, _ in entries:
                count[ip] = count.get(ip, 0) + 1
            got = shared_info[id(entries)] = (ordered, where, count)
        return got

    if which != "auto":  # the same for every target
        same = []
        for p in peers:
            ip = _pick(p.private) if which == "private" else p.seen
            if ip:
                same.append((ip, p.name))
        same = owner_first(same)
        return {t["name"]: same for t in targets}
    viewers = [parsed.get(id(t)) or _Peer(t) for t in targets]
    # What decides a peer's line for a target: the target's private networks, and which
    # of its addresses another machine also has (those it must not be sent to).
    count: dict[str, int] = {}
    for p in {m.name: m for m in (*peers, *viewers)}.values():  # each machine once
        for ip in p.own:
            count[ip] = count.get(ip, 0) + 1
    shared = {ip for ip, n in count.items() if n > 1}
    lists: dict[tuple[frozenset[Network], frozenset[str]], list[tuple[str, str]]] = {}
    index = {p.name: i for i, p in enumerate(peers)}
    out = {}
    for v in viewers:
        key = (v.nets, v.own & shared)
        if key not in lists:
            lists[key] = [(ip, p.name) for p in peers if (ip := p.private_for(*key) or p.seen)]
        entries = lists[key]  # every peer has a line (a seen address): in peers' order
        me = index.get(v.name)
        own = None
        if me is not None:  # the target itself: its own private address, one no other
            # machine has if it can, else its seen address
            mine = [ip for ip, _ in peers[me].candidates]
            own = next((ip for ip in mine if ip not in shared), mine[0] if mine else None)
            own = own or peers[me].seen
        # The list the targets alike share, ordered once for all of them.
        ordered, where, at = shared_owner_first(entries)
        if me is None or not own or own == entries[me][0]:
            out[v.name] = ordered
        elif not at.get(own):  # its own address, on a line of its own: the others keep
            mine_first = list(ordered)  # their order, less this machine
            mine_first[where[v.name]] = (own, v.name)
            out[v.name] = mine_first
        else:  # its own address is also another's: that line is ordered again
            out[v.name] = owner_first([*entries[:me], (own, v.name), *entries[me + 1 :]])
    return out


def _address(value: Any) -> str | None:
    try:
        return check_ip(value)
    except ValueError:
        return None
