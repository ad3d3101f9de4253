"""Failed enrollments per source address: a sliding one-minute window.

Keys carry 192 random bits, so guessing one is hopeless; what the limit stops is a
machine (or anything else) hammering ``/v1/agent/enroll`` to flood the log and the
database with refusals, or probing which key ids exist. An address past the limit is
answered ``429`` for every enrollment, right or wrong, until its oldest failure is a
minute old. Per server process (each replica counts its own).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

__all__ = ["FailureWindow"]

WINDOW_SECONDS = 60.0
MAX_ADDRESSES = 100_000  # addresses remembered at once; the oldest are forgotten first


class FailureWindow:
    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        #: Attempts under way per address (``begin`` .. ``end``), counted as failures
        #: until they end: a burst of attempts arriving together passes no further than
        #: the limit, though none has failed yet when the others are checked.
        self._pending: dict[str, int] = {}

    def _recent(self, address: str) -> deque[float] | None:
        q = self._failures.get(address)
        if q is None:
            return None
        horizon = self.clock() - WINDOW_SECONDS
        while q and q[0] <= horizon:
            q.popleft()
        if not q:
            del self._failures[address]
            return None
        return q

    def retry_after(self, address: str) -> float:
        """0 if ``address`` may try now, else the seconds until it may."""
        q = self._recent(address)
        if q is None or len(q) < self.per_minute:
            return 0.0
        return max(0.1, q[0] + WINDOW_SECONDS - self.clock())

    def begin(self, address: str) -> float:
        """Check and count at once (with no ``await`` between, so atomic per process):
        0 if ``address`` may try now, and the attempt is then counted as under way
        until the caller calls ``end`` (it must, whatever happens); else the seconds
        until it may, and nothing is counted."""
        q = self._recent(address)
        pending = self._pending.get(address, 0)
        if (len(q) if q else 0) + pending < self.per_minute:
            self._pending[address] = pending + 1
            return 0.0
        if q is None or len(q) < self.per_minute:
            # Only attempts under way fill the window: they end within a request.
            return 1.0
        return max(0.1, q[0] + WINDOW_SECONDS - self.clock())

    def end(self, address: str, failed: bool) -> None:
        """The attempt ``begin`` admitted is over; ``failed`` counts it in the window."""
        left = self._pending.get(address, 0) - 1
        if left > 0:
            self._pending[address] = left
        else:
            self._pending.pop(address, None)
        if failed:
            self.failed(address)

    def failed(self, address: str) -> None:
        q = self._recent(address)
        if q is None:
            if len(self._failures) >= MAX_ADDRESSES:
                del self._failures[next(iter(self._failures))]
            q = self._failures[address] = deque()
        q.append(self.clock())
        while len(q) > self.per_minute:
            q.popleft()
