"""Sequence numbers, acks, resume, dedupe and poison messages: the rules of delivery,
once, for both ends. The agent (SQLite in its state dir, ``agent/state.py``) and the
server (its store, ``server/ops/delivery.py``) each implement the two small storage
interfaces below and run these rules; nothing here does I/O.

Why it works: each side numbers the messages it sends (1, 2, 3, ...) and keeps every
message until the peer acknowledges it. Acks are cumulative ("I have durably processed
everything up to N"), so a lost ack is repaired by the next one. After a reconnect each
side tells the other the highest number it processed (``hello.ack`` / ``welcome.ack``)
and the other replays what follows. That is at-least-once; *exactly*-once effects come
from the receiver: it ignores any seq it has already processed (``Inbox``), and the agent
additionally remembers job ids it started, so a job runs at most once per target even if
the server re-sends it under a new sequence number.

Rolled-back state (a database restored from a backup, a VM restored from a snapshot)
can make the two sides disagree, and each case has one rule:

* the peer acknowledges more than this side ever numbered (``Outbox.peer_acked``): this
  side continues its numbering after the peer's ack and renumbers what it still holds,
  else the peer would drop those messages as duplicates. An ack beyond
  ``MAX_PEER_ACK`` is refused instead: no restored state is that far behind, and
  numbering after it would leave no numbers for the messages to come;
* the peer's first message still available (``resume_from``) is beyond what this side
  processed (``Inbox.resume``): the messages in between were acknowledged by the lost
  state and are gone; this side skips to there instead of waiting for them for ever.
  A ``resume_from`` beyond ``MAX_PEER_ACK + 1`` is refused, for the same reason as such
  an ack: this side would record nearly every number as processed, and take every
  message of the peer that numbers from where it really is for a duplicate.

Poison messages: a message the receiver cannot use must not stall the stream. One that
cannot be decoded is given up at once; one whose processing fails (or kills the
receiver: attempts are counted before processing where a crash is possible) is tried
again after a reconnect, and given up after ``MAX_ATTEMPTS``. A message given up (a
dead letter) is marked processed and acknowledged with no effect, and reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Generic, Protocol, TypeVar

from ..errors import InvalidInput
from .fields import MAX_SEQ

__all__ = [
    "MAX_ATTEMPTS",
    "MAX_PEER_ACK",
    "Inbox",
    "InboxStore",
    "Outbox",
    "OutboxStore",
    "Receipt",
    "Resync",
    "Verdict",
]

MAX_ATTEMPTS = 3
# The highest peer ack this side numbers after: as many numbers stay free after it.
MAX_PEER_ACK = MAX_SEQ // 2
T_contra = TypeVar("T_contra", contravariant=True)
T = TypeVar("T")


class Receipt(str, Enum):
    NEW = "new"  # process it, then ack
    DUPLICATE = "duplicate"  # already processed: ack again, do nothing else
    GAP = "gap"  # a message before it is missing: do not process; the peer will replay
    DEAD = "dead"  # it failed MAX_ATTEMPTS times: give it up (dead letter), then ack


class Verdict(str, Enum):
    RETRY = "retry"  # do not ack; reconnect, and the peer replays it
    DEAD = "dead"  # give it up (dead letter), then ack
    DONE = "done"  # it was processed after all (its failure came after): nothing to do


@dataclass(frozen=True)
class Resync:
    """The peer acknowledged ``peer_ack`` though this side numbered only up to ``last``:
    numbering continues after ``peer_ack``; ``renumbered`` messages moved there."""

    peer_ack: int
    last: int
    renumbered: int


class OutboxStore(Protocol[T_contra]):
    """What a sender keeps durably. Called inside the caller's transaction."""

    def take_seq(self) -> int:
        """Reserve and return the next sequence number (the last one + 1), atomically."""

    def last_seq(self) -> int:
        """The highest sequence number reserved so far (0: none)."""

    def skip_to(self, last: int) -> None:
        """Make ``last`` the highest reserved number (the next is ``last + 1``)."""

    def put(self, seq: int, item: T_contra) -> str:
        """Keep ``item`` as message ``seq`` until acknowledged; return its frame text."""

    def drop_through(self, seq: int) -> int:
        """Forget every kept message numbered ``seq`` or less (acknowledged); return how
        many there were."""

    def pending(self, after: int, limit: int) -> list[tuple[int, str]]:
        """Kept messages numbered above ``after``, in order, at most ``limit``."""

    def oldest(self) -> int | None:
        """The lowest kept sequence number, or None."""

    def renumber(self, old: int, new: int) -> None:
        """Give kept message ``old`` the number ``new`` (higher than every other)."""


