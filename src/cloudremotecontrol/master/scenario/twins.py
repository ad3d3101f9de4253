"""Which instance of a slot is the machine, when the provider lists two (twins).

A create whose answer was lost, sent again before the provider listed the first one,
leaves a slot with two instances (``VultrProvider.create``). Both boot with the same
single-use enrollment key, so at most one ever enrolls, and `crc up` cannot tell from
the provider which: it waits for the one whose create answered, but the other one, made
first, often boots first and takes the key. Keeping the wrong one would destroy the
live machine, or keep an instance that can never enroll and record it for the steps
(``instance_id``, ``public_ip``) and for the next `crc up`.

So the server's view of the machine decides. While the machine is ``pending`` nobody
used the key: the instance `crc up` waits for stays and the others go (the key then
still works for it). Once the machine enrolled, the instance whose addresses are the
machine's is the machine: the address its agent connected from (``public_ip``) and the
addresses it reports (facts ``ips``, ``public_ips``, ``private_ips``), against what
the provider gave each instance (Vultr: ``main_ip``, ``v6_main_ip``, ``internal_ip``).
A public address is the provider's own and names one instance; a private one may repeat
(another VPC, a container bridge), so it decides only where no public one matched. When
nothing decides (no facts yet, a server behind a proxy, two instances matching) no
instance is destroyed: the others are named, and asked about again at the next check.
Facts are the machine's word (hostile input): a machine that lies about its addresses
can only make `crc up` keep the wrong instance of its own slot, never touch another.

Everything here is a pure function of what the provider listed and what the server
said: the runner (``runner.py``) asks both and carries the verdict out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...providers import Instance

__all__ = ["Verdict", "enrolled_instance", "machine_addresses", "resolve_twins"]


@dataclass(frozen=True)
class Verdict:
    """What to do with a slot's instances.

    ``keep``: the machine, the instance `crc up` goes on with (record it); ``destroy``:
    instances known not to be the machine; ``unknown``: the others when that is not
    known (leave them, name them; `crc down` destroys them). ``address``: the address
    that showed which instance enrolled, when one did."""

    keep: Instance
    destroy: tuple[Instance, ...] = ()
    unknown: tuple[Instance, ...] = ()
    address: str | None = None


def _normal(text: object) -> str | None:
    """``text`` as one canonical address (IPv6 written out in full by some APIs and
    shortened by others), or ``None`` if it is not one."""
    if not isinstance(text, str):
        return None
    try:
        return ipaddress.ip_address(text.strip()).compressed
    except ValueError:
        return None


def _addresses(values: Iterable[object]) -> set[str]:
    return {a for a in map(_normal, values) if a is not None}


def machine_addresses(machine: Mapping[str, Any]) -> set[str]:
    """Every address the server knows for ``machine`` (a machine of ``GET
    /v1/groups/{group}``): the one its agent connected from and those it reports."""
    facts = machine.get("facts")
    facts = facts if isinstance(facts, Mapping) else {}
    found: list[object] = [machine.get("public_ip")]
    for values in (
        machine.get("ips"),
        *(facts.get(k) for k in ("ips", "public_ips", "private_ips")),
    ):
        if isinstance(values, list):
            found += values
    return _addresses(found)


def enrolled_instance(
    instances: Sequence[Instance], addresses: set[str]
) -> tuple[Instance, str] | None:
    """The one instance of ``instances`` that has one of ``addresses`` (and that
    address), or ``None`` if none has or several have. Public addresses first."""
    for kind in ((lambda i: (i.main_ip, i.v6_main_ip)), (lambda i: (i.private_ip,))):
        hits = [(i, sorted(_addresses(kind(i)) & addresses)) for i in instances]
        hits = [(i, found) for i, found in hits if found]
        if len(hits) == 1:
            return hits[0][0], hits[0][1][0]
        if hits:
            return None  # two instances claim the machine's address: nothing decides
    return None


def resolve_twins(
    current: Instance, others: Sequence[Instance], machine: Mapping[str, Any] | None
) -> Verdict:
    """Decide between ``current`` (the instance `crc up` holds for the slot) and
    ``others`` (more instances listed for it), given ``machine``, the server's view
    of the slot asked *now* (``None``: the server does not list it)."""
    if machine is None:
        return Verdict(current, unknown=tuple(others))
    if machine.get("state") == "pending":
        return Verdict(current, destroy=tuple(others))  # the key is unused: any one will do
    found = enrolled_instance([current, *others], machine_addresses(machine))
    if found is None:
        return Verdict(current, unknown=tuple(others))
    keep, address = found
    rest = tuple(i for i in (current, *others) if i.id != keep.id)
    return Verdict(keep, destroy=rest, address=address)
