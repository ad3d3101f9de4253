"""The agent's WebSocket client (RFC 6455), on asyncio streams and the standard library.

The agent needs one client connection: text frames both ways, pings, a close. A library
client would bring its HTTP, proxy and e-mail parsing modules (several MiB of every
agent's memory) for what the agent never uses; this one is the protocol's client side
only: no extensions (no compression), no proxies, no redirects.

Everything the server sends is checked: the handshake (status 101, the upgrade headers,
``Sec-WebSocket-Accept``, at most ``MAX_HANDSHAKE_BYTES``), every frame (no mask from a
server, no reserved bits or opcodes, control frames whole and short), a message's size
across its fragments (``max_size``: close 1009) and its UTF-8 (close 1007). A ping is
answered at once, even while the agent is busy with a message; a ping of ours that
gets no pong within ``ping_timeout`` drops the connection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import ssl
import struct
from types import TracebackType
from urllib.parse import urlsplit

__all__ = ["ConnectionClosed", "HandshakeRefused", "WebSocket", "connect"]

log = logging.getLogger("crc.agent.ws")

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HANDSHAKE_BYTES = 16 * 1024
QUEUE = 16  # messages received and not yet taken: then reading pauses (backpressure)

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA = (OP_CONT, OP_TEXT, OP_BINARY)
_CONTROL = (OP_CLOSE, OP_PING, OP_PONG)


class ConnectionClosed(Exception):
    """The connection ended; ``code``/``reason`` of the server's close frame (None: it
    sent none, e.g. the connection dropped)."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"{code if code is not None else 'no close frame'} {reason}".strip())
        self.code = code
        self.reason = reason


class HandshakeRefused(Exception):
    """The server answered the upgrade request with another status than 101."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class ProtocolError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def mask(data: bytes, key: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``key`` repeated (RFC 6455 5.3)."""
    n = len(data)
    if not n:
        return b""
    pad = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(pad, "big")).to_bytes(n, "big")


def encode_frame(opcode: int, payload: bytes, key: bytes | None = None) -> bytes:
    """One whole (FIN) frame from the client: masked with ``key`` (random by default)."""
    key = os.urandom(4) if key is None else key
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + key + mask(payload, key)


async def read_frame(reader: asyncio.StreamReader, max_size: int) -> tuple[bool, int, bytes]:
    """``(fin, opcode, payload)`` of the next frame from the server."""
    b0, b1 = await reader.readexactly(2)
    fin, opcode, length = bool(b0 & 0x80), b0 & 0x0F, b1 & 0x7F
    if b0 & 0x70:
        raise ProtocolError(1002, "reserved bits set (no extension was agreed)")
    if b1 & 0x80:
        raise ProtocolError(1002, "a masked frame from the server")
    if opcode not in _DATA and opcode not in _CONTROL:
        raise ProtocolError(1002, f"unknown opcode {opcode}")
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    if opcode in _CONTROL and (length > 125 or not fin):
        raise ProtocolError(1002, "a fragmented or long control frame")
    if length > max_size:
        raise ProtocolError(1009, f"frame of {length} bytes over the limit of {max_size}")
    return fin, opcode, await reader.readexactly(length) if length else b""


