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

    def failed(self, address: str) -> None:
        q = self._recent(address)
        if q is None:
            if len(self._failures) >= MAX_ADDRESSES:
                del self._failures[next(iter(self._failures))]
            q = self._failures[address] = deque()
        q.append(self.clock())
        while len(q) > self.per_minute:
            q.popleft()
