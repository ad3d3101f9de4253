"""TLS handshakes in progress at once, and connections whose clients gave up waiting.

A TLS handshake is the dearest thing a connection costs the server before it says who
it is (a signature and a key exchange, in Python's event loop). When a whole fleet
reconnects at once after a restart, asyncio's own server starts a handshake for every
connection it accepts, all at once: each one progresses a little, none finishes before
its client's open timeout, the client gives up and tries again, and the server's work
on it is thrown away. ``TlsListener`` takes its place (``UvicornServer`` below):

* it accepts every connection (cheap: a file descriptor, no TLS) and waits for the
  client's first bytes (its ClientHello), which take no place;
* at most ``max_handshakes`` handshakes run at once, at most ``max_handshakes_per_ip``
  of them for one address; the connections with a ClientHello wait for a place in
  arrival order, the addresses taking turns, so one address's many connections delay
  only that address's own;
* when a connection's turn comes, it is dropped unhandshaken if its client has given up
  meanwhile (the socket is no longer ``ESTABLISHED``: the client closed or reset it);
* a connection has ``QUEUE_SECONDS`` from its accept to get a place (as long as an
  agent waits for its connection to open: ``agent/core.py``'s ``OPEN_TIMEOUT``) and
  ``handshake_timeout`` seconds once it has one; then it is closed.

So the server spends its handshakes on clients still waiting for them, finishes them
at the rate it can, and the login bound (``admission.py``) sees agents arrive at that
rate. Per server process; everything here runs on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import socket
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn

__all__ = ["HandshakeLimits", "TlsListener", "UvicornServer", "abandoned"]

log = logging.getLogger("crc.server")

QUEUE_SECONDS = 60.0  # from the accept to a handshake place (the agent's open timeout)
_TCP_ESTABLISHED = 1
STARTUP_FAILURE = 3  # uvicorn's exit status when it cannot listen


@dataclass(frozen=True)
class HandshakeLimits:
    max_handshakes: int
    max_handshakes_per_ip: int
    handshake_timeout: float  # seconds from taking a place to the handshake's end
    queue_seconds: float = QUEUE_SECONDS


def abandoned(sock: socket.socket) -> bool:
    """The peer closed or reset this accepted connection (Linux: its TCP state is no
    longer ESTABLISHED); False where the state cannot be read."""
    tcp_info = getattr(socket, "TCP_INFO", None)
    if tcp_info is None:  # pragma: no cover - not Linux
        return False
    try:
        state = sock.getsockopt(socket.IPPROTO_TCP, tcp_info, 8)[0]
    except OSError:
        return True
    return state != _TCP_ESTABLISHED


class _Waiting:
    """An accepted connection before its handshake."""

    __slots__ = ("deadline", "ip", "sock", "timer")

    def __init__(self, sock: socket.socket, ip: str, deadline: float) -> None:
        self.sock = sock
        self.ip = ip
        self.deadline = deadline
        self.timer: asyncio.TimerHandle | None = None


class TlsListener:
    """Accepts on ``socks`` and hands each connection to ``factory``'s protocol once its
    TLS handshake is done, within the limits above. Stands in for the ``asyncio.Server``
    uvicorn keeps (``close``; ``wait_closed``)."""

    def __init__(
        self,
        socks: list[socket.socket],
        factory: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext,
        limits: HandshakeLimits,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.sockets = socks
        self.factory = factory
        self.context = context
        self.limits = limits
        self.active = 0  # handshakes in progress
        self.by_ip: collections.Counter[str] = collections.Counter()
        self.queues: dict[str, collections.deque[_Waiting]] = {}  # with a ClientHello
        self.turns: collections.deque[str] = collections.deque()  # addresses with a turn
        self.hello_wait: set[_Waiting] = set()  # accepted, no byte received yet
        self.handshaken = 0
        self.dropped = 0  # given up by their clients before their turn
        self.expired = 0  # no place (or no ClientHello) within queue_seconds
        self.failed = 0  # handshakes that failed or timed out
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting = [self.loop.create_task(self._accept(s)) for s in socks]

    # -- accepting ----------------------------------------------------------------------
    async def _accept(self, lsock: socket.socket) -> None:
        while not self._closed:
            try:
                sock, addr = await self.loop.sock_accept(lsock)
            except asyncio.CancelledError:
                raise
            except OSError as exc:
                if self._closed:
                    return
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("accept: %s; pausing for a second", exc)
                    await asyncio.sleep(1.0)
                continue
            sock.setblocking(False)
            ip = str(addr[0]) if isinstance(addr, tuple) and addr else "?"
            w = _Waiting(sock, ip, self.loop.time() + self.limits.queue_seconds)
            self.hello_wait.add(w)
            w.timer = self.loop.call_at(w.deadline, self._expire, w)
            self.loop.add_reader(sock.fileno(), self._hello, w)

    def _hello(self, w: _Waiting) -> None:
        """The client's first bytes arrived: it queues for a place."""
        self.loop.remove_reader(w.sock.fileno())
        self.hello_wait.discard(w)
        queue = self.queues.get(w.ip)
        if queue is None:
            queue = self.queues[w.ip] = collections.deque()
            if self.by_ip[w.ip] < self.limits.max_handshakes_per_ip:
                self.turns.append(w.ip)
        queue.append(w)
        self._pump()

    def _expire(self, w: _Waiting) -> None:
        if w in self.hello_wait:
            self.hello_wait.discard(w)
            self.loop.remove_reader(w.sock.fileno())
            self.expired += 1
            w.sock.close()
        # A queued one is closed when its turn comes (its deadline has passed).

    # -- handshakes -----------------------------------------------------------------------
    def _pump(self) -> None:
        while self.active < self.limits.max_handshakes and self.turns and not self._closed:
            ip = self.turns.popleft()
            queue = self.queues[ip]
            w = queue.popleft()
            if not queue:
                del self.queues[ip]
            if w.timer is not None:
                w.timer.cancel()
            if self.loop.time() >= w.deadline:
                self.expired += 1
                w.sock.close()
            elif abandoned(w.sock):
                self.dropped += 1
                w.sock.close()
            else:
                self.active += 1
                self.by_ip[ip] += 1
                task = self.loop.create_task(self._handshake(w))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if ip in self.queues and self.by_ip[ip] < self.limits.max_handshakes_per_ip:
                self.turns.append(ip)  # its next connection, after the other addresses

    async def _handshake(self, w: _Waiting) -> None:
        try:
            # The transport owns the socket from here on (closed with it, also on failure).
            await self.loop.connect_accepted_socket(
                self.factory,
                w.sock,
                ssl=self.context,
                ssl_handshake_timeout=self.limits.handshake_timeout,
            )
            self.handshaken += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 -- a client's failed handshake, of any kind
            self.failed += 1
            log.debug("TLS handshake with %s failed: %s", w.ip, exc)
        finally:
            self.active -= 1
            was_full = self.by_ip[w.ip] >= self.limits.max_handshakes_per_ip
            self.by_ip[w.ip] -= 1
            if self.by_ip[w.ip] <= 0:
                del self.by_ip[w.ip]
            if was_full and w.ip in self.queues:
                self.turns.append(w.ip)  # it waited for this place (``_pump`` left it out)
            self._pump()

    # -- the asyncio.Server part uvicorn uses ---------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self._accepting:
            task.cancel()
        for s in self.sockets:
            s.close()
        for w in list(self.hello_wait):
            self.loop.remove_reader(w.sock.fileno())
            w.sock.close()
        self.hello_wait.clear()
        for queue in self.queues.values():
            for w in queue:
                w.sock.close()
        self.queues.clear()
        self.turns.clear()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._accepting, return_exceptions=True)


