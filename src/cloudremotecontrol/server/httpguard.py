"""What a connection may cost the server before it has proved who it is.

uvicorn's HTTP protocol reads a request's header section whole, however long it is
and however slowly it arrives: one client sending a 64 MiB header, or a few hundred
trickling a byte every few seconds, holds memory and sockets without ever presenting a
token. ``GuardedHttpToolsProtocol`` is uvicorn's httptools protocol with four bounds,
all set by ``ServerLimits`` (``crc server run`` flags or ``server.json``):

* **header size**: bytes read before the end of a request's header section are counted
  as they arrive; past ``max_header_bytes`` the request is answered ``431`` and the
  connection closed, before the parser buffers any more (RFC 6585, section 5);
* **header time**: a connection that has not finished a header section
  ``header_timeout`` seconds after it opened (or after the first byte of a later
  request) is answered ``408`` and closed;
* **body time**: a request body during which nothing arrives for ``body_timeout``
  seconds (while the server is ready to read) is cut off the same way. Large uploads
  are fine as long as bytes keep coming;
* **unauthenticated connections**: at most ``max_unauthenticated`` connections in all,
  and ``max_unauthenticated_per_ip`` from one address, may be open without having
  made a request with a valid token or credential. A new connection past a limit takes
  the place of the oldest one (from that address, or at all) that is still waiting for
  its headers, which is answered ``503`` and closed: a flood of idle connections only
  pushes out its own kind, while an honest client, which spends milliseconds there,
  gets in. When every such connection is busy with a request the new one is refused
  with ``503``. A connection leaves the pool when a request on it authenticates
  (``mark_authenticated``, called by ``server/auth.py``) or when it is gone.

A WebSocket upgrade keeps its connection's place: the slot passes to the WebSocket
protocol (``wsprotocol.py``), and the connection counts against the limits until its
endpoint authenticates it (the agent's and the streams' credential, the dashboard
terminal's session cookie: ``mark_authenticated`` again). One refused before that (no
credential, a wrong one, no WebSocket at that path, too many agent logins) is cut
``LINGER_SECONDS`` after its answer or close frame, as an HTTP refusal is: no waiting
for the client's close frame nor for a TLS goodbye. One whose endpoint has neither
authenticated nor refused it ``header_timeout`` seconds after the upgrade is cut too.
While it lingers, a refused WebSocket may be pushed out by a new connection (as one still
waiting for its headers may).

The counts are per server process; everything here runs on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.requests import HTTPConnection
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .admission import LoginGate
from .secheaders import RAW_HEADERS
from .wsprotocol import AGENT_PATH, SCOPE_KEY, ListeningWebSocketProtocol

__all__ = [
    "ConnectionGuard",
    "GuardLimits",
    "GuardedHttpToolsProtocol",
    "guarded_protocol",
    "mark_authenticated",
]

LINGER_SECONDS = 1.0  # after a refusal: time for the client to read it before the close


@dataclass(frozen=True)
class GuardLimits:
    max_header_bytes: int
    header_timeout: float
    body_timeout: float
    max_unauthenticated: int
    max_unauthenticated_per_ip: int


class ConnectionGuard:
    """The pool of unauthenticated connections of one server process. ``logins``: the
    bound on agent logins (``admission.py``): an agent's WebSocket upgrade while it is
    full is answered ``503`` here, before any WebSocket or application code runs, and
    every ``503`` of ours says when to come back (``Retry-After``, its schedule)."""

    def __init__(self, limits: GuardLimits, logins: LoginGate | None = None) -> None:
        self.limits = limits
        self.logins = logins
        self.pool: dict[_Slot, None] = {}  # oldest first
        self.by_ip: Counter[str] = Counter()
        self.evicted = 0  # waiting connections pushed out by newer ones
        self.refused = 0  # new connections refused (every waiting one was busy)

    @property
    def unauthenticated(self) -> int:
        return len(self.pool)

    def admit(self, slot: _Slot) -> bool:
        """Take ``slot`` into the pool, pushing out the oldest connection still waiting
        for its headers if a limit is reached; False if there is no room."""
        if self.by_ip[slot.ip] >= self.limits.max_unauthenticated_per_ip:
            if not self._evict_oldest(slot.ip):
                self.refused += 1
                return False
        if len(self.pool) >= self.limits.max_unauthenticated:
            if not self._evict_oldest(None):
                self.refused += 1
                return False
        self.pool[slot] = None
        self.by_ip[slot.ip] += 1
        return True

    def _evict_oldest(self, ip: str | None) -> bool:
        victim = next(
            (old for old in self.pool if (ip is None or old.ip == ip) and old.protocol.evictable()),
            None,
        )
        if victim is None:
            return False
        self.evicted += 1
        victim.protocol.evict()  # releases its slot
        return True

    def release(self, slot: _Slot) -> None:
        if slot in self.pool:
            del self.pool[slot]
            self.by_ip[slot.ip] -= 1
            if self.by_ip[slot.ip] <= 0:
                del self.by_ip[slot.ip]


class _Holder(Protocol):
    """What holds a slot: the HTTP protocol, then the WebSocket's after an upgrade."""

    def evictable(self) -> bool: ...

    def evict(self) -> None: ...


