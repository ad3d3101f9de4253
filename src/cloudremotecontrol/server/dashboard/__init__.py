"""The web dashboard, served by the server itself under ``/dashboard/`` (docs/dashboard.md).

``install(app)`` adds its pages, its assets and the security headers every one of its
responses carries. The pages use the /v1 API with a session cookie (sessions.py); with
``crc server run --no-dashboard`` none of this is installed and cookies mean nothing.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CSP", "PATH", "SecurityHeaders", "install"]

PATH = "/dashboard/"

#: No inline script or style, nothing from elsewhere, no framing, forms post only here.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


class SecurityHeaders:
    """Add the dashboard's security headers (CSP first) to every response under it."""

    def __init__(self, app: ASGIApp, prefix: str = "/dashboard") -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/" or path.startswith(self.prefix)):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", ())}
                extra = [(k, v) for k, v in _HEADERS if k not in names]
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)


def install(app: FastAPI) -> None:
    """Serve the dashboard on ``app`` (and send a browser at ``/`` to it)."""
    from .routes import router

    app.state.dashboard = True
    app.include_router(router)

    @app.get("/", include_in_schema=False, response_class=RedirectResponse)
    async def root() -> RedirectResponse:
        """The server's root: to the dashboard."""
        return RedirectResponse(PATH, status_code=307)

    app.add_middleware(SecurityHeaders)
