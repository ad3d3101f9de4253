"""A stream's close ends its connection even when the peer never answers the closing
handshake and the close is cancelled (a forward's ``aclose`` cancels its connections)."""

from __future__ import annotations

import asyncio
import base64
import hashlib

from cloudremotecontrol.master.streams import AsyncStream

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def _silent_peer(
    ended: asyncio.Event, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Accepts the WebSocket upgrade, then reads and ignores everything (no close frame
    back, no TCP close) until the client's side of the connection goes away."""
    head = await reader.readuntil(b"\r\n\r\n")
    key = next(
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1(key + _GUID.encode()).digest())
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    await writer.drain()
    while await reader.read(4096):
        pass
    ended.set()
    writer.close()


def test_a_cancelled_close_still_ends_the_connection() -> None:
    from websockets.asyncio.client import connect

    async def main() -> None:
        ended = asyncio.Event()
        server = await asyncio.start_server(lambda r, w: _silent_peer(ended, r, w), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        ws = await connect(f"ws://127.0.0.1:{port}/", compression=None, close_timeout=30)
        stream = AsyncStream(ws, {"stream": "st_test"})
        closing = asyncio.create_task(stream.close())
        await asyncio.sleep(0.2)
        assert not closing.done(), "the peer never answers: the handshake must still wait"
        assert not ended.is_set()
        closing.cancel()
        await asyncio.gather(closing, return_exceptions=True)
        await asyncio.wait_for(ended.wait(), 10)  # the peer sees the connection end
        assert ws.transport.is_closing()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_a_forward_whose_machine_sends_data_first_is_refused_without_echoing_it(
    monkeypatch,
) -> None:
    """A machine answering a forward with data instead of ``stream.ready``: the error
    names what came (its size), not the data itself (up to a 1 MiB frame)."""
    from cloudremotecontrol.errors import InvalidInput
    from cloudremotecontrol.master import streams
    from cloudremotecontrol.protocol.streams import ForwardSpec

    class Hostile:
        closed = False

        async def recv(self) -> bytes:
            return b"\x1b]0;pwned\x07" + b"x" * (1 << 20)

        async def close(self) -> None:
            self.closed = True

    hostile = Hostile()

    async def opened(opener: object, group: str, body: object) -> Hostile:
        return hostile

    monkeypatch.setattr(streams, "open_stream", opened)
    spec = ForwardSpec(local_addr="127.0.0.1", local_port=1, remote_host="127.0.0.1", remote_port=2)
    try:
        asyncio.run(streams.open_forward(None, "lab", "m", spec))  # type: ignore[arg-type]
    except InvalidInput as exc:
        assert exc.message == "unexpected first message on a forward: 1048586 bytes of data"
    else:
        raise AssertionError("a forward that never said ready was accepted")
    assert hostile.closed
