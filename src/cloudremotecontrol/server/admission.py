"""Agent logins in progress at once, and what the ones turned away are told.

A *login* is an agent's WebSocket from its upgrade to the server's ``welcome`` (or to
its refusal): the credential check, the ``hello``, recording the connection and the
replay bookkeeping - the work a whole fleet asks for at once after a server restart.
``LoginGate`` lets ``max_logins`` of them run at once; the next one is answered
``503`` with ``Retry-After`` by the HTTP protocol as soon as it sees the upgrade request
(``httpguard.py``: no WebSocket, no application code; the cheapest answer the server can
give once TLS is done; the endpoint checks again, ``agent_ws.py``), and a credential has
at most one login in progress,
so a client that never says ``hello`` holds one place for ``HELLO_TIMEOUT`` at most.

``Retry-After`` spreads the ones turned away over time rather than telling them all the
same second: each refusal takes the next free *slot* of a schedule that advances by
``1 / rate`` per refusal, ``rate`` being the logins the server completes per second
(Little's law: places divided by the mean time a login takes, measured). So ten
thousand agents returning together are told to come back over the time the server needs
for them, and the agents add their own jitter (``agent/core.py``). Per server process;
everything here runs on the event loop's thread.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["LoginGate"]

MAX_RETRY_AFTER = 60  # seconds; what one refusal may ask for at most
FIRST_LOGIN_SECONDS = 0.05  # assumed time of one login until one has been measured
EWMA = 0.05  # weight of the newest login in the mean login time


class LoginGate:
    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.clock = clock
        self.active = 0
        self.machines: set[str] = set()  # credentials with a login in progress
        self.mean_seconds = FIRST_LOGIN_SECONDS
        self.refused = 0  # answered 503 since the start
        self._next_slot = 0.0

    def full(self) -> bool:
        return self.active >= self.limit

    def enter(self) -> float | None:
        """Take a place (None: go on; call ``leave`` with the returned start time once
        done), else the seconds to tell the client to wait (``Retry-After``)."""
        if self.active < self.limit:
            self.active += 1
            return None
        return self.retry_after()

    def retry_after(self) -> float:
        """The seconds to tell a client turned away now (the next free slot of the
        schedule, which it takes); also what ``httpguard.py`` tells the connections it
        refuses, so that every 503 the server gives under load spreads the retries."""
        now = self.clock()
        self.refused += 1
        rate = self.limit / max(self.mean_seconds, 1e-3)  # logins per second
        self._next_slot = min(max(self._next_slot, now) + 1.0 / rate, now + MAX_RETRY_AFTER)
        return float(max(1, math.ceil(self._next_slot - now)))

    def start(self) -> float:
        return self.clock()

    def leave(self, started: float, completed: bool) -> None:
        """Give the place back; ``completed``: the login reached its welcome (its time
        counts in the mean)."""
        self.active -= 1
        if completed:
            took = max(0.0, self.clock() - started)
            self.mean_seconds += EWMA * (took - self.mean_seconds)

    def claim(self, machine_id: str) -> bool:
        """One login in progress per credential: False if this machine has one."""
        if machine_id in self.machines:
            return False
        self.machines.add(machine_id)
        return True

    def unclaim(self, machine_id: str) -> None:
        self.machines.discard(machine_id)
