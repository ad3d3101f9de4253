"""agent/wsclient.py: the agent's WebSocket client, against a real asyncio server that
speaks RFC 6455 by hand (the end-to-end tests run it against the real crc server)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable

import pytest

from cloudremotecontrol.agent.wsclient import (
    GUID,
    ConnectionClosed,
    HandshakeRefused,
    connect,
    encode_frame,
    mask,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def server_frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = False) -> bytes:
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if masked:
        return head + b"abcd" + mask(payload, b"abcd")
    return head + payload


async def read_client_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    assert b1 & 0x80, "client frames are masked"
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    key = await reader.readexactly(4)
    return b0 & 0x0F, mask(await reader.readexactly(n), key)


async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, **kw: str) -> str:
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    key = next(
        line.split(":", 1)[1].strip()
        for line in head.split("\r\n")
        if line.lower().startswith("sec-websocket-key:")
    )
    accept_value = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    accept_value = kw.get("accept", accept_value)
    writer.write(
        (
            f"HTTP/1.1 {kw.get('status', '101 Switching Protocols')}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_value}\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    return head


def run(handler: Handler, client: Callable[[str], Awaitable[None]]) -> None:
    async def main() -> None:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            await asyncio.wait_for(client(f"ws://127.0.0.1:{port}/v1/agent/connect"), 20)
        finally:
            server.close()

    asyncio.run(main())


def open_ws(url: str, **kw: object) -> Awaitable[object]:
    return connect(url, ssl_context=None, headers={"Authorization": "Bearer x"}, max_size=64, **kw)  # type: ignore[arg-type]


def test_mask_is_its_own_inverse_and_frames_carry_their_length() -> None:
    data = bytes(range(256)) * 3
    assert mask(mask(data, b"\x01\x02\x03\x04"), b"\x01\x02\x03\x04") == data
    assert mask(b"", b"abcd") == b""
    for n, header in ((5, 2), (200, 4), (70000, 10)):
        frame = encode_frame(0x1, b"x" * n, b"kkkk")
        assert len(frame) == header + 4 + n and frame[0] == 0x81 and frame[1] & 0x80


def test_text_both_ways_fragments_pings_and_a_clean_close() -> None:
    seen: dict[str, object] = {}

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["head"] = await accept(reader, writer)
        seen["first"] = await read_client_frame(reader)
        writer.write(server_frame(0x9, b"pi"))  # a ping: answered with its payload
        writer.write(server_frame(0x1, "hé".encode(), fin=False))
        writer.write(server_frame(0x0, b"llo"))
        writer.write(server_frame(0x2, b"\x00\x01"))
        await writer.drain()
        seen["pong"] = await read_client_frame(reader)
        writer.write(server_frame(0x8, struct.pack("!H", 1000) + b"bye"))
        await writer.drain()
        seen["close"] = await read_client_frame(reader)
        writer.close()

    async def client(url: str) -> None:
        ws = await open_ws(url)
        await ws.send("hello")  # type: ignore[attr-defined]
        got = [m async for m in ws]  # type: ignore[attr-defined]
        assert got == ["héllo", b"\x00\x01"]
        with pytest.raises(ConnectionClosed) as end:
            await ws.recv()  # type: ignore[attr-defined]
        assert (end.value.code, end.value.reason) == (1000, "bye")

    run(handler, client)
    head = str(seen["head"])
    assert head.startswith("GET /v1/agent/connect HTTP/1.1\r\n")
    assert "Authorization: Bearer x\r\n" in head and "Sec-WebSocket-Version: 13" in head
    assert seen["first"] == (0x1, b"hello")
    assert seen["pong"] == (0xA, b"pi")
    assert seen["close"] == (0x8, struct.pack("!H", 1000))


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([server_frame(0x1, b"x", masked=True)], 1002),  # servers never mask
        ([bytes([0xC1, 0x01]) + b"x"], 1002),  # a reserved bit (compression not agreed)
        ([server_frame(0x3, b"")], 1002),  # unknown opcode
        ([server_frame(0x9, b"p", fin=False)], 1002),  # fragmented control frame
        ([server_frame(0x0, b"x")], 1002),  # continuation of nothing
        ([server_frame(0x1, b"x" * 65)], 1009),  # over max_size
        ([server_frame(0x1, b"x" * 40, fin=False), server_frame(0x0, b"x" * 40)], 1009),
        ([server_frame(0x1, b"\xff\xfe")], 1007),  # not UTF-8
    ],
)
def test_a_server_breaking_the_protocol_is_closed_with_the_right_code(
    frames: list[bytes], code: int
) -> None:
    closes: list[tuple[int, bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept(reader, writer)
        for f in frames:
            writer.write(f)
        await writer.drain()
        closes.append(await read_client_frame(reader))
        writer.close()

    async def client(url: str) -> None:
        ws = await open_ws(url)
        with pytest.raises(ConnectionClosed) as end:
            await ws.recv()  # type: ignore[attr-defined]
        assert end.value.code == code

    run(handler, client)
    assert closes[0][0] == 0x8 and struct.unpack("!H", closes[0][1][:2])[0] == code


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ({"status": "401 Unauthorized"}, HandshakeRefused),
        ({"accept": "wrong"}, ConnectionClosed),
    ],
)
def test_a_bad_handshake_answer_is_refused(answer: dict[str, str], error: type) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept(reader, writer, **answer)
        while await reader.read(1024):  # until the client hangs up
            pass
        writer.close()

    async def client(url: str) -> None:
        with pytest.raises(error):
            await open_ws(url)

    run(handler, client)


def test_an_endless_handshake_answer_is_bounded() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 OK\r\n" + b"X-Pad: " + b"a" * 100 + b"\r\n")
        for _ in range(300):
            writer.write(b"X-Pad: " + b"a" * 100 + b"\r\n")
        await writer.drain()
        while await reader.read(1024):  # until the client hangs up
            pass
        writer.close()

    async def client(url: str) -> None:
        with pytest.raises(ConnectionClosed, match="too long"):
            await open_ws(url)

    run(handler, client)


def test_no_pong_drops_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept(reader, writer)
        while await reader.read(1024):  # answers no ping, until the client gives up
            pass
        writer.close()

    async def client(url: str) -> None:
        ws = await open_ws(url, ping_interval=0.2, ping_timeout=0.3)
        with pytest.raises(ConnectionClosed) as end:
            await ws.recv()  # type: ignore[attr-defined]
        assert end.value.code == 1011 and "ping" in end.value.reason

    run(handler, client)


def test_the_lean_agent_entry_point_loads_no_cli_master_server_or_urllib() -> None:
    code = (
        "import sys\n"
        "import cloudremotecontrol.agent.main, cloudremotecontrol.agent.service\n"
        "import cloudremotecontrol.agent.core, cloudremotecontrol.agent.wsclient\n"
        "bad = ('click', 'cloudremotecontrol.cli', 'cloudremotecontrol.master',\n"
        "       'cloudremotecontrol.server', 'websockets', 'urllib.request', 'http.client',\n"
        "       'email', 'pydantic', 'httpx')\n"
        "print(sorted(m for m in sys.modules if m.startswith(bad)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"
