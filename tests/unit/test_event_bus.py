"""The event bus (``hub.EventBus``): a group's followers are woken at once after a quiet
spell, at most once per interval while commits keep coming, and never left without a
wake-up after a commit."""

from __future__ import annotations

import asyncio

from cloudremotecontrol.server.hub import EventBus
from cloudremotecontrol.server.store.base import ALL_GROUPS


def test_a_quiet_group_is_woken_at_once() -> None:
    async def main() -> None:
        bus = EventBus(interval=60.0)
        bus.loop = asyncio.get_running_loop()
        with bus.subscribe("g") as wake, bus.subscribe("h") as other:
            bus.notify({"g"})
            assert wake.is_set() and not other.is_set()
            assert (bus.wakeups, bus.deferred) == (1, 0)

    asyncio.run(main())


def test_commits_within_the_interval_fold_into_one_later_wake_up() -> None:
    async def main() -> None:
        bus = EventBus(interval=1.0)
        bus.loop = asyncio.get_running_loop()
        with bus.subscribe("g") as wake, bus.subscribe("h") as other:
            await asyncio.to_thread(bus.notify_threadsafe, {"g"})  # a writer thread's
            await asyncio.wait_for(wake.wait(), 30)
            assert (bus.wakeups, bus.deferred) == (1, 0)
            wake.clear()  # the follower reads; meanwhile more commits come
            bus.notify({"g"})
            bus.notify({"g"})
            assert not wake.is_set() and bus.deferred == 2
            # The commits after the last read still lead to one more read.
            await asyncio.wait_for(wake.wait(), 30)
            assert bus.wakeups == 2 and not other.is_set()

    asyncio.run(main())


def test_all_groups_wakes_every_followed_group_and_leaving_cancels_a_due_wake_up() -> None:
    async def main() -> None:
        bus = EventBus(interval=60.0)
        bus.loop = asyncio.get_running_loop()
        with bus.subscribe("g") as wake_g:
            with bus.subscribe("h") as wake_h:
                bus.notify({ALL_GROUPS})
                assert wake_g.is_set() and wake_h.is_set()
                wake_h.clear()
                bus.notify({"h"})  # due in a minute
                assert not wake_h.is_set() and bus.deferred == 1
            # "h" has no followers left: nothing is kept for it.
            assert bus.notify({"h"}) is None and bus.deferred == 1
            assert not bus._due  # its due wake-up was cancelled

    asyncio.run(main())
