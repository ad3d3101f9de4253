"""TCP keepalive on an agent's connection: the kernel notices a peer that vanished.

A VM destroyed or cut off sends no FIN or RST: its connection stays open until something
is sent and goes unanswered. WebSocket pings find that out, but each one is a TLS record
and a frame handled in Python at both ends, and with ten thousand agents those pings were
the server's whole idle CPU. TCP keepalive probes cost the processes nothing: the kernel
sends them after ``IDLE_SECONDS`` without traffic, every ``INTERVAL_SECONDS``, and drops
the connection after ``COUNT`` unanswered ones; ``TCP_USER_TIMEOUT`` bounds data left
unacknowledged as long, where probes are not sent. Both ends of an agent's control
connection set them, so each notices a vanished peer within ``DEAD_PEER_SECONDS``; the
agent's WebSocket pings (``AGENT_PING_SECONDS``, protocol/limits.py) are then only there
for a peer whose kernel answers but whose process does not.
"""

from __future__ import annotations

import socket
from typing import Any

__all__ = ["COUNT", "DEAD_PEER_SECONDS", "IDLE_SECONDS", "INTERVAL_SECONDS", "enable"]

IDLE_SECONDS = 20
INTERVAL_SECONDS = 10
COUNT = 3
DEAD_PEER_SECONDS = IDLE_SECONDS + INTERVAL_SECONDS * COUNT


def enable(sock: Any) -> bool:
    """Turn keepalive on for ``sock`` (a socket, or asyncio's ``TransportSocket``).

    Options a platform lacks are left at its defaults (keepalive itself is everywhere);
    returns False when the socket refused them (it is closed, or not TCP).
    """
    if sock is None:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (
            ("TCP_KEEPIDLE", IDLE_SECONDS),
            ("TCP_KEEPINTVL", INTERVAL_SECONDS),
            ("TCP_KEEPCNT", COUNT),
            ("TCP_USER_TIMEOUT", DEAD_PEER_SECONDS * 1000),
        ):
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError:
        return False
    return True