class WebSocket:
    """An open connection. ``recv`` (or ``async for``) gives messages: ``str`` for text,
    ``bytes`` for binary; ``send`` sends text."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        max_size: int,
        ping_interval: float | None,
        ping_timeout: float,
    ) -> None:
        self._reader, self._writer = reader, writer
        self._max_size = max_size
        self._ping_interval, self._ping_timeout = ping_interval, ping_timeout
        self._lock = asyncio.Lock()
        self._messages: asyncio.Queue[str | bytes | ConnectionClosed] = asyncio.Queue(QUEUE)
        self._pong = asyncio.Event()
        self._ping_payload = b""
        self._closed: ConnectionClosed | None = None
        self._close_sent = False
        self._got_close = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read_loop())]
        if ping_interval:
            self._tasks.append(loop.create_task(self._keepalive()))

    # -- receiving ----------------------------------------------------------------------
    async def recv(self) -> str | bytes:
        if self._closed is not None and self._messages.empty():
            raise self._closed
        item = await self._messages.get()
        if isinstance(item, ConnectionClosed):
            self._messages.put_nowait(item)  # every later recv sees the end too
            raise item
        return item

    def __aiter__(self) -> WebSocket:
        return self

    async def __anext__(self) -> str | bytes:
        try:
            return await self.recv()
        except ConnectionClosed as exc:
            if exc.code in (1000, 1001):
                raise StopAsyncIteration from None
            raise

    async def _read_loop(self) -> None:
        end = ConnectionClosed(None, "connection lost")
        try:
            parts: list[bytes] = []
            size, kind = 0, OP_TEXT
            while True:
                fin, opcode, payload = await read_frame(self._reader, self._max_size)
                if opcode == OP_PING:
                    await self._write(encode_frame(OP_PONG, payload))
                    continue
                if opcode == OP_PONG:
                    if payload == self._ping_payload:
                        self._pong.set()
                    continue
                if opcode == OP_CLOSE:
                    end = self._closing(payload)
                    return
                if (opcode == OP_CONT) != bool(parts):
                    raise ProtocolError(1002, "unexpected continuation frame")
                if opcode != OP_CONT:
                    kind = opcode
                size += len(payload)
                if size > self._max_size:
                    raise ProtocolError(1009, f"message over the limit of {self._max_size}")
                parts.append(payload)
                if not fin:
                    continue
                data = b"".join(parts)
                parts, size = [], 0
                if kind == OP_TEXT:
                    try:
                        await self._messages.put(data.decode("utf-8"))
                    except UnicodeDecodeError:
                        raise ProtocolError(1007, "a text message that is not UTF-8") from None
                else:
                    await self._messages.put(data)
        except ProtocolError as exc:
            end = ConnectionClosed(exc.code, str(exc))
            with contextlib.suppress(Exception):
                await self._send_close(exc.code, str(exc))
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ssl.SSLError):
            pass
        finally:
            self._finish(end)

    def _closing(self, payload: bytes) -> ConnectionClosed:
        """The server's close frame: answer it (the same code), report its code."""
        code: int | None = 1005  # no status in the frame
        reason = ""
        if len(payload) >= 2:
            (code,) = struct.unpack("!H", payload[:2])
            reason = payload[2:].decode("utf-8", errors="replace")[:123]
        self._got_close.set()
        if not self._close_sent:
            self._close_sent = True
            body = payload[:2] if len(payload) >= 2 else b""
            with contextlib.suppress(Exception):
                self._writer.write(encode_frame(OP_CLOSE, body))
        return ConnectionClosed(code, reason)

    def _finish(self, end: ConnectionClosed) -> None:
        if self._closed is None:
            self._closed = end
        self._got_close.set()
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(asyncio.QueueFull):  # full: recv sees _closed once empty
            self._messages.put_nowait(self._closed)

    # -- sending ------------------------------------------------------------------------
    async def _write(self, data: bytes) -> None:
        async with self._lock:
            self._writer.write(data)
            await self._writer.drain()

    async def send(self, text: str) -> None:
        if self._closed is not None or self._close_sent:
            raise self._closed or ConnectionClosed(None, "closing")
        try:
            await self._write(encode_frame(OP_TEXT, text.encode("utf-8")))
        except (ConnectionError, OSError) as exc:
            raise ConnectionClosed(None, f"connection lost: {exc}") from None

    async def _send_close(self, code: int, reason: str) -> None:
        if self._close_sent:
            return
        self._close_sent = True
        body = struct.pack("!H", code) + reason.encode("utf-8")[:123]
        await self._write(encode_frame(OP_CLOSE, body))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Say goodbye (and wait a little for the server's answer), then disconnect."""
        if self._closed is None:
            with contextlib.suppress(Exception):
                await self._send_close(code, reason)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._got_close.wait(), 5)
        self._finish(ConnectionClosed(code, reason))
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _keepalive(self) -> None:
        assert self._ping_interval
        while self._closed is None:
            await asyncio.sleep(self._ping_interval)
            self._pong.clear()
            self._ping_payload = os.urandom(4)
            try:
                await self._write(encode_frame(OP_PING, self._ping_payload))
                await asyncio.wait_for(self._pong.wait(), self._ping_timeout)
            except (asyncio.TimeoutError, ConnectionError, OSError):
                self._closed = ConnectionClosed(1011, "keepalive ping timeout")
                self._writer.transport.abort()
                return

    async def __aenter__(self) -> WebSocket:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def connect(
    url: str,
    *,
    ssl_context: ssl.SSLContext | None,
    headers: dict[str, str],
    max_size: int,
    open_timeout: float = 20.0,
    ping_interval: float | None = 20.0,
    ping_timeout: float = 20.0,
) -> WebSocket:
    """Open ``url`` (``wss://`` or ``ws://``) and upgrade it; HandshakeRefused if the
    server answers with another status, ConnectionClosed for a broken handshake."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a WebSocket URL: {url!r}")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    host = parts.hostname
    for value in (*headers.keys(), *headers.values()):
        if "\r" in value or "\n" in value:
            raise ValueError("a header with a line break")
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            host,
            port,
            ssl=ssl_context if secure else None,
            server_hostname=host if secure else None,
        ),
        open_timeout,
    )
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        netloc = f"[{host}]" if ":" in host else host
        if parts.port:
            netloc += f":{parts.port}"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {netloc}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        request = "\r\n".join(lines)
        # At debug, the handshake as sent and answered; the log handler (logsafe.py)
        # redacts the Authorization header, whoever logs it.
        log.debug("> %s", request.replace("\r\n", "\n> "))
        writer.write((request + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        head = await asyncio.wait_for(_read_head(reader), open_timeout)
        log.debug("< %s", head.decode("latin-1").strip().replace("\r\n", "\n< "))
        _check_answer(head, key)
    except BaseException:
        writer.close()
        raise
    return WebSocket(reader, writer, max_size, ping_interval, ping_timeout)


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = await reader.readline()
        if not line:
            raise ConnectionClosed(None, "the server closed the connection in the handshake")
        head += line
        if len(head) > MAX_HANDSHAKE_BYTES:
            raise ConnectionClosed(None, "the server's handshake answer is too long")
    return head


def _check_answer(head: bytes, key: str) -> None:
    """The server's answer to the upgrade: 101 with the right accept value."""
    text = head.decode("latin-1")
    status_line, *rest = text.split("\r\n")
    fields = status_line.split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/1.") or not fields[1].isdigit():
        raise ConnectionClosed(None, "the server's handshake answer is not HTTP")
    status = int(fields[1])
    if status != 101:
        raise HandshakeRefused(status)
    found: dict[str, str] = {}
    for line in rest:
        name, sep, value = line.partition(":")
        if sep:
            found[name.strip().lower()] = value.strip()
    want = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()  # noqa: S324
    if (
        found.get("upgrade", "").lower() != "websocket"
        or "upgrade" not in found.get("connection", "").lower()
        or found.get("sec-websocket-accept") != want
        or found.get("sec-websocket-extensions")
    ):
        raise ConnectionClosed(None, "the server's handshake answer is not a WebSocket upgrade")
