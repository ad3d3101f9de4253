"""Live streams on this server: the pending ones, and the splice of two WebSockets
(recordings: server/recorder.py).

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
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from ..errors import CrcError
from ..protocol.streams import (
    MAX_CONTROL_BYTES,
    StreamControl,
    StreamError,
    StreamExit,
    StreamResize,
    read_control,
    write_control,
)
from ..protocol.wire import Direction
from ..terminal import safe
from .recorder import Recorder

__all__ = ["AGENT_DIAL_SECONDS", "Stream", "StreamBroker", "revoked_message", "splice"]

log = logging.getLogger(__name__)

AGENT_DIAL_SECONDS = 20.0  # the agent has this long to dial back after stream.open
MASTER_DIAL_SECONDS = 30.0  # the master has this long to dial after its POST


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
    #: The ``stream.error`` code that ended it (``start_failed``, ...), if one did.
    error_code: str | None = None
    expiry: asyncio.TimerHandle | None = None
    #: Set by the server to end the stream (``StreamBroker.end_machines``): the
    #: ``(code, message)`` of the ``stream.error`` the master is told.
    ended: asyncio.Future[tuple[str, str]] = field(default_factory=asyncio.Future)

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
        if self.error_code is not None:
            out["error_code"] = self.error_code
        return out


class StreamBroker:
    """The streams this replica serves, by id."""

    def __init__(
        self,
        recordings: Path | None,
        on_expired: Callable[[Stream], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self.streams: dict[str, Stream] = {}
        self.recordings = recordings
        self.on_expired = on_expired  # writes the end of a stream its master never dialled
        self._ending: set[asyncio.Task[None]] = set()

    def add(self, stream: Stream) -> None:
        self.streams[stream.id] = stream
        loop = asyncio.get_running_loop()
        stream.expiry = loop.call_later(MASTER_DIAL_SECONDS, self._expire, stream.id)

    def _expire(self, stream_id: str) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.master_attached:
            return
        self.remove(stream)
        if self.on_expired is not None:
            stream.error = f"the master did not connect within {MASTER_DIAL_SECONDS:g} s"
            stream.error_code = "master_absent"
            task = asyncio.get_running_loop().create_task(self.on_expired(stream))
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)

    def remove(self, stream: Stream) -> None:
        if stream.expiry is not None:
            stream.expiry.cancel()
        if self.streams.get(stream.id) is stream:
            del self.streams[stream.id]
        if not stream.agent.done():
            stream.agent.cancel()
        stream.done.set()

    def machine_ids(self) -> set[str]:
        """The machines of the streams open on this replica."""
        return {stream.machine_id for stream in self.streams.values()}

    def end_machines(self, machine_ids: Iterable[str], reason: str) -> int:
        """End the open streams of these machines (revoked: ``reason`` says why), at
        once: each master is told (``machine_revoked``), its splice ends, the agent's
        end is closed. Returns how many were ended."""
        ids = set(machine_ids)
        n = 0
        for stream in list(self.streams.values()):
            if stream.machine_id in ids and not stream.ended.done():
                stream.ended.set_result(("machine_revoked", revoked_message(stream, reason)))
                n += 1
        return n

    def recording_path(self, stream_id: str) -> Path | None:
        """Where an older version of the server kept a recording (recordings are in the
        database now: ops/recordings.py); such files are still served, and pruned."""
        return None if self.recordings is None else self.recordings / f"{stream_id}.cast"

    def prune(self, days: float) -> int:
        """Forget recordings on disk older than ``days`` (0: keep them for ever)."""
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


Send = Callable[[str], Awaitable[None]]


def revoked_message(stream: Stream, reason: str) -> str:
    """What the master of ``stream`` is told when its machine is revoked (``reason``:
    what ``Hub.revoke`` was given, e.g. "group 'lab' deleted")."""
    what = "session" if stream.kind == "shell" else "connection"
    why = "" if reason in ("", "machine revoked") else f": {reason}"
    return f"machine {stream.machine!r} is revoked{why}; the {what} is closed"


async def _error(ws: WebSocket, code: str, message: str) -> None:
    with contextlib.suppress(Exception):
        await ws.send_text(write_control(StreamError(code=code, message=message)))


def _escaped_error(text: str) -> StreamError | None:
    """A ``stream.error`` refused only for a control character in its message (an
    older agent put a program's name in it as given): the same error with its control
    characters escaped, so that a failure of the session is told as what it is. None
    for anything else."""
    if len(text) > MAX_CONTROL_BYTES:
        return None
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):  # hostile: nested deeper than json parses
        return None
    if not isinstance(body, dict) or body.get("type") != StreamError.TYPE:
        return None
    message = body.get("message")
    if not isinstance(message, str):
        return None
    try:
        control = read_control(json.dumps(body | {"message": safe(message)}), Direction.TO_SERVER)
    except CrcError:
        return None
    return control if isinstance(control, StreamError) else None


async def splice(master: WebSocket, agent: WebSocket, stream: Stream, rec: Recorder | None) -> None:
    """Carry messages both ways until either side closes (the caller closes both, after
    it has recorded the stream's end)."""

    async def from_machine() -> None:
        while True:
            message = await agent.receive()
            if message["type"] == "websocket.disconnect":
                if (
                    stream.kind != "forward"
                    and stream.exit_code is None
                    and stream.error is None
                    and not stream.ended.done()  # ended by the server (revoked): it says why
                ):
                    # A program's session ends with its exit status: without one, the
                    # agent went away (killed, stopped, its connection lost).
                    stream.error = (
                        f"machine {stream.machine} closed the session before its program "
                        "ended (its agent stopped or lost its connection to the server)"
                    )
                    stream.error_code = "machine_disconnected"
                    await _error(master, "machine_disconnected", stream.error)
                return
            data = message.get("bytes")
            if data is not None:
                stream.from_machine += len(data)
                if rec is not None:
                    rec.output(data)
                    await rec.flush_due()
                await master.send_bytes(data)
                continue
            text = message.get("text") or ""
            try:
                control = read_control(text, Direction.TO_SERVER)
            except CrcError as exc:
                salvaged = _escaped_error(text)
                if salvaged is None:
                    stream.error = f"the machine sent an unusable control message: {exc.message}"
                    stream.error_code = "protocol"
                    await _error(master, "protocol", stream.error)
                    return
                control = salvaged
            if isinstance(control, StreamExit):
                stream.exit_code = control.code
            elif isinstance(control, StreamError):
                stream.error = control.message
                stream.error_code = control.code
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
                    await rec.flush_due()
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