class _Slot:
    """One connection's place in the pool; released once (releasing again is a no-op)."""

    def __init__(self, guard: ConnectionGuard, protocol: _Holder, ip: str):
        self.guard = guard
        self.protocol = protocol
        self.ip = ip
        self.authenticated = False

    def release(self) -> None:
        self.guard.release(self)

    def authenticate(self) -> None:
        self.authenticated = True
        self.release()


def mark_authenticated(conn: HTTPConnection) -> None:
    """A request (or WebSocket handshake) on this connection presented a valid token or
    credential: the connection no longer counts against the unauthenticated limits."""
    slot = conn.scope.get(SCOPE_KEY)
    if isinstance(slot, _Slot):
        slot.authenticate()


def _error_response(
    status: int, reason: str, code: str, message: str, retry_after: float | None = None
) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    retry = f"retry-after: {int(retry_after)}\r\n" if retry_after is not None else ""
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        f"{retry}"
        "connection: close\r\n"
    ).encode()
    return head + RAW_HEADERS + b"\r\n" + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds above (``guard`` is set by
    ``guarded_protocol``)."""

    guard: ConnectionGuard

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slot: _Slot | None = None
        self._in_headers = True  # before the end of the current request's header section
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._refused = False

    # -- connection -------------------------------------------------------------------
    # asyncio.Transport, as uvicorn's protocol declares it (BaseProtocol says BaseTransport).
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        slot = _Slot(self.guard, self, self.client[0] if self.client else "?")
        if not self.guard.admit(slot):
            self._refuse(
                503,
                "Service Unavailable",
                "unavailable",
                "too many connections without a credential; try again later",
            )
            return
        self._slot = slot
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        if self._slot is not None:
            self._slot.release()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        self._cancel_timers()
        logins = self.guard.logins
        if logins is not None and self.scope.get("path") == AGENT_PATH and logins.full():
            # Too many agents logging in: told when to come back (Retry-After), and the
            # connection cut once the answer is out (the endpoint checks again,
            # agent_ws.py).
            self._refuse(
                503,
                "Service Unavailable",
                "unavailable",
                "too many agents connecting at once; try again later",
            )
            return
        # The connection keeps its place until the WebSocket's endpoint authenticates it:
        # the slot goes with the transport to the WebSocket protocol.
        slot, self._slot = self._slot, None
        super().handle_websocket_upgrade()
        if slot is None:  # (a connection refused at its start parses nothing)
            return
        ws = self.transport.get_protocol()
        if isinstance(ws, ListeningWebSocketProtocol):
            slot.protocol = ws
            ws.hold(slot, LINGER_SECONDS, self.guard.limits.header_timeout)
        else:  # not ours (cannot be cut or told it authenticated): as before, let go
            slot.release()

    def send_400_response(self, msg: str) -> None:
        """A request that is not HTTP (uvicorn's parser refused it): our error shape and
        security headers (secheaders.py) instead of uvicorn's plain text."""
        self._refused = True
        self._cancel_timers()
        self.transport.write(_error_response(400, "Bad Request", "bad_request", msg))
        self.transport.close()

    def evictable(self) -> bool:
        return self.waiting_for_headers()

    def waiting_for_headers(self) -> bool:
        """Idle or receiving a header section, no request of ours in progress."""
        if self._refused or not self._in_headers:
            return False
        return self.cycle is None or self.cycle.response_complete

    def evict(self) -> None:
        self._refuse(
            503,
            "Service Unavailable",
            "unavailable",
            "too many connections without a credential; this one waited longest",
        )

    # -- bytes in ---------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._in_headers:
            if self._body_timer is not None:
                self._arm_body_timer()
            super().data_received(data)
            return
        room = self.guard.limits.max_header_bytes - self._header_bytes
        if len(data) <= room:
            self._header_bytes += len(data)
            super().data_received(data)
            return
        # More than the header section may still take: feed what fits; if the header
        # section did not end within it, the request is refused unread.
        self._header_bytes += room
        if room > 0:
            super().data_received(data[:room])
        if self._in_headers:
            self._refuse(
                431,
                "Request Header Fields Too Large",
                "headers_too_large",
                f"request header section over {self.guard.limits.max_header_bytes} bytes",
            )
            return
        if self.transport.is_closing():
            return
        protocol = self.transport.get_protocol()
        protocol.data_received(data[room:])  # ours, or the WebSocket's after an upgrade

    # -- parser callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._slot is not None:
            # uvicorn types the scope as a TypedDict; ASGI lets a server add its own keys.
            self.scope[SCOPE_KEY] = self._slot  # type: ignore[literal-required]
        self._in_headers = True
        if self._header_timer is None:
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._header_bytes = 0
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().on_headers_complete()
        if not (self.parser.should_upgrade() and self._should_upgrade()):
            self._arm_body_timer()

    def on_message_complete(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()
        # What follows on this connection is the next request's header section.
        self._in_headers = True
        self._header_bytes = 0

    # -- timers -------------------------------------------------------------------------
    def _arm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(
            self.guard.limits.header_timeout, self._header_timed_out
        )

    def _arm_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
        self._body_timer = self.loop.call_later(
            self.guard.limits.body_timeout, self._body_timed_out
        )

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._in_headers:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A response is still being written (a pipelined request waits behind it):
            # the next header section's clock starts when it is done.
            self._arm_header_timer()
            return
        self._refuse(
            408,
            "Request Timeout",
            "timeout",
            f"request headers not received within {self.guard.limits.header_timeout:g} s",
        )

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self._in_headers:
            return
        if self.flow.read_paused:  # the application is not reading: not the client's fault
            self._arm_body_timer()
            return
        if self.cycle is not None and not self.cycle.response_started:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
            self._refuse(
                408,
                "Request Timeout",
                "timeout",
                f"nothing of the request body received for {self.guard.limits.body_timeout:g} s",
            )
        else:
            self.transport.close()

    # -- refusing -----------------------------------------------------------------------
    def _refuse(self, status: int, reason: str, code: str, message: str) -> None:
        """Answer ``status`` and end the connection: its slot is free at once, nothing
        more it sends is parsed or buffered, and it is cut a moment later (time for a
        client still sending to read the answer; no TLS goodbye is waited for)."""
        self._refused = True
        self._cancel_timers()
        if self._slot is not None:
            self._slot.release()
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
        retry_after = None
        if status == 503 and self.guard.logins is not None:
            retry_after = self.guard.logins.retry_after()
        self.transport.write(_error_response(status, reason, code, message, retry_after))
        self.transport.pause_reading()
        self.loop.call_later(LINGER_SECONDS, self.transport.abort)


def guarded_protocol(guard: ConnectionGuard) -> type[GuardedHttpToolsProtocol]:
    """The protocol class to give ``uvicorn.Config(http=...)`` for this server."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"guard": guard})
