"""Blocking work that may never end (a read of a file that does not answer), off the
event loop and out of its default executor."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["in_daemon_thread"]

_T = TypeVar("_T")


def in_daemon_thread(fn: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
    """``fn(*args)`` in a daemon thread of its own, as a future of the running loop.
    Unlike ``asyncio.to_thread``, a call that never returns holds no thread of the
    loop's executor (which other work needs, and ``asyncio.run`` waits for when it
    ends); cancelling the future lets the call be, its result dropped."""
    done: concurrent.futures.Future[_T] = concurrent.futures.Future()

    def run() -> None:
        if not done.set_running_or_notify_cancel():
            return
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 -- handed to the awaiting side
            done.set_exception(exc)
        else:
            done.set_result(result)

    threading.Thread(target=run, name=f"crc-{getattr(fn, '__name__', 'call')}", daemon=True).start()
    return asyncio.wrap_future(done)
