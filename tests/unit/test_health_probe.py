"""``GET /v1/health`` asks the database at most once per ``HEALTH_PROBE_EVERY``, one
probe at a time, however often it is called (anyone may call it), and a probe the
database does not answer counts as down after ``HEALTH_PROBE_WAIT``. Run on the real
``api._database_problem`` with a store that counts its reads."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from cloudremotecontrol.errors import Unavailable
from cloudremotecontrol.server import api


class CountingStore:
    def __init__(self, answer: float = 0.0, down: bool = False) -> None:
        self.reads = 0
        self.answer, self.down = answer, down

    async def read(self, op: Any, *args: Any) -> Any:
        self.reads += 1
        await asyncio.sleep(self.answer)
        if self.down:
            raise Unavailable("the server's database is unavailable; try again later")
        return {"one": 1}


def _request(store: CountingStore) -> Any:
    return SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(store=store)))


def test_a_flood_of_health_calls_costs_one_probe_per_interval() -> None:
    async def main() -> None:
        store = CountingStore(answer=0.05)
        request = _request(store)
        found = await asyncio.gather(*(api._database_problem(request) for _ in range(500)))
        assert found == [None] * 500 and store.reads == 1
        for _ in range(50):  # within the interval: the same finding, no new probe
            assert await api._database_problem(request) is None
        assert store.reads == 1
        await asyncio.sleep(api.HEALTH_PROBE_EVERY + 0.05)
        assert await api._database_problem(request) is None
        assert store.reads == 2

    asyncio.run(main())


def test_a_database_that_fails_or_does_not_answer_is_reported() -> None:
    async def main() -> None:
        down = _request(CountingStore(down=True))
        assert "unavailable" in str(await api._database_problem(down))
        slow = CountingStore(answer=api.HEALTH_PROBE_WAIT + 5)
        request = _request(slow)
        calls = [api._database_problem(request) for _ in range(20)]
        found = await asyncio.wait_for(asyncio.gather(*calls), api.HEALTH_PROBE_WAIT + 2)
        assert all("did not answer within" in str(f) for f in found), found
        assert slow.reads == 1  # the probe still running is not started again
        request.app.state.health_probe[1].cancel()

    asyncio.run(main())
