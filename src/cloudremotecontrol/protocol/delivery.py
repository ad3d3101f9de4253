"""Sequence numbers, acks and resume: the at-least-once half of delivery.

Why it works: each side numbers the messages it sends (1, 2, 3, ...) and keeps every
message until the peer acknowledges it. Acks are cumulative ("I have durably processed
everything up to N"), so a lost ack is repaired by the next one. After a reconnect each
side tells the other the highest number it processed (``hello.ack`` / ``welcome.ack``)
and the other replays what follows. That is at-least-once; *exactly*-once effects come
from the receiver: it ignores any seq it has already processed (``Inbox``), and the agent
additionally remembers job ids it started, so a job runs at most once per target even if
the server re-sends it under a new sequence number.

The objects here hold no I/O: the caller persists ``Outbox`` entries and the ``Inbox``
high-water mark before acknowledging (the durability half).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum
from typing import Any

__all__ = ["Inbox", "Outbox", "Receipt"]


class Receipt(str, Enum):
    NEW = "new"  # process it, then ack
    DUPLICATE = "duplicate"  # already processed: ack again, do nothing else
    GAP = "gap"  # a message before it is missing: do not process; the peer will replay


@dataclass
class Inbox:
    """Receiver side: the highest sequence number processed so far."""

    processed: int = 0

    def receive(self, seq: int) -> Receipt:
        if seq <= self.processed:
            return Receipt.DUPLICATE
        if seq != self.processed + 1:
            return Receipt.GAP
        return Receipt.NEW

    def mark_processed(self, seq: int) -> None:
        """Call after the message's effects are durable; the next ack carries ``seq``."""
        if seq != self.processed + 1:
            raise ValueError(f"processed {seq} out of order after {self.processed}")
        self.processed = seq


class Outbox:
    """Sender side: numbered messages kept until acknowledged."""

    def __init__(self, next_seq: int = 1) -> None:
        self._next = next_seq
        self._pending: OrderedDict[int, Any] = OrderedDict()

    @property
    def next_seq(self) -> int:
        return self._next

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, payload: Any) -> int:
        seq = self._next
        self._next += 1
        self._pending[seq] = payload
        return seq

    def restore(self, seq: int, payload: Any) -> None:
        """Reload an unacknowledged message kept on disk (in ascending order)."""
        self._pending[seq] = payload
        self._next = max(self._next, seq + 1)

    def ack(self, seq: int) -> list[int]:
        """Drop everything up to ``seq``; return the sequence numbers dropped."""
        done = [s for s in self._pending if s <= seq]
        for s in done:
            del self._pending[s]
        return done

    def replay(self, peer_ack: int) -> list[tuple[int, Any]]:
        """After (re)connecting: what to send again, given the peer's ``ack``."""
        self.ack(peer_ack)
        return list(self._pending.items())
