"""The frame a paced connection reads ahead while its machine is in debt
(``server/agent_ws.py`` ``_next_frame``): a read that fails as the wait ends for
another reason (the connection replaced, the server stopping) is seen, not left for
asyncio to log as a task exception never retrieved."""

from __future__ import annotations

import asyncio
import gc
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.websockets import WebSocketDisconnect

from cloudremotecontrol.server.agent_ws import _next_frame
from cloudremotecontrol.server.pacing import Paces


class _Socket:
    """A socket whose read fails (the machine went away) just as ``ends`` happens."""

    def __init__(self, link: Any, bus: Any, ends: str) -> None:
        self.app = SimpleNamespace(state=SimpleNamespace(bus=bus))
        self.link, self.bus, self.ends = link, bus, ends

    async def receive_text(self) -> str:
        await asyncio.sleep(0.05)
        if self.ends == "replaced":
            self.link.closed = True
        else:
            self.bus.stopping = True
        raise WebSocketDisconnect(1006)


@pytest.mark.parametrize("ends", ["replaced", "stopping"])
def test_a_read_ahead_that_failed_is_retrieved_when_the_wait_ends(ends: str) -> None:
    unretrieved: list[str] = []

    async def run() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, context: unretrieved.append(str(context.get("message")))
        )
        paces = Paces(rate=1, burst=1024)
        paces.charge("a", 10_000)  # hours of debt: the wait ends only for another reason
        link = SimpleNamespace(closed=False)
        bus = SimpleNamespace(stopping=False)
        socket = _Socket(link, bus, ends)
        assert await _next_frame(socket, paces, "a", link) is None  # type: ignore[arg-type]
        assert link.closed or bus.stopping  # the read failed as the wait ended
        gc.collect()  # the read's task, with its failure, is gone
        await asyncio.sleep(0)

    asyncio.run(run())
    assert unretrieved == []
