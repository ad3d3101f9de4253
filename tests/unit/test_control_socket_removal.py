"""A stopped agent leaves no control socket in its state directory: ``ControlServer.close``
removes the one ``start`` made - only that one, never a socket put there since."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from cloudremotecontrol.agent.control import ControlServer, NoAgent, call

pytestmark = pytest.mark.skipif(
    sys.platform == "win32", reason="the control server listens on a Unix socket here"
)


async def _handler(request: dict[str, Any]) -> dict[str, Any]:
    return {"op": request.get("op")}


def test_close_removes_the_control_socket(tmp_path: Path) -> None:
    async def scenario() -> None:
        server = ControlServer(tmp_path, _handler)
        await server.start()
        try:
            assert (await asyncio.to_thread(call, tmp_path, {"op": "status"}, 10.0))["op"] == (
                "status"
            )
        finally:
            await asyncio.wait_for(server.close(), 30)

    asyncio.run(scenario())
    assert not (tmp_path / "control.sock").exists()
    with pytest.raises(NoAgent):
        call(tmp_path, {"op": "status"}, 10.0)


def test_close_removes_its_own_socket_and_keeps_one_that_replaced_it(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"

    async def own() -> None:
        server = ControlServer(tmp_path, _handler)
        await server.start()
        await asyncio.wait_for(server.close(), 30)

    asyncio.run(own())
    assert not path.exists()
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    async def scenario() -> None:
        server = ControlServer(tmp_path, _handler)
        await server.start()
        try:
            path.unlink()
            other.bind(str(path))  # another process's since
        finally:
            await asyncio.wait_for(server.close(), 30)

    try:
        asyncio.run(scenario())
        assert path.is_socket()
    finally:
        other.close()
