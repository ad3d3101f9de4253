"""Browser sessions of the dashboard: a master token pasted once becomes a session cookie.

The cookie holds a secret like every other credential here (``crcs_<id>_<secret>``,
stored as a SHA-256, compared in constant time). It is HttpOnly (page scripts never see
it), SameSite=Strict (other sites' pages never send it), Secure, and named with the
``__Host-`` prefix (``COOKIE``). A session lasts at most ``SESSION_SECONDS``, ends at
logout or at the next login in the same browser (the cookie it presents is ended), and
dies with the master token that opened it (``crc server revoke-token``).

A session authenticates the same requests a bearer token does, so the pages use the
/v1 API itself and its authorization (every operation scoped to the caller's user);
nothing is checked twice in two ways. What a cookie adds is cross-site request forgery,
so every state-changing request authenticated by a cookie must carry the session's CSRF
token (``X-CSRF-Token`` header, or a ``csrf`` form field): an HMAC of the session
secret, so it needs no storage and another session's token never matches. WebSocket
handshakes (which browsers send with cookies from any page) must come from the
dashboard's own origin.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import urllib.parse
from typing import Any

from starlette.requests import HTTPConnection

from ...errors import Forbidden, Unauthorized
from ...protocol.tokens import new_secret, parse_secret, verify_secret
from ..ops.common import audit, now
from ..ops.users import authenticate_master
from ..store.base import Store, Tx

__all__ = [
    "COOKIE",
    "CSRF_HEADER",
    "SESSION_SECONDS",
    "authenticate_session",
    "csrf_for",
    "end_session",
    "open_session",
    "session_from_cookie",
]

#: ``__Host-``: a browser takes this cookie only when it is Secure, for Path=/ and with no
#: Domain, so neither a subdomain nor a plain-HTTP page can set or shadow it (RFC 6265bis,
#: section 4.1.3.2). Secure even under ``--insecure``: browsers treat loopback
#: (127.0.0.0/8, [::1], localhost) as a secure origin for cookies, and ``--insecure``
#: serves nothing else (tests/system/test_dashboard_cookie_prefix.py, in Chromium).
COOKIE = "__Host-crc_session"
CSRF_HEADER = "x-csrf-token"
SESSION_SECONDS = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def csrf_for(cookie_value: str) -> str:
    """The CSRF token of the session whose cookie is ``cookie_value``."""
    return hmac.new(cookie_value.encode(), b"crc-dashboard-csrf", hashlib.sha256).hexdigest()


def new_form_token() -> str:
    """A token for the login form (double submit: a cookie and a form field)."""
    return secrets.token_urlsafe(24)


# -- operations (run in the store) -------------------------------------------------------


def open_session(
    tx: Tx, token: str, peer: str | None, replacing: str | None = None
) -> dict[str, Any]:
    """Check ``token`` exactly as the API does; return ``{"cookie", "user", "expires"}``.

    ``replacing``: the session cookie the browser presented with the login, if any. A
    browser holds one session: the new cookie overwrites the old one there, so the old
    session is ended here too, rather than left alive on the server for hours for
    whoever copied its cookie."""
    user = authenticate_master(tx, token)
    master = parse_secret(token, "m")
    assert master is not None  # authenticate_master refused anything else
    if replacing:
        end_session(tx, replacing, reason="new login")
    t = now()
    tx.execute("DELETE FROM sessions WHERE expires < ?", (t,))
    secret = new_secret("s")
    tx.execute(
        "INSERT INTO sessions (id, hash, user_id, token_id, created, expires) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (secret.id, secret.hash, user["user_id"], master.id, t, t + SESSION_SECONDS),
    )
    audit(tx, user["user_id"], user["user"], "dashboard.login", None, {"peer": peer})
    return {"cookie": str(secret), "user": user["user"], "expires": t + SESSION_SECONDS}


def authenticate_session(tx: Tx, presented: str) -> dict[str, Any]:
    """``{"user_id", "user", "session"}`` for a live session cookie, else Unauthorized."""
    secret = parse_secret(presented, "s")
    if secret is None:
        raise Unauthorized("malformed session cookie: log in again")
    row = tx.one(
        "SELECT s.hash, s.user_id, s.expires, u.name FROM sessions s "
        "JOIN users u ON u.id = s.user_id "
        "JOIN master_tokens t ON t.id = s.token_id AND t.revoked IS NULL "
        "WHERE s.id = ?",
        (secret.id,),
    )
    if row is None or not verify_secret(secret, row["hash"]):
        raise Unauthorized("unknown or ended session: log in again")
    if row["expires"] < now():
        raise Unauthorized("session expired: log in again")
    return {"user_id": row["user_id"], "user": row["name"], "session": secret.id}


def end_session(tx: Tx, presented: str, reason: str | None = None) -> bool:
    """Log out: the session is gone for good. True if there was one (a live session
    whose secret matches: a made-up or ended cookie ends nothing)."""
    try:
        user = authenticate_session(tx, presented)
    except Unauthorized:
        return False
    tx.execute("DELETE FROM sessions WHERE id = ?", (user["session"],))
    details = {"reason": reason} if reason else {}
    audit(tx, user["user_id"], user["user"], "dashboard.logout", None, details)
    return True


# -- on a request ------------------------------------------------------------------------


def _same_origin(conn: HTTPConnection) -> bool:
    origin = conn.headers.get("origin")
    if origin is None:
        return True  # not a cross-origin request (browsers send Origin with those)
    host = conn.headers.get("host", "")
    return urllib.parse.urlsplit(origin).netloc == host and bool(host)


def csrf_ok(conn: HTTPConnection, cookie_value: str, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(
        csrf_for(cookie_value).encode(), str(presented).encode()
    )


async def session_from_cookie(
    conn: HTTPConnection, form_csrf: str | None = None
) -> dict[str, Any] | None:
    """The user of the request's session cookie, or None when it has none (or the server
    runs without the dashboard). A state-changing request (any method but GET, HEAD and
    OPTIONS; any WebSocket handshake) must be same-origin and, over HTTP, carry the
    CSRF token: Forbidden otherwise."""
    if not getattr(conn.app.state, "dashboard", False):
        return None
    cookie = conn.cookies.get(COOKIE)
    if not cookie:
        return None
    store: Store = conn.app.state.store
    user = await store.read(authenticate_session, cookie)
    websocket = conn.scope["type"] == "websocket"
    if websocket or conn.scope.get("method") not in SAFE_METHODS:
        if not _same_origin(conn):
            raise Forbidden("cross-origin request refused", code="csrf")
        if not websocket and not csrf_ok(conn, cookie, form_csrf or conn.headers.get(CSRF_HEADER)):
            raise Forbidden("missing or wrong CSRF token: reload the dashboard page", code="csrf")
    return user
