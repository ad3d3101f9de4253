"""Run writes in one write batch of a store (either backend): its writer is held on a
first op while they queue, then released."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from cloudremotecontrol.server.store.base import Store, Tx


async def in_one_batch(store: Store, writes: list[tuple[Any, ...]]) -> list[Any]:
    """Run ``writes`` (``(op, *args)``) in one write batch; each one's result or
    exception, in order."""
    started, release = threading.Event(), threading.Event()

    def hold(tx: Tx) -> None:
        started.set()
        release.wait(30)

    first = asyncio.ensure_future(store.write(hold))
    assert await asyncio.to_thread(started.wait, 30)
    queued = [asyncio.ensure_future(store.write(*w)) for w in writes]
    await asyncio.sleep(0.1)  # every write is in the queue
    release.set()
    await first
    return list(await asyncio.gather(*queued, return_exceptions=True))
