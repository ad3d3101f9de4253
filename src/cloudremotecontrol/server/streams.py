"""Live streams on this server: the pending ones, the splice of two WebSockets, and the
shell recordings.

Backpressure is end to end. The splice moves one message at a time: it receives from
one side only after the previous message was handed to the other side's socket, and
uvicorn's WebSocket protocol stops reading a socket while a received message waits
(``pause_reading``) and makes a send wait while the socket's write buffer is full. So a
reader that stops reading stops the writer at the other end, and what the server holds
per stream is bounded: per direction, one message (at most the server's frame limit,
1 MiB; senders make chunks of 256 KiB) plus the socket buffers. bench/streams.py
measures it; tests/system/test_streams.py checks it with a reader that stops.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from ..errors import CrcError
from ..protocol.streams import (
    StreamControl,
    StreamError,
    StreamExit,
    StreamResize,
    read_control,
    write_control,
)
from ..protocol.wire import Direction

__all__ = ["AGENT_DIAL_SECONDS", "Recorder", "Stream", "StreamBroker", "splice"]

log = logging.getLogger(__name__)

AGENT_DIAL_SECONDS = 20.0  # the agent has this long to dial back after stream.open
MASTER_DIAL_SECONDS = 30.0  # the master has this long to dial after its POST
MAX_RECORDING_BYTES = 64 << 20  # one recording; past it the rest is not recorded


@dataclass
class Stream:
    """One stream from its POST to its end."""

    id: str
    kind: str
    user: dict[str, Any]
    group: str
    group_id: str
    machine: str
    machine_id: str
    detail: dict[str, Any]
    record: bool = False
    record_input: bool = False
    cols: int = 80
    rows: int = 24
    agent: asyncio.Future[WebSocket] = field(default_factory=asyncio.Future)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    master_attached: bool = False
    opened: float = field(default_factory=time.time)
    to_machine: int = 0
    from_machine: int = 0
    exit_code: int | None = None
    error: str | None = None
    expiry: asyncio.TimerHandle | None = None

    def summary(self) -> dict[str, Any]:
        out = {
            **self.detail,
            "stream": self.id,
            "bytes_to_machine": self.to_machine,
            "bytes_from_machine": self.from_machine,
            "started": self.opened,
            "duration": round(time.time() - self.opened, 3),
        }
        if self.exit_code is not None:
            out["exit_code"] = self.exit_code
        if self.error is not None:
            out["error"] = self.error
        return out


class StreamBroker:
    """The streams this replica serves, by id."""

    def __init__(self, recordings: Path | None) -> None:
        self.streams: dict[str, Stream] = {}
        self.recordings = recordings

    def add(self, stream: Stream) -> None:
        self.streams[stream.id] = stream
        loop = asyncio.get_running_loop()
        stream.expiry = loop.call_later(MASTER_DIAL_SECONDS, self._expire, stream.id)

    def _expire(self, stream_id: str) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None and not stream.master_attached:
            self.remove(stream)

    def remove(self, stream: Stream) -> None:
        if stream.expiry is not None:
            stream.expiry.cancel()
        if self.streams.get(stream.id) is stream:
            del self.streams[stream.id]
        if not stream.agent.done():
            stream.agent.cancel()
        stream.done.set()

    def recording_path(self, stream_id: str) -> Path | None:
        return None if self.recordings is None else self.recordings / f"{stream_id}.cast"

    def prune(self, days: float) -> int:
        """Forget recordings older than ``days`` (0: keep them for ever)."""
        if self.recordings is None or days <= 0 or not self.recordings.is_dir():
            return 0
        before = time.time() - days * 86400
        gone = 0
        for path in self.recordings.glob("st_*.cast"):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < before:
                    path.unlink()
                    gone += 1
        return gone


class Recorder:
    """A shell session in asciinema's v2 format (a header line, then one JSON array
    per event: ``[seconds, "o", text]`` output, ``"i"`` input, ``"r"`` resize).

    Bytes that are not UTF-8 are kept as surrogate escapes (``\\udcXX`` in JSON), so
    :func:`replay_bytes` gives back exactly the bytes the terminal sent."""

    def __init__(self, path: Path, stream: Stream, record_input: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.file = path.open("w", encoding="ascii")
        self.start = time.monotonic()
        self.size = 0
        self.record_input = record_input
        self._out = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self._in = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        header = {
            "version": 2,
            "width": stream.cols,
            "height": stream.rows,
            "timestamp": int(stream.opened),
            "title": f"{stream.group}/{stream.machine}",
            "env": {"TERM": str(stream.detail.get("term") or "xterm-256color")},
        }
        self._line(header)

    def _line(self, value: object) -> None:
        if self.size > MAX_RECORDING_BYTES:
            return
        text = json.dumps(value) + "\n"
        self.size += len(text)
        self.file.write(text)

    def _event(self, kind: str, text: str) -> None:
        if text:
            self._line([round(time.monotonic() - self.start, 6), kind, text])

    def output(self, data: bytes) -> None:
        self._event("o", self._out.decode(data))

    def input(self, data: bytes) -> None:
        if self.record_input:
            self._event("i", self._in.decode(data))

    def resize(self, cols: int, rows: int) -> None:
        self._event("r", f"{cols}x{rows}")

    def close(self) -> None:
        self._event("o", self._out.decode(b"", final=True))
        self.file.close()


def replay_bytes(cast: str, kind: str = "o") -> bytes:
    """The bytes of a recording's ``kind`` events, exactly as they were sent."""
    out = bytearray()
    for line in cast.splitlines()[1:]:
        event = json.loads(line)
        if isinstance(event, list) and len(event) == 3 and event[1] == kind:
            out += str(event[2]).encode("utf-8", "surrogateescape")
    return bytes(out)


Send = Callable[[str], Awaitable[None]]


async def _error(ws: WebSocket, code: str, message: str) -> None:
    with contextlib.suppress(Exception):
        await ws.send_text(write_control(StreamError(code=code, message=message)))


async def splice(master: WebSocket, agent: WebSocket, stream: Stream, rec: Recorder | None) -> None:
    """Carry messages both ways until either side closes (the caller closes both, after
    it has recorded the stream's end)."""

    async def from_machine() -> None:
        while True:
            message = await agent.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is not None:
                stream.from_machine += len(data)
                if rec is not None:
                    rec.output(data)
                await master.send_bytes(data)
                continue
            try:
                control = read_control(message.get("text") or "", Direction.TO_SERVER)
            except CrcError as exc:
                stream.error = f"the machine sent an unusable control message: {exc.message}"
                await _error(master, "protocol", stream.error)
                return
            if isinstance(control, StreamExit):
                stream.exit_code = control.code
            elif isinstance(control, StreamError):
                stream.error = control.message
            await master.send_text(write_control(control))

    async def to_machine() -> None:
        while True:
            message = await master.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is not None:
                stream.to_machine += len(data)
                if rec is not None:
                    rec.input(data)
                await agent.send_bytes(data)
                continue
            try:
                control: StreamControl = read_control(message.get("text") or "", Direction.TO_AGENT)
            except CrcError as exc:
                await _error(master, exc.code, exc.message)
                continue
            if isinstance(control, StreamResize) and rec is not None:
                rec.resize(control.cols, control.rows)
            await agent.send_text(write_control(control))

    tasks = [asyncio.create_task(from_machine()), asyncio.create_task(to_machine())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(
                asyncio.CancelledError, WebSocketDisconnect, RuntimeError, OSError
            ):
                await task


async def close_ends(*ends: WebSocket | None) -> None:
    """Close each end of a stream that is there (one already closed is no error)."""
    for ws in ends:
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close(1000)
