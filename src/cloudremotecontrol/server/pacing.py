"""What one machine may make the server store, per second: a token bucket of bytes per
machine, which the agent endpoint pays before it reads the machine's next frame.

Everything a machine sends is stored (an event, a message for its peers, facts) and
kept for the retention of events: without a bound, one compromised machine looping
large progress or ``user.*`` messages would fill the server's disk at whatever rate the
server can write. The bucket holds ``burst`` bytes and refills at ``rate`` bytes per
second; a frame costs its size, at least ``MIN_COST``. A machine past its bucket is not
refused (nothing it sent is lost): the server reads its next frame only once the bucket
has refilled, so the machine waits for its acks (an agent sends at most 4 messages ahead
of them) and its outbox holds the rest. What a job sends (its start, output and
result, for a job the server sent it) is not counted: a job's output is bounded by what
the server keeps of it, and is what a master asked for.

Per server process: each replica counts what it reads. The buckets live for as long as
the process (one per machine that sent something counted, a few dozen bytes each); a
full bucket is the same as none, so one is dropped once it is full again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["MIN_COST", "Paces"]

MIN_COST = 1024  # bytes a frame costs at least: many small frames cost writes too


class _Bucket:
    __slots__ = ("level", "stamp")

    def __init__(self, level: float, stamp: float) -> None:
        self.level, self.stamp = level, stamp


class Paces:
    """One bucket per machine id: ``charge`` returns the seconds to wait before that
    machine's next frame is read."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, _Bucket] = {}
        self._sweep_at = 1024  # buckets held when full ones are next dropped

    def charge(self, machine: str, size: int) -> float:
        """Take ``size`` bytes (at least ``MIN_COST``) from ``machine``'s bucket; the
        bucket may go into debt, and the answer is how long it takes to pay it off."""
        now = self.clock()
        bucket = self._buckets.get(machine)
        if bucket is None:
            if len(self._buckets) >= self._sweep_at:
                self.forget_full()
                self._sweep_at = 2 * len(self._buckets) + 1024
            bucket = self._buckets[machine] = _Bucket(self.burst, now)
        else:
            bucket.level = min(self.burst, bucket.level + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        bucket.level -= max(size, MIN_COST)
        if bucket.level >= 0:
            return 0.0
        return -bucket.level / self.rate

    def forget_full(self) -> None:
        """Drop the buckets that have refilled (the same as having none)."""
        now = self.clock()
        full = [
            machine
            for machine, b in self._buckets.items()
            if b.level + (now - b.stamp) * self.rate >= self.burst
        ]
        for machine in full:
            del self._buckets[machine]

    def __len__(self) -> int:
        return len(self._buckets)