def bind(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets for ``host``:``port``, as asyncio's ``create_server`` makes them."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, addr in dict.fromkeys(infos):
            s = socket.socket(family, kind, proto)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(addr)
            s.listen(backlog)
            s.setblocking(False)
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks


class UvicornServer(uvicorn.Server):
    """uvicorn's server, its TLS listener being a ``TlsListener`` (plain HTTP, or
    sockets handed in, are uvicorn's own). It relies on uvicorn's ``startup`` taking an
    empty list of sockets as "listen on none" and on its ``shutdown`` calling ``close``
    on each of ``servers``; every system test runs a server through it."""

    def __init__(self, config: uvicorn.Config, limits: HandshakeLimits) -> None:
        super().__init__(config)
        self.limits = limits
        self.listener: TlsListener | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        config = self.config
        if config.ssl is None or sockets is not None or config.fd is not None or config.uds:
            await super().startup(sockets=sockets)
            return
        # uvicorn's start (the application's lifespan) with no listener of its own.
        await super().startup(sockets=[])
        if self.should_exit:
            return
        try:
            socks = bind(config.host, config.port, config.backlog)
        except OSError as exc:
            log.error("%s", exc)
            await self.lifespan.shutdown()
            sys.exit(STARTUP_FAILURE)

        def create_protocol() -> asyncio.Protocol:
            protocol: Any = config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )
            return protocol  # type: ignore[no-any-return]

        self.listener = TlsListener(socks, create_protocol, config.ssl, self.limits)
        self.servers = [self.listener]  # type: ignore[list-item]
        started = getattr(self, "_log_started_message", None)  # uvicorn's own line
        if callable(started):
            started(socks)
