"""One error hierarchy for server, agent and CLI.

Every error carries a machine-readable ``code``, an HTTP status (mapped once, in the
server) and a CLI exit code (mapped once, in the CLI)::

    CrcError                      500  exit 1   internal
    ├── InvalidInput              400  exit 2   invalid_input (bad JSON, names, fields)
    │   ├── TooLarge              413  exit 2   too_large
    │   └── UpgradeRequired       426  exit 2   upgrade_required (WebSocket endpoint, no upgrade)
    ├── Unauthorized              401  exit 3   unauthorized (no or bad credential)
    ├── Forbidden                 403  exit 3   forbidden (credential may not do this)
    ├── NotFound                  404  exit 4   not_found (group, machine, job, user)
    │   └── TimedOut              404  exit 6   timeout (a long poll ended: nothing new yet)
    │       └── ShellTimedOut     -    exit 6   timeout (a shell's recv/expect; also TimeoutError)
    ├── Conflict                  409  exit 5   conflict (exists already, wrong state)
    │   └── AlreadyRunning        409  exit 9   already_running (another agent has the state dir)
    ├── KeyRejected               401  exit 3   key_rejected (enrollment key used/expired/…)
    ├── Unavailable               503  exit 6   unavailable (server unreachable, shutting down)
    │   └── RateLimited           429  exit 6   rate_limited (too many attempts: try later)
    ├── TlsPinMismatch            -    exit 7   tls_pin_mismatch (fingerprint differs)
    │   └── TlsUntrusted          -    exit 7   tls_untrusted (certificate not trusted: no pin)
    └── ProviderError             502  exit 8   provider_error (the cloud refused or failed)

Messages say what went wrong and, where it helps, what to do next.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "AlreadyRunning",
    "Conflict",
    "CrcError",
    "Forbidden",
    "InvalidInput",
    "KeyRejected",
    "NotFound",
    "ProviderError",
    "RateLimited",
    "ShellTimedOut",
    "TimedOut",
    "TlsPinMismatch",
    "TlsUntrusted",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "UpgradeRequired",
    "error_from_answer",
    "error_from_payload",
    "is_error_payload",
    "not_crc_server",
]


class CrcError(Exception):
    code = "internal"
    http_status = 500
    exit_code = 1
    # The message is a line ending in ":" and one indented line per problem (an error
    # raised here, never one rebuilt from a server's answer); the CLI shows it on one
    # line, the problems separated by "; ".
    multiline = False

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details

    def to_payload(self) -> dict[str, Any]:
        """The JSON body the server sends: ``{"error": {"code", "message", ...}}``."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}


class InvalidInput(CrcError):
    code = "invalid_input"
    http_status = 400
    exit_code = 2


class TooLarge(InvalidInput):
    code = "too_large"
    http_status = 413


class UpgradeRequired(InvalidInput):
    """A plain HTTP request to a WebSocket endpoint (server/methods.py)."""

    code = "upgrade_required"
    http_status = 426


class Unauthorized(CrcError):
    code = "unauthorized"
    http_status = 401
    exit_code = 3


class Forbidden(CrcError):
    code = "forbidden"
    http_status = 403
    exit_code = 3


class KeyRejected(Unauthorized):
    code = "key_rejected"


class NotFound(CrcError):
    code = "not_found"
    http_status = 404
    exit_code = 4


class TimedOut(NotFound):
    """A wait that ended without what it waited for (``GET .../kv/KEY?wait=``): not a
    server failure, so not a 5xx; exit 6 like every "timed out waiting"."""

    code = "timeout"
    exit_code = 6


class ShellTimedOut(TimedOut, TimeoutError):
    """A shell session's ``recv`` or ``expect`` (``Client.shell``) got nothing it waited
    for within its timeout. Also the builtin ``TimeoutError`` (what they raised before),
    so ``except TimeoutError`` keeps working. ``seen`` is the output ``expect`` read
    meanwhile (it is not given again by ``recv``); ``b""`` from ``recv``."""

    def __init__(self, message: str, *, seen: bytes = b"") -> None:
        super().__init__(message)
        self.seen = seen


class Conflict(CrcError):
    code = "conflict"
    http_status = 409
    exit_code = 5


class AlreadyRunning(Conflict):
    code = "already_running"
    exit_code = 9


