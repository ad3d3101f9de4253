"""Destroy a scenario's machines and check at the provider that none is left.

The one implementation behind ``crc down`` (and ``crc demo``'s teardown) on the master
and the server's teardown when a group's TTL passes (``on_ttl: destroy``). Destroying
is not the end: a cloud answers ``DELETE`` at once and removes the machine later, and a
machine created by a request whose answer got lost appears late. So after destroying
what it lists, it lists the scenario again until nothing is left or ``verify_timeout``
passes, destroying what appears meanwhile, and only then removes what the provider keeps
beside the instances (``Provider.cleanup``: Vultr's startup scripts), which a machine
still there may need.

One machine the provider fails to destroy never keeps the others alive: each is
destroyed on its own. A failure that may pass (an API that keeps failing for it: 5xx,
429, the network, a 4xx that may mean "not yet") is tried again at every listing until
the time is up; a refusal for good (``refused_for_good``: the provider refuses the key
or forbids the call, Vultr's 401 and 403) is not asked again, and once only
such machines are listed the verification ends at once instead of waiting out the time
for a machine that cannot go. Either way it is reported with the provider's words.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import ProviderError
from .base import Instance, Provider

__all__ = ["CLEANUP", "VERIFY_SECONDS", "Destroyed", "destroy_scenario", "refused_for_good"]

#: The key of ``Destroyed.errors`` for a ``cleanup`` the provider refused.
CLEANUP = "cleanup"

VERIFY_SECONDS = 180.0
POLL_SECONDS = 2.0


@dataclass(frozen=True)
class Destroyed:
    """What ``destroy_scenario`` did: the instances it destroyed, those still listed
    when it gave up (empty: all gone), why the provider refused to destroy some of those
    (``errors``: instance id -> message, and ``CLEANUP`` -> message when the clean-up
    after them failed), which of them it refused for good (``refused``: ids, not asked
    again), and what ``cleanup`` removed."""

    destroyed: list[Instance]
    left: list[Instance]
    cleaned: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    refused: frozenset[str] = frozenset()

    @property
    def ok(self) -> bool:
        return not self.left


def destroy_scenario(
    provider: Provider,
    scenario: str,
    *,
    verify_timeout: float = VERIFY_SECONDS,
    on_destroyed: Callable[[Instance], None] | None = None,
    on_waiting: Callable[[list[Instance], dict[str, str], float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Destroyed:
    """Destroy every instance of ``scenario`` (``on_destroyed`` is told of each), list
    again every 2 s until none is left or ``verify_timeout`` passes, destroying what is
    listed anew and trying again what the provider failed to destroy, then clean up.
    The listing also ends as soon as only instances the provider refused for good
    (:func:`refused_for_good`) are left. Before each wait between listings,
    ``on_waiting(left, errors, seconds)`` is told what is still listed, why the provider
    refused to destroy some of it, and how long the check has been going on.

    An error of the first listing propagates (nothing was done yet). After it, a
    ``ProviderError`` destroying one instance is kept in ``errors`` while the others go
    on; a listing that fails is asked again until the time is up, and its error is raised
    only if the last one failed (what is left is then unknown). Nothing is reported
    destroyed that the provider did not accept. Call it again after a failure; it starts
    from what the provider lists.
    """
    destroyed: dict[str, Instance] = {}
    errors: dict[str, str] = {}
    refused: set[str] = set()  # refused for good: asking again cannot help

    def destroy_new(listed: list[Instance]) -> None:
        for inst in listed:
            if inst.id in destroyed or inst.id in refused:
                continue  # accepted (going away: never DELETE twice) or refused for good
            try:
                provider.destroy(inst.id)
            except ProviderError as exc:
                errors[inst.id] = exc.message
                if refused_for_good(exc):
                    refused.add(inst.id)
                continue
            errors.pop(inst.id, None)
            destroyed[inst.id] = inst
            if on_destroyed is not None:
                on_destroyed(inst)

    left = provider.list(scenario)
    destroy_new(left)
    start = clock()
    deadline = start + verify_timeout
    failed: ProviderError | None = None
    while True:
        try:
            left = provider.list(scenario)
            failed = None
        except ProviderError as exc:
            failed = exc  # keep the last good listing; a blip is asked again
        if failed is None and all(i.id in refused for i in left):
            break  # none left, or only what waiting cannot remove
        if clock() >= deadline:
            if failed is not None:
                raise failed
            break
        if failed is None:
            destroy_new(left)  # what appeared late, and what was refused before
        if on_waiting is not None:
            listed = {i.id for i in left}
            why = {k: v for k, v in errors.items() if k in listed}
            on_waiting(list(left), why, clock() - start)
        sleep(POLL_SECONDS)
    kept = {i.id for i in left}
    errors = {k: v for k, v in errors.items() if k in kept}
    refused &= kept
    cleaned: dict[str, int] = {}
    if not left:
        try:
            cleaned = provider.cleanup(scenario)
        except ProviderError as exc:
            # The machines are gone (nothing bills); what the provider keeps beside them
            # stays for the next `crc down`, which lists nothing and cleans up again.
            errors[CLEANUP] = exc.message
    return Destroyed(list(destroyed.values()), left, cleaned, errors, frozenset(refused))


def refused_for_good(exc: ProviderError) -> bool:
    """A destroy the provider will refuse however long one waits: its key refused or
    the call forbidden (HTTP 401, 403). Other refusals (``ProviderError.permanent``: a
    400 or a 409 say the request is wrong *now*; a machine still being created or
    locked may be one) are asked again while the check lasts, as failures that may
    pass are."""
    return exc.permanent and exc.details.get("status") in (401, 403)
