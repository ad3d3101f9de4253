"""What one machine may make the server store, per second: a token bucket of bytes per
machine, which the agent endpoint consults before it reads the machine's next frame.

Everything a machine sends is stored (an event, a message for its peers, facts) and
kept for the retention of events: without a bound, one compromised machine looping
large progress or ``user.*`` messages would fill the server's disk at whatever rate the
server can write. The bucket holds ``burst`` bytes and refills at ``rate`` bytes per
second; a frame costs the bytes it takes once stored (``stored_size``), at least
``MIN_COST``. A machine in debt is not refused (nothing it sent is lost): the server
reads its next frame, on this connection or a new one, only once the debt is paid, so
what it sends waits in its socket and its outbox; a debt is one frame at most (one
frame read ahead waits with it, so that a connection that ends is noticed). What a
job sends (its start, output and result, for a job the server sent it) and acks are not
counted: a job's output is bounded by what the server keeps of it, and is what a master
asked for; an ack releases a message the server sent. A job's report that changes
nothing (its job had ended, its output is past what is kept, or the job was never sent
to the machine: one held back by rate control, one it does not know) counts as the
frame it is: nothing bounds how many a machine sends, and each is read, checked and numbered.
An ack that releases nothing (an ack already had, each a write all the same) counts as
any frame: ``MIN_COST`` at least.

Which messages count (``charged_copies``): one stored, one refused, and one sent again.
A ``user.*`` message to peers is stored once for the master (its event) and once in
each peer's outbox that takes it: it costs its size that many times, so that a machine
in a large group cannot have the server store a thousand copies of what it paid for
once. A debt of one such frame can be long, (copies x size - burst) / rate: 256 KiB to
1,000 peers is about 3 minutes at the default rate. The agent's pings wait behind it
and it may reconnect meanwhile (the debt is the machine's); nothing is lost.
A message refused (bad input, or given up) stores an ``agent.error`` event in its place,
and a frame refused (malformed, out of sequence, or one only agents receive) an error
frame: they count as the frame they were, like a message stored, so that refusing is
never cheaper than storing (the server read and decoded it all); so does a message whose
``msg.ack`` is refused (an error frame answers it), however little it stores. A message the agent
sends again that the server has stored already is acknowledged again and stores
nothing, but counts as the frame it is, whatever its type: the server reads and checks
it again, and a machine could otherwise send the same stored message (or a job's report
under a stored number) again and again, read at the server's own pace. An agent sends
few (it resumes after the last message the server says it stored). One the server
failed to apply (it asks for it again, and it counts then) and one from a machine
revoked meanwhile do not count.

A paced machine's pings wait behind its data too: an agent that sends more than its
burst at once has its pings answered late, by the bytes ahead of them (its socket's
buffers, a few MiB) over the rate; below ``PACE_WARN_BELOW`` that can pass the agent's
ping timeout, and the agent reconnects (and resends what was not acknowledged).

Per server process: each replica counts what it reads. The buckets live for as long as
the process (one per machine that sent something counted, a few dozen bytes each); a
full bucket is the same as none, so full ones are dropped as new ones are made.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["MIN_COST", "PACE_WARN_BELOW", "Paces", "charged_copies", "stored_size"]

MIN_COST = 1024  # bytes a frame costs at least: many small frames cost writes too
PACE_WARN_BELOW = 512 << 10  # bytes per second: see above (the server warns at start)


def stored_size(text: str) -> int:
    """The bytes ``text`` takes once stored: the server's JSON escapes every UTF-16
    code unit outside ASCII (``\\u00e9``: 6 bytes; 12 for a character outside the BMP)."""
    if text.isascii():
        return len(text)
    ascii_chars = len(text.encode("ascii", "ignore"))
    units = len(text.encode("utf-16-le")) // 2
    return ascii_chars + 6 * (units - ascii_chars)


def charged_copies(kind: object, result: Mapping[str, Any]) -> int:
    """How many times its size a ``msg`` frame costs its machine's pace (0: nothing),
    given its message's ``type`` and what applying it returned (``ops/delivery.py``
    ``apply_agent_message``): see above."""
    receipt = result.get("receipt")
    if receipt in ("retry", "revoked"):
        return 0  # the server's own failure, or a machine gone: nothing stored
    if "ack_error" in result:  # its msg.ack refused: an error frame for it, at least
        return max(1, charged_copies(kind, {k: v for k, v in result.items() if k != "ack_error"}))
    if receipt in ("duplicate", "gap") or "error" in result:
        return 1  # read again, or refused: an agent.error event, or an error frame
    if result.get("unchanged"):
        return 1  # a job's report that stored nothing: read and checked all the same
    if not isinstance(kind, str) or kind.startswith("job."):
        return 0
    if kind.startswith("user."):  # its event, and a copy in each peer's outbox
        return 1 + len(result.get("deliveries") or ())
    return 1


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

    def charge(self, machine: str, size: int) -> None:
        """Take ``size`` bytes (at least ``MIN_COST``) from ``machine``'s bucket, which
        may go into debt (by one frame at most: ``due`` holds the next one back)."""
        bucket = self._refilled(machine)
        if bucket is None:
            if len(self._buckets) >= self._sweep_at:
                self.forget_full()
                self._sweep_at = 2 * len(self._buckets) + 1024
            bucket = self._buckets[machine] = _Bucket(self.burst, self.clock())
        bucket.level -= max(size, MIN_COST)

    def due(self, machine: str) -> float:
        """Seconds until ``machine`` is out of debt (0: its next frame may be read)."""
        bucket = self._refilled(machine)
        if bucket is None or bucket.level >= 0:
            return 0.0
        return -bucket.level / self.rate

    def _refilled(self, machine: str) -> _Bucket | None:
        bucket = self._buckets.get(machine)
        if bucket is not None:
            now = self.clock()
            bucket.level = min(self.burst, bucket.level + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        return bucket

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