class Unavailable(CrcError):
    code = "unavailable"
    http_status = 503
    exit_code = 6


class RateLimited(Unavailable):
    code = "rate_limited"
    http_status = 429


class TlsPinMismatch(CrcError):
    code = "tls_pin_mismatch"
    http_status = 495
    exit_code = 7


class ProviderError(CrcError):
    """A provider could not do what was asked (refused key, quota, bad plan, timeout...).

    ``details`` carries ``provider`` and, for HTTP APIs, ``status`` (the HTTP status the
    provider answered) and ``provider_error`` (the provider's own message).

    ``permanent``: the provider refused for good (an HTTP API's 4xx other than 408 and
    429: a key it refuses, a call it forbids, a request it calls invalid), so asking
    again cannot help and a caller that retries (``destroy_scenario``) stops asking.
    What may pass (5xx, 429, the network, a timeout) is not permanent.

    ``unsent``: the request never reached the provider (a refused connection, a failed
    DNS lookup or TLS handshake) or the provider refused it unprocessed (rate limited,
    HTTP 429), so it did nothing: a create that fails so made no machine. A failure
    after the request went out (a timeout waiting for the answer, a connection dropped,
    a 5xx) may have done it all the same, and is not ``unsent``.
    """

    code = "provider_error"
    http_status = 502
    exit_code = 8

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        permanent: bool = False,
        unsent: bool = False,
        **details: Any,
    ) -> None:
        super().__init__(message, code=code, **details)
        self.permanent = permanent
        self.unsent = unsent


class TlsUntrusted(TlsPinMismatch):
    code = "tls_untrusted"


_BY_STATUS: dict[int, type[CrcError]] = {
    400: InvalidInput,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    422: InvalidInput,
    426: UpgradeRequired,
    429: RateLimited,
    431: TooLarge,
    503: Unavailable,
}


def code_for_status(status: int) -> str:
    """The error code of an answer with HTTP ``status`` that carries none of its own
    (another 4xx: ``invalid_input``; anything else: ``internal``)."""
    return _BY_STATUS.get(status, InvalidInput if 400 <= status < 500 else CrcError).code


def is_error_payload(payload: Any) -> bool:
    """Whether ``payload`` has the shape of the API's error answers:
    ``{"error": {"code": ..., "message": "..."}}``."""
    return (
        isinstance(payload, dict)
        and isinstance(payload.get("error"), dict)
        and isinstance(payload["error"].get("message"), str)
    )


def not_crc_server(url: str, status: int, content_type: str | None) -> Unavailable:
    """The error for an answer that is not the API's (a web server's page, a proxy's
    login form or error page): the URL is not a CloudRemoteControl server's."""
    what = (content_type or "no content type").split(";")[0].strip() or "no content type"
    proxy = " (or a proxy in front of one that is down)" if status in (502, 503, 504) else ""
    # A proxy's 502-504 page may be a server restarting: "unavailable", which an event
    # stream waits out; anything else is the wrong URL, which no waiting changes.
    return Unavailable(
        f"{url} is not a CloudRemoteControl server{proxy}: it answered HTTP {status} with "
        f"{what}, not the API's JSON; check the URL",
        code="unavailable" if proxy else "not_crc_server",
    )


def error_from_answer(url: str, status: int, content_type: str | None, body: bytes) -> CrcError:
    """The error of an HTTP error answer (client side): the server's own error when the
    body is the API's ``{"error": ...}`` JSON, else ``not_crc_server``."""
    try:
        payload = json.loads(body) if body else None
    except ValueError:  # not JSON, not UTF-8
        payload = None
    if not is_error_payload(payload):
        return not_crc_server(url, status, content_type)
    return error_from_payload(status, payload)


def error_from_payload(status: int, payload: Any) -> CrcError:
    """Rebuild the error a server answered with (client side)."""
    cls = _BY_STATUS.get(status, CrcError)
    code = None
    message = f"server answered HTTP {status}"
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        err = payload["error"]
        code = str(err.get("code") or "") or None
        message = str(err.get("message") or message)
    if code == "key_rejected":
        cls = KeyRejected
    elif code == "timeout" and cls is NotFound:
        cls = TimedOut
    return cls(message, code=code)
