"""The agent's own handling of what it cannot dial or use: a stream it cannot dial is
one WARNING line naming the stream and why (never an unretrieved task exception), and a
server that answers the hello with an ``error`` frame is logged with the server's reason
(one line, bounded)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from cloudremotecontrol.agent.core import Agent
from cloudremotecontrol.agent.state import AgentState, Credential
from cloudremotecontrol.agent.streams import StreamServer
from cloudremotecontrol.errors import CrcError
from cloudremotecontrol.protocol.streams import StreamOpen

PIN = "sha256:" + "ab" * 32
STREAM = "st_" + "a" * 22


def _frame() -> StreamOpen:
    return StreamOpen(stream=STREAM, kind="forward", host="127.0.0.1", port=22)


async def _garbage_server() -> tuple[asyncio.AbstractServer, int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(b"this is not HTTP\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("what", ["plain_http_with_a_pin", "not_http_at_all"])
def test_a_stream_the_agent_cannot_dial_is_one_warning_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, what: str
) -> None:
    state = AgentState(tmp_path / "agent")
    fingerprint = PIN if what == "plain_http_with_a_pin" else None
    agent = Agent(state, Credential("https://127.0.0.1:9", "crca_x", "m", "lab", fingerprint))
    unretrieved: list[Any] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: unretrieved.append(ctx))
        server, port = await _garbage_server()
        url = f"http://127.0.0.1:{port}"
        async with server:
            if what == "plain_http_with_a_pin":
                agent._streams().open(_frame(), url)  # a replica's URL, as stream.request
                await asyncio.sleep(0.2)
                await asyncio.gather(*agent._tasks)
            else:
                await StreamServer(agent).serve(_frame(), url)

    caplog.set_level(logging.WARNING)
    try:
        asyncio.run(main())
    finally:
        state.close()
    assert unretrieved == []
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    line = lines[0]
    assert line.levelno == logging.WARNING and line.exc_info is None
    text = line.getMessage()
    assert "\n" not in text
    assert STREAM in text and "could not dial" in text, text
    if what == "plain_http_with_a_pin":
        assert "plain http" in text, text


async def _refusing_server(reason: str | None, message: str) -> tuple[Any, int]:
    from websockets.asyncio.server import serve

    async def handler(ws: Any) -> None:
        await ws.recv()  # the hello
        frame = {"type": "error", "error": {"code": "unavailable", "message": message}}
        if reason is not None:
            frame["reason"] = reason
        await ws.send(json.dumps(frame))
        await ws.close(1013, "try again later")

    server = await serve(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


DOWN = "database unavailable; try again later"


@pytest.mark.parametrize(
    ("reason", "message", "shown"),
    [
        (DOWN, DOWN, DOWN),  # what a replica says during a database outage
        (None, DOWN, DOWN),  # an older server's frame: the error's message
        (None, "two\nlines\x1b[31m" + "x" * 900, "two\\nlines\\x1b[31m"),
        ("y" * 1000, "z", "yyy"),
    ],
)
def test_an_error_frame_for_the_hello_is_logged_with_the_servers_reason(
    tmp_path: Path, reason: str | None, message: str, shown: str
) -> None:
    state = AgentState(tmp_path / "agent")

    async def main() -> str:
        server, port = await _refusing_server(reason, message)
        async with server:
            agent = Agent(state, Credential(f"http://127.0.0.1:{port}", "crca_x", "m", "lab"))
            with pytest.raises(CrcError) as caught:
                await agent._session()
            return caught.value.message

    try:
        message = asyncio.run(main())
    finally:
        state.close()
    assert "'error'" in message and shown in message, message
    assert "\n" not in message and "\x1b" not in message
    assert len(message) < 400, message
