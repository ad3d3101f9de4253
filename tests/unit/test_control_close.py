"""The agent's control server (``agent/control.py``) over a real Unix socket: a request
whose handler fails in a way nobody planned gets an answer at once, and a stopping agent
ends the requests still waiting (their clients see the connection close) instead of
waiting for them, which from Python 3.12.1 on would hold ``close`` for as long as they
wait (``Server.wait_closed`` waits for every connection)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

from cloudremotecontrol.agent.control import ControlServer, call
from cloudremotecontrol.errors import CrcError

pytestmark = pytest.mark.skipif(
    sys.platform == "win32", reason="the control server listens on a Unix socket here"
)


class Handler:
    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self.cancelled = False

    async def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "wait-message":
            self.waiting.set()
            try:
                await asyncio.Event().wait()  # nothing ever comes
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        if op == "status":
            raise RuntimeError("the state database went away")
        if op == "peers":
            return {"n": int(request.get("newer_than"))}  # type: ignore[arg-type]
        return {}


def test_a_request_whose_handler_fails_gets_an_answer_at_once(tmp_path: Path) -> None:
    handler = Handler()

    async def scenario() -> None:
        server = ControlServer(tmp_path, handler)
        await server.start()
        try:
            for request, status in (({"op": "status"}, 500), ({"op": "peers"}, 400)):
                with pytest.raises(CrcError) as failed:
                    await asyncio.to_thread(call, tmp_path, request, 10.0)
                assert failed.value.http_status == status, (request, failed.value.message)
                assert "Traceback" not in failed.value.message
        finally:
            await asyncio.wait_for(server.close(), 30)

    asyncio.run(scenario())


def test_stopping_ends_the_requests_still_waiting(tmp_path: Path) -> None:
    handler = Handler()

    async def scenario() -> None:
        server = ControlServer(tmp_path, handler)
        await server.start()
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "control.sock"))
        try:
            writer.write(b'{"op": "wait-message"}\n')
            await writer.drain()
            await asyncio.wait_for(handler.waiting.wait(), 30)
            await asyncio.wait_for(server.close(), 30)  # a safety net, not a measurement
            # The loop still runs: the connection was ended by close, not by the exit.
            assert await asyncio.wait_for(reader.read(), 30) == b""
            assert handler.cancelled
        finally:
            writer.close()

    asyncio.run(scenario())
