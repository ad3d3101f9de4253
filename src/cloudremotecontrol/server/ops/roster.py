"""The roster: what a group's machines know of each other, and hosts-file entries."""

from __future__ import annotations

import ipaddress
from typing import Any

from ...errors import InvalidInput
from ...protocol.fields import check_ip
from ..store.base import Tx
from .common import loads

__all__ = ["hosts_entries", "roster"]


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


def hosts_entries(machines: list[dict[str, Any]], which: str = "auto") -> list[tuple[str, str]]:
    """``(ip, name)`` per peer. ``private``/``public`` force a kind; ``auto`` uses private
    (VPC) addresses when every peer has one, else the address the server sees. Only
    plain addresses are used: a hosts line is built from them."""
    if which not in ("auto", "private", "public"):
        raise InvalidInput("--ip must be auto, private or public", field="ip")
    known = [m for m in machines if _addresses(m.get("ips")) or _address(m.get("public_ip"))]
    if which == "auto":
        which = (
            "private"
            if known and all(_addresses(m.get("private_ips")) for m in known)
            else "public"
        )
    out = []
    for m in known:
        if which == "private":
            ip = _pick(_addresses(m.get("private_ips")))
        else:
            ip = _address(m.get("public_ip")) or _pick(_addresses(m.get("ips")))
        if ip:
            out.append((ip, m["name"]))
    return out


def _address(value: Any) -> str | None:
    try:
        return check_ip(value)
    except ValueError:
        return None
