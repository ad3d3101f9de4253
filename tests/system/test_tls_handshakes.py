"""TLS handshakes in progress are bounded (server/handshakes.py): connections wait for
a place, addresses take turns, a connection whose client gave up before its turn is
closed without a handshake, and one that holds a place without finishing is cut off.
The real listener with real TLS clients on loopback (uvloop, as the server runs), then
a real server process with ``--max-handshakes 1``."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop
from wire_helpers import assert_no_traceback_in_server_log

from cloudremotecontrol.master.client import Client
from cloudremotecontrol.master.localrun import ServerProcess
from cloudremotecontrol.server.handshakes import HandshakeLimits, TlsListener, bind
from cloudremotecontrol.server.tls import make_self_signed

CLIENT_HELLO_START = b"\x16\x03\x01\x00\x05hello"  # a record header and a few bytes


def _server_context(tmp: Path) -> ssl.SSLContext:
    make_self_signed(tmp / "cert.pem", tmp / "key.pem", ["127.0.0.1"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    return ctx


def _client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _until(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached: {what}")
        await asyncio.sleep(0.01)


class _App(asyncio.Protocol):
    made: list[asyncio.BaseTransport] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made.append(transport)


def _queued(listener: TlsListener) -> int:
    return sum(len(q) for q in listener.queues.values())


async def _tls_client(port: int, source: str = "127.0.0.1") -> tuple[Any, Any]:
    return await asyncio.open_connection(
        "127.0.0.1", port, ssl=_client_context(), local_addr=(source, 0)
    )


def _run(tmp_path: Path, limits: HandshakeLimits, body: Any) -> None:
    ctx = _server_context(tmp_path)

    async def main() -> None:
        made: list[asyncio.BaseTransport] = []
        app = type("App", (_App,), {"made": made})
        socks = bind("127.0.0.1", 0, 64)
        listener = TlsListener(socks, app, ctx, limits)
        try:
            await body(listener, socks[0].getsockname()[1], made)
        finally:
            listener.close()
            await listener.wait_closed()
            for t in made:
                t.close()

    uvloop.run(main())


def test_a_client_that_gave_up_before_its_turn_costs_no_handshake(tmp_path: Path) -> None:
    limits = HandshakeLimits(max_handshakes=1, max_handshakes_per_ip=1, handshake_timeout=60)

    async def body(listener: TlsListener, port: int, made: list[Any]) -> None:
        # A client that sends the start of a ClientHello and stops: it holds the place.
        _, staller = await asyncio.open_connection("127.0.0.1", port)
        staller.write(b"\x16")
        await _until("the staller has the place", lambda: listener.active == 1)
        # A client that sends its ClientHello, waits its turn, and gives up.
        _, quitter = await asyncio.open_connection("127.0.0.1", port)
        quitter.write(CLIENT_HELLO_START)
        await _until("the quitter waits", lambda: _queued(listener) == 1)
        quitter.close()
        await quitter.wait_closed()
        # A real client waits behind both.
        honest = asyncio.ensure_future(_tls_client(port))
        await _until("the honest client waits", lambda: _queued(listener) == 2)
        assert not honest.done() and not made  # no place: no handshake yet
        staller.close()  # its handshake fails, the place is free again
        _, writer = await honest
        # (TLS 1.3: the client is done a moment before the server has its Finished.)
        await _until("the honest client handshaken", lambda: listener.handshaken == 1)
        assert listener.dropped == 1  # the quitter: closed unhandshaken
        assert listener.failed == 1  # the staller
        assert listener.handshaken == 1 and len(made) == 1
        assert listener.active == 0
        writer.close()
        await writer.wait_closed()

    _run(tmp_path, limits, body)


def test_addresses_take_turns_for_the_places(tmp_path: Path) -> None:
    limits = HandshakeLimits(max_handshakes=2, max_handshakes_per_ip=1, handshake_timeout=60)

    async def body(listener: TlsListener, port: int, made: list[Any]) -> None:
        _, staller = await asyncio.open_connection("127.0.0.1", port)
        staller.write(b"\x16")
        await _until("the staller has a place", lambda: listener.active == 1)
        # The staller's address has its one place: its next connection waits...
        same = asyncio.ensure_future(_tls_client(port, "127.0.0.1"))
        await _until("the same address waits", lambda: _queued(listener) == 1)
        # ...while another address gets the free place.
        _, other = await _tls_client(port, "127.0.0.2")
        await _until("the other address handshaken", lambda: listener.handshaken == 1)
        assert not same.done()
        staller.close()
        _, writer = await same
        await _until("the same address handshaken", lambda: listener.handshaken == 2)
        assert listener.failed == 1
        for w in (other, writer):
            w.close()
            await w.wait_closed()

    _run(tmp_path, limits, body)


def test_a_connection_without_a_place_in_time_is_closed(tmp_path: Path) -> None:
    limits = HandshakeLimits(
        max_handshakes=1, max_handshakes_per_ip=1, handshake_timeout=60, queue_seconds=0.5
    )

    async def body(listener: TlsListener, port: int, made: list[Any]) -> None:
        silent_r, silent = await asyncio.open_connection("127.0.0.1", port)  # sends nothing
        assert await silent_r.read() == b""  # closed by the server, never handshaken
        assert listener.expired == 1 and listener.active == 0 and not made
        silent.close()
        _, writer = await _tls_client(port)  # the listener still serves
        await _until("a client handshaken", lambda: listener.handshaken == 1)
        writer.close()
        await writer.wait_closed()

    _run(tmp_path, limits, body)


def test_a_server_with_one_handshake_place_cuts_off_a_staller_and_serves(
    tmp_path: Path,
) -> None:
    args = ["--max-handshakes", "1", "--handshake-timeout", "1"]
    srv = ServerProcess(tmp_path / "srv", args=args).start()
    try:
        token = srv.add_user("alice")
        staller = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
        staller.sendall(b"\x16")  # takes the one place and never finishes
        # Cut off after its handshake time (nothing but the close comes back), and the
        # server goes on serving the clients behind it.
        with Client(srv.url, token, srv.fingerprint) as client:
            assert client.whoami()["user"] == "alice"
        assert staller.recv(100) == b""
        staller.close()
    finally:
        srv.stop()
    assert_no_traceback_in_server_log(srv)
