"""``AsyncClient``'s waits end at their deadline with the wait's own error, also where
asyncio wakes a timer up to a clock tick early (Windows' clock ticks every 15.6 ms),
and a ``TimeoutError`` of the work's own is not taken for the wait's."""

from __future__ import annotations

import asyncio
import time

import pytest

from cloudremotecontrol.errors import Unavailable
from cloudremotecontrol.master.aclient import _until


class WaitOver(Exception):
    pass


def _over() -> Exception:
    return WaitOver("the wait's own timeout")


async def _forever() -> None:
    await asyncio.Event().wait()


async def _tick() -> None:
    while True:
        await asyncio.sleep(0.02)


def test_a_timer_woken_a_tick_early_still_ends_the_wait_with_its_own_error() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop._clock_resolution = 0.5  # type: ignore[attr-defined]  # a coarse clock, widened
        ticking = asyncio.ensure_future(_tick())  # wakes the loop meanwhile
        try:
            with pytest.raises(WaitOver):
                await _until(time.monotonic() + 0.6, _forever(), _over)
        finally:
            ticking.cancel()

    asyncio.run(main())


def test_the_works_own_timeout_error_is_raised_as_it_is() -> None:
    async def times_out() -> None:
        raise TimeoutError("the work's own")

    async def main() -> None:
        with pytest.raises(TimeoutError, match="the work's own"):
            await _until(time.monotonic() + 30, times_out(), _over)

    asyncio.run(main())


def test_the_works_result_is_returned_and_an_unfinished_work_is_cancelled() -> None:
    cancelled = asyncio.Event()

    async def answer() -> int:
        return 42

    async def hangs() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def main() -> None:
        assert await _until(time.monotonic() + 30, answer(), _over) == 42
        with pytest.raises(Unavailable):
            await _until(time.monotonic() + 0.05, hangs(), lambda: Unavailable("late"))
        assert cancelled.is_set()

    asyncio.run(main())


def test_a_caller_cancelled_while_the_work_ends_stays_cancelled() -> None:
    async def slow_to_end() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(0.5)  # closing its stream, say
            raise

    async def main() -> None:
        waiting = asyncio.ensure_future(_until(time.monotonic() + 0.05, slow_to_end(), _over))
        await asyncio.sleep(0.25)  # past the deadline: the work is being ended
        assert not waiting.done()
        waiting.cancel()  # Ctrl-C, a task group's cancel
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(main())
