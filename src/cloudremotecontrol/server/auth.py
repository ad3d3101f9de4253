"""Who is calling: a master (user token) or a machine (credential)."""

from __future__ import annotations

from typing import Any

from starlette.requests import HTTPConnection

from ..errors import Unauthorized
from .httpguard import mark_authenticated
from .ops.enrollment import authenticate_machine
from .ops.users import authenticate_master
from .store.base import Store

__all__ = ["bearer", "machine", "master"]


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


async def machine(conn: HTTPConnection) -> dict[str, Any]:
    token = bearer(conn)
    if token is None:
        raise Unauthorized("missing machine credential")
    store: Store = conn.app.state.store
    m = await store.read(authenticate_machine, token)
    mark_authenticated(conn)
    return m
