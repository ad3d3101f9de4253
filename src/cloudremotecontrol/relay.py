"""Both directions of a carried connection (a forward's), ended together.

Each direction is a coroutine that returns True when its sender shut down its side
cleanly (an EOF passed on as a half-close, after which the other direction goes on) and
False when the whole connection is over (the stream closed, or a peer that cannot
half-close). The connection ends when both directions ended cleanly, or at once when one
ends otherwise or fails. Used by the agent and the master alike.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

__all__ = ["carry_both_ways"]

log = logging.getLogger(__name__)


async def carry_both_ways(*directions: Coroutine[Any, Any, bool]) -> None:
    """Run ``directions`` until all ended with True, or one with False or an error;
    then cancel the rest. A failure other than the connection's own is logged."""
    pending = {asyncio.ensure_future(d) for d in directions}
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if not all([_half_closed(task) for task in done]):  # each one looked at
                return
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def _closed(exc: BaseException) -> bool:
    """Whether ``exc`` is the stream's WebSocket closing (by either end, the server's
    included, as when the master token was revoked): the connection's end, not a
    failure."""
    from websockets.exceptions import ConnectionClosed

    return isinstance(exc, ConnectionClosed)


def _half_closed(task: asyncio.Future[bool]) -> bool:
    if task.cancelled():
        return False
    exc = task.exception()
    if exc is not None:
        if not isinstance(exc, (ConnectionError, OSError)) and not _closed(exc):
            # Said as words (never a Python repr): what failed, and why.
            log.warning("stream failed: %s: %s", type(exc).__name__, exc)
        return False
    return bool(task.result())
