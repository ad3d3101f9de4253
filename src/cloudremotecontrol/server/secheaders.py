"""The security headers on every answer of the server, errors included.

``SecurityHeaders`` wraps the whole application, outside every other middleware and
Starlette's own error handling: an answer given before any route runs (a NUL in the
URL, a body over the limit, an internal error) carries them like a page does. Answers
that never reach the application - those the HTTP protocol itself writes (a header
section too large, too slow, a malformed request: ``httpguard.py``) - take the same
list from here (``RAW_HEADERS``).

The policy is the dashboard's (docs/dashboard.md): nothing inline, nothing from
elsewhere, no framing. A JSON answer is never rendered as a page, but a browser sent to
one (a link, a mistyped URL) gets the same protection as a page. A route that needs
another policy (the terminal page's style nonce, Swagger UI's inline script) sets its
own ``Content-Security-Policy``; headers a response already has are never replaced.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CSP", "HEADERS", "RAW_HEADERS", "SecurityHeaders"]

#: No inline script or style, nothing from elsewhere, no framing, forms post only here.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
#: The same, as lines of a raw HTTP/1.1 header section.
RAW_HEADERS = b"".join(k + b": " + v + b"\r\n" for k, v in HEADERS)


class SecurityHeaders:
    """Add ``HEADERS`` to every HTTP response that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                names = {k.lower() for k, _ in headers}
                extra = [(k, v) for k, v in HEADERS if k not in names]
                message = {**message, "headers": [*headers, *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)
