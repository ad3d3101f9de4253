"""Opt-in teardown at the provider when a group's TTL passes (``on_ttl: destroy``).

``PUT /v1/groups/G/teardown`` hands the server the provider API key for group G (stored
encrypted: server/teardown.py); ``DELETE`` takes it back. ``GET /v1/groups/G`` shows the
teardown's status under ``teardown``, never the key.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import Field

from ..errors import InvalidInput, Unavailable
from ..providers import teardown_providers
from . import auth
from .models import StrictBody
from .ops import teardown as ops
from .store.base import Store

router = APIRouter(prefix="/v1")
Master = Annotated[dict[str, Any], Depends(auth.master)]


class TeardownIn(StrictBody):
    # A registered provider that offers Feature.SERVER_TEARDOWN (checked in `arm`).
    provider: Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9-]*$")]
    api_key: Annotated[str, Field(min_length=1, max_length=512, pattern=r"^[\x21-\x7e]+$")]


@functools.cache
def _able() -> tuple[str, ...]:
    """The providers installed with this server whose machines it can destroy (read
    once: installing a provider takes a restart anyway)."""
    return tuple(teardown_providers())


@router.put("/groups/{group}/teardown", tags=["groups"])
async def arm(group: str, body: TeardownIn, user: Master, request: Request) -> dict[str, Any]:
    if body.provider not in _able():
        raise InvalidInput(
            f"the server can tear down {', '.join(_able()) or 'no'} machines only, "
            f"not {body.provider!r}",
            field="provider",
        )
    cipher = getattr(request.app.state, "teardown_cipher", None)
    if cipher is None:
        raise Unavailable("this server has no teardown key: it cannot hold provider keys")
    view = await request.app.state.store.write(
        ops.arm_teardown, user["user_id"], group, body.provider, cipher.encrypt(body.api_key)
    )
    return {"group": group, "teardown": view}


@router.delete("/groups/{group}/teardown", tags=["groups"])
async def disarm(group: str, user: Master, request: Request) -> dict[str, Any]:
    store: Store = request.app.state.store
    return await store.write(ops.disarm_teardown, user["user_id"], group)
