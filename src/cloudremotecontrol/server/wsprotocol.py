"""uvicorn's WebSocket protocol, listening to agents rather than pinging them.

An agent pings the server every ``AGENT_PING_SECONDS`` (to notice a hung server itself);
the server pinging every agent as well doubled the heartbeat traffic, and with ten
thousand connected agents that traffic *is* the server's idle CPU (each ping and pong is
a TLS record and a frame parsed in Python). So on agent connections the server sends no
pings of its own: it turns TCP keepalive on (the kernel notices a vanished machine within
``keepalive.DEAD_PEER_SECONDS``, at no cost to this process), notes when it last heard
anything (the agent's pings included) and closes a connection it has heard nothing from
for the silence timeout (``--agent-silence-timeout``, over two of the agent's pings)
with 1011, as a missed pong would. Every other WebSocket (streams, the dashboard's
terminal; browsers do not ping) keeps uvicorn's own pings.

A handshake refused here (a malformed upgrade, 400; an endpoint that closes before it
accepts, 403) is an HTTP answer written by websockets, outside the application and its
``SecurityHeaders``: it gets the same security headers (secheaders.py) on its way out,
and the API's JSON error body (``{"error": {"code", "message"}}``) instead of plain text.

Until its endpoint authenticates it, a WebSocket holds its connection's place among the
unauthenticated ones (``httpguard.py``, which hands it over with ``hold``): the slot is
in the scope (``SCOPE_KEY``) for ``mark_authenticated``, and released when the
connection is lost. One refused or closed before it authenticated (a denial response,
a 403, a close frame, a malformed handshake) is cut (aborted) a moment after that
answer is written, without waiting for the client's close frame or a TLS goodbye; one
whose endpoint neither authenticates nor refuses it in time is cut as well.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Protocol

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request, Response

from .. import keepalive
from ..errors import code_for_status
from ..protocol.limits import AGENT_SILENCE_SECONDS
from .secheaders import HEADERS

__all__ = [
    "AGENT_PATH",
    "SCOPE_KEY",
    "ListeningWebSocketProtocol",
    "json_refusal",
    "listening_protocol",
]

AGENT_PATH = "/v1/agent/connect"
SCOPE_KEY = "crc.connection"  # a connection's place among unauthenticated ones


class PreAuthSlot(Protocol):
    """A connection's place in ``httpguard.ConnectionGuard``'s pool."""

    authenticated: bool

    def release(self) -> None: ...


def json_refusal(status: int, text: str) -> bytes:
    """The JSON error body for a handshake refusal the WebSocket library wrote as plain
    ``text`` (its first line; none when an endpoint closed before accepting)."""
    message = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not message:
        message = "no WebSocket at this path, or the WebSocket was refused"
    return json.dumps({"error": {"code": code_for_status(status), "message": message}}).encode()


class ListeningWebSocketProtocol(WebSocketsSansIOProtocol):
    silence_seconds = AGENT_SILENCE_SECONDS
    last_heard = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn makes its sans-I/O ServerProtocol itself and sends every refusal
        # through it: its send_response is where those answers can be completed.
        send_response = self.conn.send_response

        def with_headers(response: Response) -> None:
            if response.status_code != 101:
                if response.headers.get("Content-Type", "").startswith("text/plain"):
                    text = response.body.decode("utf-8", "replace")
                    response.body = json_refusal(response.status_code, text)
                    del response.headers["Content-Type"], response.headers["Content-Length"]
                    response.headers["Content-Type"] = "application/json"
                    response.headers["Content-Length"] = str(len(response.body))
                for name, value in HEADERS:
                    if name.decode() not in response.headers:
                        response.headers[name.decode()] = value.decode()
            send_response(response)

        self.conn.send_response = with_headers  # type: ignore[method-assign]
        self.preauth: PreAuthSlot | None = None  # until the endpoint authenticates
        self._linger = 1.0
        self._cut_timer: asyncio.TimerHandle | None = None
        self._auth_timer: asyncio.TimerHandle | None = None

    # -- the unauthenticated pool (httpguard.py) ------------------------------------------
    def hold(self, slot: PreAuthSlot, linger: float, deadline: float) -> None:
        """Take over the connection's ``slot`` right after the upgrade: it counts until
        the endpoint authenticates the WebSocket (``mark_authenticated``); refused or
        closed before that, the connection is cut ``linger`` seconds after its answer;
        neither authenticated nor refused ``deadline`` seconds from now, cut then."""
        self.preauth = slot
        self._linger = linger
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope[SCOPE_KEY] = slot
        if not slot.authenticated:
            self._auth_timer = self.loop.call_later(deadline, self._auth_timed_out)
        self._cut_if_closing()

    def _unauthenticated(self) -> bool:
        return self.preauth is not None and not self.preauth.authenticated

    def _cut_if_closing(self) -> None:
        """Once an unauthenticated WebSocket is refused or closing: cut it soon."""
        if self._cut_timer is not None or self.disconnected or not self._unauthenticated():
            return
        if self.close_sent or self.transport.is_closing():
            self._cut_timer = self.loop.call_later(self._linger, self._cut)

    def _cut(self) -> None:
        self._cut_timer = None
        if not self.disconnected:
            self.transport.abort()

    def _auth_timed_out(self) -> None:
        self._auth_timer = None
        if self._unauthenticated() and not self.disconnected:
            self._cut()

    def evictable(self) -> bool:
        """Refused, and only lingering until it is cut: the first to make room."""
        return self._cut_timer is not None and not self.disconnected

    def evict(self) -> None:
        if self.preauth is not None:
            self.preauth.release()
        if self._cut_timer is not None:
            self._cut_timer.cancel()
        self._cut()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._cut_timer, self._auth_timer):
            if timer is not None:
                timer.cancel()
        self._cut_timer = self._auth_timer = None
        if self.preauth is not None:
            self.preauth.release()
        super().connection_lost(exc)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if self.preauth is not None and scope is not None:
            scope[SCOPE_KEY] = self.preauth

    async def run_asgi(self) -> None:
        try:
            await super().run_asgi()
        finally:
            self._cut_if_closing()

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()
        self._cut_if_closing()

    def shutdown(self) -> None:
        super().shutdown()
        self._cut_if_closing()

    async def send(self, message: Any) -> None:
        # uvicorn's run_asgi logs "ASGI callable returned without completing handshake."
        # at ERROR (and tries a 500) for an application that returns while
        # handshake_complete is false, which it sets on an accept or a 403 close but not
        # once a denial response (send_denial_response: a stream's 401 or 404) is out,
        # so every refused dial logged an ERROR. Once that answer is written and the
        # connection closing, the exchange is over; one that returns having sent
        # nothing, or half a denial, still logs.
        try:
            await super().send(message)
        finally:
            self._cut_if_closing()
        if (
            message.get("type") == "websocket.http.response.body"
            and self.initial_response is not None
            and self.close_sent
        ):
            self.handshake_complete = True

    def send_receive_event_to_app(self) -> None:
        # A text message that is not UTF-8 fails the connection with 1007 (RFC 6455,
        # section 8.1), as uvicorn does it, but without its ERROR and traceback
        # (logger.exception): any client past the handshake, authenticated or not,
        # could write one into the log per connection. Only a message that is not ASCII
        # is checked (the agents' frames and the server's own are ASCII): on the common
        # path uvicorn's decoding stays the only one.
        if self.curr_msg_data_type == "text" and not self.close_sent:
            if not all(part.isascii() for part in self.frames):
                try:
                    b"".join(self.frames).decode()
                except UnicodeDecodeError as exc:
                    self.frames = []
                    scope = getattr(self, "scope", None) or {}
                    self.logger.info(
                        "WebSocket %s: a text message that is not UTF-8 (%s): closed (1007)",
                        scope.get("path", "?"),
                        exc.reason,
                    )
                    self.conn.send_close(1007, "text message is not valid UTF-8")
                    self.handle_parser_exception()
                    return
        super().send_receive_event_to_app()

    def data_received(self, data: bytes) -> None:
        self.last_heard = self.loop.time()
        super().data_received(data)
        self._cut_if_closing()

    def _is_agent(self) -> bool:
        scope = getattr(self, "scope", None)
        return scope is not None and scope.get("path") == AGENT_PATH

    def start_keepalive(self) -> None:
        if self._is_agent():
            keepalive.enable(self.transport.get_extra_info("socket"))
        super().start_keepalive()

    def schedule_ping(self) -> None:
        if not self._is_agent():
            super().schedule_ping()
            return
        # The keepalive timer checks for silence instead (stop_keepalive cancels it).
        due = self.last_heard + self.silence_seconds - self.loop.time()
        self.ping_timer = self.loop.call_later(max(1.0, due), self._check_silence)

    def _check_silence(self) -> None:
        self.ping_timer = None
        if self.close_sent or self.transport.is_closing():
            return
        if self.loop.time() - self.last_heard >= self.silence_seconds:
            self.keepalive_timeout()  # 1011 "keepalive ping timeout", as a missed pong
            return
        self.schedule_ping()


def listening_protocol(silence_seconds: float) -> type[ListeningWebSocketProtocol]:
    """The protocol class uvicorn instantiates, with this server's silence timeout."""
    return type(
        "ListeningWebSocketProtocol",
        (ListeningWebSocketProtocol,),
        {"silence_seconds": silence_seconds},
    )
