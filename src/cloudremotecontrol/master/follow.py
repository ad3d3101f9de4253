"""Following a group's events with a deadline of one's own.

The server's event stream says nothing between events but a keepalive comment after
each ``events_keepalive`` seconds of silence (5 s by default). A follower that looks at
its deadline only when the stream says something ends up to that long after it: a
``wait:`` step of ``timeout: 1s`` that waits for a message nobody sends failed after 5 s.

``follow_events`` reads the stream on a thread of its own, with a client of its own (a
client is not shared across threads here), and hands the events over through a queue:
the follower gets an event as soon as it arrives and ``None`` at least every ``tick``
seconds whatever arrives, so it can check its deadline and Ctrl-C on time. When the
follower stops, the reader ends at the stream's next event or keepalive, or at once if
the stream is broken (``Client.halt``: it does not go on reconnecting), and closes its
client. When the client whose wait it is gets closed (``Client.close``), the reader's
connection is shut down too: it ends at once.

The SDK's waits (``Client.wait_ready``, ``wait_messages``), ``crc wait`` and the scenario
runner's waits all follow this way.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import Client

__all__ = ["follow_events"]

TICK = 0.2

_END = object()


def follow_events(
    client_factory: Callable[[], Client],
    group: str,
    since: int,
    types: tuple[str, ...] = (),
    tick: float = TICK,
) -> Iterator[Any]:
    """The events of ``group`` after cursor ``since`` (``types`` only) as they come, and
    ``None`` after each ``tick`` seconds without one. Ends when the stream ends (the group
    was deleted); raises what reading it raised (``Unavailable``...)."""
    items: queue.SimpleQueue[Any] = queue.SimpleQueue()
    stop = threading.Event()
    readers: list[Client] = []

    def read() -> None:
        try:
            with client_factory() as c:
                readers.append(c)
                if stop.is_set():
                    return
                for ev in c.events(group, since=since, follow=True, keepalive=True, types=types):
                    if stop.is_set():
                        return
                    if ev is not None:
                        items.put(ev)
            items.put(_END)
        except Exception as exc:  # noqa: BLE001 -- handed to the follower, raised there
            items.put(exc)

    reader = threading.Thread(target=read, name=f"crc-follow-{group}", daemon=True)
    reader.start()
    try:
        while True:
            try:
                item = items.get(timeout=tick)
            except queue.Empty:
                yield None
                continue
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        stop.set()
        for c in readers:
            c.halt()
