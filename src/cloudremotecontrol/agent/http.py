"""The agent's few HTTPS calls (enrollment, roster, kv, file uploads): stdlib urllib over
the pinned TLS context, with server errors turned into the error hierarchy.

urllib (and the http.client and email modules it loads) is imported on the first call:
an enrolled agent that moves no file never needs it, and saves its memory."""

from __future__ import annotations

import json
import ssl
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import urllib.error

from ..errors import CrcError, TlsUntrusted, Unavailable, error_from_answer, not_crc_server
from ..tlspin import is_untrusted, untrusted_error

__all__ = ["UntrustedServer", "call_json", "http_error"]

# The most of an answer read: the largest the server sends (a roster of the most
# machines a group has, their facts) is a few MiB. More is not the server's answer (a
# proxy or another program streaming without end), and is not held in memory.
MAX_ANSWER_BYTES = 64 << 20


class UntrustedServer(TlsUntrusted, Unavailable):
    """A certificate this computer does not trust, and no fingerprint given: exit 7 as
    TlsUntrusted (``crc agent run`` without ``--fingerprint`` against a self-signed
    server), and still ``Unavailable`` to the agent's loops that try again later."""


def http_error(exc: urllib.error.HTTPError, base: str) -> CrcError:
    """The server's ``{"error": …}`` answer as the matching CrcError (an answer without
    the API's error shape: ``not a CloudRemoteControl server``, naming ``base``, the
    server's URL as the user gave it)."""
    import http.client

    try:
        body = exc.read(MAX_ANSWER_BYTES + 1)
    except (OSError, ValueError, http.client.HTTPException):
        body = b""
    if len(body) > MAX_ANSWER_BYTES:
        body = b""  # not the API's error: too large to be one
    content_type = exc.headers.get("Content-Type") if exc.headers else None
    return error_from_answer(base, exc.code, content_type, body)


def call_json(
    base: str,
    path: str,
    ctx: ssl.SSLContext | None,
    *,
    method: str = "GET",
    body: Any = None,
    data: Any = None,
    credential: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> dict[str, Any]:
    """Send a request for ``path`` (``/v1/...``) to the server at ``base`` (its URL as
    the user gave it), a JSON ``body`` or raw ``data`` such as an open file, and return
    the JSON answer. ``base`` must be http(s): callers got ``ctx`` from client_context(),
    which accepts nothing else."""
    import http.client
    import urllib.error
    import urllib.request

    url = base.rstrip("/") + path
    all_headers = dict(headers or {})
    if credential is not None:
        all_headers["Authorization"] = f"Bearer {credential}"
    if body is not None:
        data = json.dumps(body).encode()
        all_headers["Content-Type"] = "application/json"
    # Only https:// (or loopback http:// with --insecure) URLs reach here: see callers.
    req = urllib.request.Request(url, data=data, method=method, headers=all_headers)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:  # noqa: S310
            raw, status = resp.read(MAX_ANSWER_BYTES + 1), resp.status
            content_type = resp.headers.get("Content-Type")
            if len(raw) > MAX_ANSWER_BYTES:
                raise not_crc_server(base, status, content_type)
    except urllib.error.HTTPError as exc:
        raise http_error(exc, base) from None
    except (http.client.HTTPException, ValueError) as exc:
        # Not HTTP as the server speaks it (a status line, a header or a chunk that
        # does not parse, a body cut short): another program, a proxy, a broken link.
        raise Unavailable(f"cannot reach {url}: {type(exc).__name__}: {exc}") from None
    except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
        # The system's CAs (no fingerprint given: the only context that checks names; a
        # pinned one trusts its certificate alone) do not vouch for the certificate.
        if ctx is not None and ctx.check_hostname and is_untrusted(exc):
            untrusted = untrusted_error(base, getattr(exc, "reason", exc))
            raise UntrustedServer(untrusted.message) from None
        raise Unavailable(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None
    # A success that is not the API's JSON object: another web server, a proxy's or a
    # captive portal's page answered in the server's place.
    try:
        answer = json.loads(raw)
    except ValueError:  # not JSON, not UTF-8
        answer = None
    if not isinstance(answer, dict):
        raise not_crc_server(base, status, content_type)
    return answer
