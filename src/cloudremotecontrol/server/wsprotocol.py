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
"""

from __future__ import annotations

import json
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Response

from .. import keepalive
from ..errors import code_for_status
from ..protocol.limits import AGENT_SILENCE_SECONDS
from .secheaders import HEADERS

__all__ = ["AGENT_PATH", "ListeningWebSocketProtocol", "json_refusal", "listening_protocol"]

AGENT_PATH = "/v1/agent/connect"


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

    async def send(self, message: Any) -> None:
        # uvicorn's run_asgi logs "ASGI callable returned without completing handshake."
        # at ERROR (and tries a 500) for an application that returns while
        # handshake_complete is false, which it sets on an accept or a 403 close but not
        # once a denial response (send_denial_response: a stream's 401 or 404) is out,
        # so every refused dial logged an ERROR. Once that answer is written and the
        # connection closing, the exchange is over; one that returns having sent
        # nothing, or half a denial, still logs.
        await super().send(message)
        if (
            message.get("type") == "websocket.http.response.body"
            and self.initial_response is not None
            and self.close_sent
        ):
            self.handshake_complete = True

    def data_received(self, data: bytes) -> None:
        self.last_heard = self.loop.time()
        super().data_received(data)

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
