"""Who is calling: a master (user token) or a machine (credential)."""

from __future__ import annotations

from typing import Any

from starlette.requests import HTTPConnection

from ..errors import Unauthorized
from .httpguard import mark_authenticated
from .ops.enrollment import authenticate_machine
from .ops.users import authenticate_master
from .store.base import Store, Tx

__all__ = [
    "CHECK_AGAIN_SECONDS",
    "bearer",
    "check_again",
    "credential",
    "machine",
    "machine_credential",
    "master",
    "still_valid",
]

#: How often a long-lived answer (a followed stream, a kv wait) checks its credential.
CHECK_AGAIN_SECONDS = 5.0


def bearer(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


async def master(conn: HTTPConnection) -> dict[str, Any]:
    """The calling user; a machine credential is refused here (only a master commands).
    Without a bearer token, the dashboard's session cookie (server/dashboard/sessions.py:
    CSRF-checked) stands for the master token that opened it."""
    token = bearer(conn)
    if token is None:
        from .dashboard.sessions import session_from_cookie

        user = await session_from_cookie(conn)
        if user is not None:
            return dict(user)
        raise Unauthorized("missing bearer token: run `crc login`")
    if token.startswith("crca_"):
        from ..errors import Forbidden

        raise Forbidden("a machine credential cannot use the master API")
    store: Store = conn.app.state.store
    user = await store.read(authenticate_master, token)
    mark_authenticated(conn)
    return user


def credential(conn: HTTPConnection) -> tuple[str, str] | None:
    """What a master request authenticated with: ``("token", bearer)`` or ``("session",
    cookie)``, for ``still_valid`` to check again later (a long-lived answer, such as a
    followed event stream, must end once it is revoked)."""
    token = bearer(conn)
    if token is not None:
        return ("token", token)
    from .dashboard.sessions import COOKIE

    cookie = conn.cookies.get(COOKIE)
    return ("session", cookie) if cookie else None


def machine_credential(conn: HTTPConnection) -> tuple[str, str] | None:
    """What a machine request authenticated with, ``("machine", credential)``, for
    ``check_again``."""
    token = bearer(conn)
    return ("machine", token) if token is not None else None


def check_again(tx: Tx, cred: tuple[str, str] | None) -> None:
    """Unauthorized (saying why) once ``credential``'s or ``machine_credential``'s answer
    is no longer live: a master token revoked, a dashboard session logged out or expired,
    a machine revoked (its group deleted or expired). Runs in the store, within the
    caller's transaction."""
    if cred is None:
        raise Unauthorized("missing bearer token: run `crc login`")
    if cred[0] == "token":
        authenticate_master(tx, cred[1])
    elif cred[0] == "machine":
        authenticate_machine(tx, cred[1])
    else:
        from .dashboard.sessions import authenticate_session

        authenticate_session(tx, cred[1])


def still_valid(tx: Tx, cred: tuple[str, str] | None) -> bool:
    """Whether ``check_again`` passes."""
    try:
        check_again(tx, cred)
    except Unauthorized:
        return False
    return True


async def machine(conn: HTTPConnection) -> dict[str, Any]:
    token = bearer(conn)
    if token is None:
        raise Unauthorized("missing machine credential")
    store: Store = conn.app.state.store
    m = await store.read(authenticate_machine, token)
    mark_authenticated(conn)
    return m