class InboxStore(Protocol):
    """What a receiver keeps durably. Called inside the caller's transaction."""

    def processed(self) -> int:
        """The highest sequence number processed (0: none)."""

    def set_processed(self, seq: int) -> None:
        """Record ``seq`` as processed, in the transaction of its effects."""

    def attempts(self, seq: int) -> int:
        """Failed (or unfinished) attempts at processing ``seq``."""

    def add_attempt(self, seq: int) -> int:
        """Count one more attempt at ``seq`` (forgetting other seqs'); return the count."""


class Outbox(Generic[T]):
    """Sender side: numbered messages kept until acknowledged."""

    def __init__(self, store: OutboxStore[T]) -> None:
        self.store = store

    def add(self, item: T) -> tuple[int, str]:
        """Number ``item`` and keep it; return ``(seq, frame text)``."""
        seq = self.store.take_seq()
        return seq, self.store.put(seq, item)

    def ack(self, seq: int) -> int:
        """The peer processed everything up to ``seq`` (a cumulative ack); returns how
        many kept messages that released."""
        if seq > self.store.last_seq():
            raise InvalidInput(f"ack {seq} for a message never sent")
        return self.store.drop_through(seq)

    def peer_acked(self, peer_ack: int) -> Resync | None:
        """After (re)connecting: the peer's ``hello.ack``/``welcome.ack``. Drops what it
        acknowledges; an ack beyond anything numbered here renumbers (see module doc)."""
        last = self.store.last_seq()
        if peer_ack <= last:
            self.store.drop_through(peer_ack)
            return None
        if peer_ack > MAX_PEER_ACK:
            raise InvalidInput(
                f"ack {peer_ack} is beyond any message sent (this side numbered {last}; "
                f"an ack above {MAX_PEER_ACK} is refused)"
            )
        kept = self.store.pending(0, 2**31)
        self.store.skip_to(peer_ack)
        for old, _ in kept:
            self.store.renumber(old, self.store.take_seq())
        return Resync(peer_ack=peer_ack, last=last, renumbered=len(kept))

    def replay(self, after: int, limit: int = 500) -> list[tuple[int, str]]:
        """What to send (again) to a peer that processed up to ``after``."""
        return self.store.pending(after, limit)

    def resume_from(self) -> int:
        """The first message this side can still send: the oldest kept, else the next."""
        oldest = self.store.oldest()
        return oldest if oldest is not None else self.store.last_seq() + 1


class Inbox:
    """Receiver side: the highest sequence number processed, and failed attempts."""

    def __init__(self, store: InboxStore, max_attempts: int = MAX_ATTEMPTS) -> None:
        self.store = store
        self.max_attempts = max_attempts
        self._begun: set[int] = set()

    @property
    def processed(self) -> int:
        return self.store.processed()

    def receive(self, seq: int) -> Receipt:
        done = self.store.processed()
        if seq <= done:
            return Receipt.DUPLICATE
        if seq != done + 1:
            return Receipt.GAP
        if self.store.attempts(seq) >= self.max_attempts:
            return Receipt.DEAD
        return Receipt.NEW

    def begin(self, seq: int) -> None:
        """Count an attempt *before* processing ``seq``, where processing could kill the
        receiver (so that a message that crashes it every time is given up)."""
        self.store.add_attempt(seq)
        self._begun.add(seq)

    def done(self, seq: int) -> None:
        """``seq`` is processed (or given up): call in the transaction of its effects;
        the next ack carries ``seq``."""
        done = self.store.processed()
        if seq != done + 1:
            raise ValueError(f"processed {seq} out of order after {done}")
        self.store.set_processed(seq)
        self._begun.discard(seq)

    def failed(self, seq: int) -> Verdict:
        """Processing ``seq`` failed (an error, not bad input): retry or give up?"""
        if self.store.processed() >= seq:
            self._begun.discard(seq)
            return Verdict.DONE
        if seq in self._begun:
            self._begun.discard(seq)
            count = self.store.attempts(seq)
        else:
            count = self.store.add_attempt(seq)
        return Verdict.DEAD if count >= self.max_attempts else Verdict.RETRY

    def resume(self, resume_from: int | None) -> int:
        """The peer's first available message is ``resume_from``: skip what it can no
        longer send. Returns how many messages were lost (0: none). InvalidInput, with
        nothing changed, for one beyond ``MAX_PEER_ACK + 1`` (see the module doc)."""
        done = self.store.processed()
        if resume_from is None or resume_from <= done + 1:
            return 0
        if resume_from > MAX_PEER_ACK + 1:
            raise InvalidInput(
                f"resume_from {resume_from} is beyond any message sent (this side processed "
                f"{done}; one above {MAX_PEER_ACK + 1} is refused)"
            )
        self.store.set_processed(resume_from - 1)
        return resume_from - 1 - done
