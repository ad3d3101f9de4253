"""Which methods a path answers, said the same way everywhere.

FastAPI routes a ``GET`` operation for ``GET`` only, so ``HEAD`` on most of the API
answered ``405`` while the few plain Starlette routes (``/v1/openapi.json``, the docs'
files) answered it. HTTP says a server that supports ``GET`` on a resource supports
``HEAD`` there too (RFC 9110, section 9.3.2), and a ``405`` names every method the
resource has in ``Allow`` (section 15.5.6). ``Methods``, in front of the router:

* ``HEAD`` where only ``GET`` is routed runs the ``GET`` operation (same status, same
  headers, authentication and errors included) and the answer ends with its headers:
  an event stream then sees its request end and stops, and a file answered with
  ``HeadFile`` is not read. The OpenAPI document lists ``GET`` alone, ``HEAD`` being
  implied; a path with a ``HEAD`` operation of its own (``/v1/blobs/{sha256}``) keeps it;
* a ``405`` carries ``Allow`` with all the path's methods (Starlette names those of the
  first route it tried, e.g. only ``POST`` for ``/v1/groups``);
* a plain HTTP request to a WebSocket endpoint (``/v1/agent/connect``,
  ``/v1/streams/{stream}``, ``/v1/agent/streams/{stream}``) answers ``426 Upgrade
  Required`` with ``Upgrade: websocket`` (RFC 9110, section 15.5.22) and the API's
  error shape, not a ``404`` that says there is no such endpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from fastapi.responses import FileResponse, JSONResponse
from starlette.routing import BaseRoute, Match, Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import UpgradeRequired

__all__ = ["HeadFile", "Methods"]

#: The order methods are named in ``Allow``.
_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
#: Set in the scope of a ``HEAD`` that runs a ``GET`` operation.
_HEAD = "crc.head"


class HeadFile(FileResponse):
    """A file that, for a ``HEAD`` run as ``GET``, sends its headers only (Starlette's
    own ``HEAD`` answer, which does not open the file)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get(_HEAD):
            scope = {**scope, "method": "HEAD"}
        await super().__call__(scope, receive, send)


class Methods:
    """See the module's docstring. ``routes``: the application's routes (read at each
    request, so routes added after the middleware count)."""

    def __init__(self, app: ASGIApp, routes: Iterable[BaseRoute]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        routes = list(_leaves(self.routes))
        # The WebSocket routes first: few, and most requests go no further.
        if _routed(routes, {**scope, "type": "websocket"}, full=True) and not _routed(
            routes, scope, full=False
        ):
            await _upgrade_required(scope, send)
            return
        if scope["method"] == "HEAD" and not _routed(routes, scope, full=True):
            as_get = {**scope, "method": "GET"}
            if _routed(routes, as_get, full=True):
                as_get[_HEAD] = True
                await self.app(as_get, receive, _bodyless(send))
                return
        await self.app(scope, receive, _with_allow(routes, scope, send))


def _leaves(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """The routes themselves: FastAPI (0.160 on) keeps an included router's routes
    behind one entry, which has the router as ``original_router``."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _leaves(inner.routes)
        else:
            yield route


def _routed(routes: list[BaseRoute], scope: Scope, *, full: bool) -> bool:
    """Whether a route takes this request (``full``: its method too); a mount counts
    only for HTTP (its files answer ``HEAD`` themselves)."""
    for route in routes:
        if scope["type"] == "websocket" and not isinstance(route, WebSocketRoute):
            continue
        match, _ = route.matches({**scope})
        if match is Match.FULL or (match is Match.PARTIAL and not full):
            return True
    return False


def _allowed(routes: list[BaseRoute], scope: Scope) -> str:
    methods: set[str] = set()
    for route in routes:
        if isinstance(route, Route):
            match, _ = route.matches({**scope})
            if match is not Match.NONE:
                methods |= route.methods or set()
    if "GET" in methods:
        methods.add("HEAD")
    known = [m for m in _ORDER if m in methods]
    return ", ".join(known + sorted(methods - set(_ORDER)))


def _with_allow(routes: list[BaseRoute], scope: Scope, send: Send) -> Send:
    async def allow(message: Message) -> None:
        if message["type"] == "http.response.start" and message.get("status") == 405:
            allowed = _allowed(routes, scope)
            if allowed:
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"allow"]
                headers.append((b"allow", allowed.encode()))
                message = {**message, "headers": headers}
        await send(message)

    return allow


async def _upgrade_required(scope: Scope, send: Send) -> None:
    path = scope["path"] if len(scope["path"]) <= 200 else scope["path"][:200] + "..."
    err = UpgradeRequired(
        f"{scope['method']} {path} is a WebSocket endpoint: open it with a "
        "WebSocket handshake (Connection: Upgrade, Upgrade: websocket)"
    )
    resp = JSONResponse(
        err.to_payload(),
        status_code=err.http_status,
        headers={"Upgrade": "websocket", "Connection": "Upgrade"},
    )
    await send({"type": "http.response.start", "status": 426, "headers": resp.raw_headers})
    body = b"" if scope["method"] == "HEAD" else resp.body
    await send({"type": "http.response.body", "body": body})


def _bodyless(send: Send) -> Send:
    """``send`` for a ``HEAD`` run as ``GET``: the status and headers (``Content-Length``
    included: that of the body ``GET`` sends), and the answer ends there. What the
    operation sends after is dropped; a stream sees its request end (the server reports
    a disconnect once the answer is complete) and stops."""
    done = False

    async def headers_only(message: Message) -> None:
        nonlocal done
        if message["type"] == "http.response.start":
            await send(message)
            done = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        elif message["type"] != "http.response.body" or not done:
            await send(message)

    return headers_only
