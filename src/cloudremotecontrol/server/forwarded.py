"""Whose address a request comes from, behind a reverse proxy or not.

The peer address of the connection is the client's, unless the connection comes from a
proxy the operator named (``--forwarded-allow-ips``): then ``X-Forwarded-For`` says who
the client is. uvicorn's ``ProxyHeadersMiddleware`` does the reading (the rightmost
address that is not a trusted proxy); this wrapper adds two rules:

* with no proxies configured nothing is trusted, loopback included (uvicorn trusts
  127.0.0.1 by default, and any local process can connect from there);
* what the header gives must be a plain IP address (no scope id, no host name, no
  text): anything else is ignored and the proxy's own address kept, so ``peer_ip`` in
  the audit record and ``public_ip`` in the roster are always addresses.
"""

from __future__ import annotations

import ipaddress
import logging

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

__all__ = ["TrustedProxies", "plain_ip"]

log = logging.getLogger(__name__)

_ORIGINAL = "crc.peer"


def plain_ip(text: str) -> str | None:
    """``text`` as a canonical IPv4/IPv6 address, or None (scope ids refused)."""
    if "%" in text:
        return None
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return None


class TrustedProxies:
    def __init__(self, app: ASGIApp, trusted: tuple[str, ...]) -> None:
        self.app = app
        self.trusted = trusted
        # uvicorn types ASGI apps with its own TypedDicts, Starlette with MutableMapping:
        # the same protocol, two spellings (here and in __call__ below).
        self.proxied = ProxyHeadersMiddleware(self._validated, trusted_hosts=list(trusted))  # type: ignore[arg-type]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or not self.trusted:
            await self.app(scope, receive, send)
            return
        scope[_ORIGINAL] = scope.get("client")
        await self.proxied(scope, receive, send)  # type: ignore[arg-type]

    async def _validated(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        original = scope.get(_ORIGINAL)
        if client is not None and client != original:
            ip = plain_ip(str(client[0]))
            if ip is None:
                log.warning("ignored X-Forwarded-For that is not an IP address")
                scope["client"] = original
            else:
                scope["client"] = (ip, client[1])
        await self.app(scope, receive, send)
