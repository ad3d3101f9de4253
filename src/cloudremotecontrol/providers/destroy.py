"""Destroy a scenario's machines and check at the provider that none is left.

The one implementation behind ``crc down`` (and ``crc demo``'s teardown) on the master
and the server's teardown when a group's TTL passes (``on_ttl: destroy``). Destroying
is not the end: a cloud answers ``DELETE`` at once and removes the machine later, and a
machine created by a request whose answer got lost appears late. So after destroying
what it lists, it lists the scenario again until nothing is left or ``verify_timeout``
passes, and only then removes what the provider keeps beside the instances
(``Provider.cleanup``: Vultr's startup scripts), which a machine still there may need.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .base import Instance, Provider

__all__ = ["VERIFY_SECONDS", "Destroyed", "destroy_scenario"]

VERIFY_SECONDS = 180.0
POLL_SECONDS = 2.0


@dataclass(frozen=True)
class Destroyed:
    """What ``destroy_scenario`` did: the instances it destroyed, those still listed
    when it gave up (empty: all gone), and what ``cleanup`` removed."""

    destroyed: list[Instance]
    left: list[Instance]
    cleaned: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.left


def destroy_scenario(
    provider: Provider,
    scenario: str,
    *,
    verify_timeout: float = VERIFY_SECONDS,
    on_destroyed: Callable[[Instance], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Destroyed:
    """Destroy every instance of ``scenario`` (``on_destroyed`` is told of each), list
    again every 2 s until none is left or ``verify_timeout`` passes, then clean up.

    Provider errors propagate: nothing is reported destroyed that the provider did not
    accept. Call it again after a failure; it starts from what the provider lists.
    """
    destroyed: list[Instance] = []
    for inst in provider.list(scenario):
        provider.destroy(inst.id)
        destroyed.append(inst)
        if on_destroyed is not None:
            on_destroyed(inst)
    deadline = clock() + verify_timeout
    left = provider.list(scenario)
    while left and clock() < deadline:
        sleep(POLL_SECONDS)
        left = provider.list(scenario)
    cleaned = provider.cleanup(scenario) if not left else {}
    return Destroyed(destroyed, left, cleaned)
