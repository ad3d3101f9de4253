"""Opt-in teardown at the provider when a group's TTL passes (``on_ttl: destroy``).

``PUT /v1/groups/G/teardown`` hands the server the provider API key for group G (stored
encrypted: server/teardown.py); ``DELETE`` takes it back. ``GET /v1/groups/G`` shows the
teardown's status under ``teardown``, never the key.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import Field

from ..errors import Unavailable
from . import auth
from .models import StrictBody
from .ops import teardown as ops

router = APIRouter(prefix="/v1")
Master = Annotated[dict[str, Any], Depends(auth.master)]


class TeardownIn(StrictBody):
    provider: Literal["vultr"]
    api_key: Annotated[str, Field(min_length=1, max_length=512, pattern=r"^[\x21-\x7e]+$")]


@router.put("/groups/{group}/teardown", tags=["groups"])
async def arm(group: str, body: TeardownIn, user: Master, request: Request) -> dict[str, Any]:
    cipher = getattr(request.app.state, "teardown_cipher", None)
    if cipher is None:
        raise Unavailable("this server has no teardown key: it cannot hold provider keys")
    view = await request.app.state.store.write(
        ops.arm_teardown, user["user_id"], group, body.provider, cipher.encrypt(body.api_key)
    )
    return {"group": group, "teardown": view}


@router.delete("/groups/{group}/teardown", tags=["groups"])
async def disarm(group: str, user: Master, request: Request) -> dict[str, Any]:
    return await request.app.state.store.write(ops.disarm_teardown, user["user_id"], group)
