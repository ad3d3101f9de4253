"""The group key/value store over HTTP, for the master and for the group's machines.

``GET …?wait=SECONDS&newer_than=VERSION`` long-polls until the key exists with a
version above ``newer_than`` (woken by the group's event bus, not by polling). A wait
does not outlive its credential: each look at the key checks it again, and so does a
look every ``auth.CHECK_AGAIN_SECONDS`` while nothing happens, so a master token revoked
(or a dashboard session ended, or the group deleted) or a machine revoked meanwhile ends
the wait with 401 (404) rather than the value.

Waits at once are capped per machine (``MAX_KV_WAITS_PER_MACHINE``) and per master user
(``MAX_KV_WAITS_PER_USER``), in each server process: each holds a connection (a file
descriptor), and one credential holding a thousand would lock everyone else out. A wait
past the cap is refused at once with 429 ``rate_limited`` and ``Retry-After``; a read
without ``wait`` is never refused.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import Field

from ..errors import NotFound, RateLimited, TimedOut
from ..protocol.limits import (
    KV_WAIT_RETRY_AFTER_SECONDS,
    MAX_KV_WAIT_SECONDS,
    MAX_KV_WAITS_PER_MACHINE,
    MAX_KV_WAITS_PER_USER,
)
from ..protocol.names import check_kv_key, check_machine_may_write, kv_wait_timed_out
from . import auth
from .models import StrictBody
from .ops import kv as kv_ops
from .ops.common import live_group
from .slots import slots
from .store.base import Store, Tx

router = APIRouter(prefix="/v1")
Master = Annotated[dict[str, Any], Depends(auth.master)]
Machine = Annotated[dict[str, Any], Depends(auth.machine)]
MAX_WAIT = MAX_KV_WAIT_SECONDS


class KvIn(StrictBody):
    # Required: a body without it (``{}``) is a mistake, not a request to store null
    # (``{"value": null}`` says that).
    value: Any = Field(description="the key's new value: any JSON, null included")


async def _group_id(request: Request, user: dict[str, Any], group: str) -> str:
    store: Store = request.app.state.store
    row = await store.read(live_group, user["user_id"], group)
    return str(row["id"])


_WAITED: dict[int | str, dict[str, Any]] = {
    404: {
        "description": "No such group or key (not_found), or a wait (?wait=) that ended "
        "without a version above newer_than (timeout)"
    },
    429: {
        "description": "Too many waits (?wait=) at once by this machine or user "
        "(rate_limited): see Retry-After"
    },
}


def _waiting(
    request: Request, wait: float, who: tuple[str, str], cap: int
) -> contextlib.AbstractContextManager[None]:
    """A place among ``who``'s waits in this server process (none needed for a read
    that does not wait)."""
    if wait <= 0:
        return contextlib.nullcontext()

    def refused() -> RateLimited:
        kind = "machine" if who[0] == "machine" else "user"
        return RateLimited(
            f"too many key/value waits at once by this {kind}: at most {cap} may wait "
            "at the same time; let one end, then wait again",
            retry_after=KV_WAIT_RETRY_AFTER_SECONDS,
        )

    return slots(request, "kv_waiters").hold(who, cap, refused)


@router.get("/groups/{group}/kv", tags=["kv"])
async def list_keys(group: str, user: Master, request: Request) -> dict[str, Any]:
    gid = await _group_id(request, user, group)
    return {"group": group, "keys": await request.app.state.store.read(kv_ops.kv_list, gid)}


@router.put("/groups/{group}/kv/{key:path}", tags=["kv"])
async def master_set(
    group: str, key: str, body: KvIn, user: Master, request: Request
) -> dict[str, Any]:
    store: Store = request.app.state.store
    return await store.write(kv_ops.master_kv_set, user, group, key, body.value)


@router.get("/groups/{group}/kv/{key:path}", tags=["kv"], responses=_WAITED)
async def master_get(
    group: str,
    key: str,
    user: Master,
    request: Request,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT)] = 0,
    newer_than: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    gid = await _group_id(request, user, group)
    with _waiting(request, wait, ("user", str(user["user_id"])), MAX_KV_WAITS_PER_USER):
        return await _get(request, gid, key, wait, newer_than, auth.credential(request))


@router.put("/agent/kv/{key:path}", tags=["agent"])
async def agent_set(key: str, body: KvIn, m: Machine, request: Request) -> dict[str, Any]:
    check_kv_key(key)
    check_machine_may_write(key)
    store: Store = request.app.state.store
    return await store.write(kv_ops.kv_set, m["group_id"], key, body.value, m["name"])


@router.get("/agent/kv/{key:path}", tags=["agent"], responses=_WAITED)
async def agent_get(
    key: str,
    m: Machine,
    request: Request,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT)] = 0,
    newer_than: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    cred = auth.machine_credential(request)
    with _waiting(request, wait, ("machine", str(m["id"])), MAX_KV_WAITS_PER_MACHINE):
        item = await _get(request, m["group_id"], key, wait, newer_than, cred)
    # Which user wrote it is the master's business: a machine learns only "master".
    item.pop("user", None)
    return item


async def _get(
    request: Request,
    group_id: str,
    key: str,
    wait: float,
    newer_than: int,
    cred: tuple[str, str] | None,
) -> dict[str, Any]:
    store: Store = request.app.state.store
    check_kv_key(key)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    with request.app.state.bus.subscribe(group_id) as wake:
        while True:
            wake.clear()
            try:
                if wait <= 0:  # the credential was checked a moment ago
                    item = await store.read(kv_ops.kv_get, group_id, key)
                else:
                    item = await store.read(_kv_if_authorized, cred, group_id, key)
                if item["version"] > newer_than:
                    return item
            except NotFound as exc:
                if wait <= 0 or exc.details.get("field") == "group":
                    raise
            left = deadline - loop.time()
            if left <= 0:
                raise TimedOut(kv_wait_timed_out(key, wait, newer_than))
            try:
                await asyncio.wait_for(wake.wait(), min(left, auth.CHECK_AGAIN_SECONDS))
            except asyncio.TimeoutError:
                pass


def _kv_if_authorized(
    tx: Tx, cred: tuple[str, str] | None, group_id: str, key: str
) -> dict[str, Any]:
    """The key, read in the same transaction that finds the waiter's credential still
    live (Unauthorized otherwise) and its group not deleted (NotFound)."""
    auth.check_again(tx, cred)
    if tx.one("SELECT id FROM groups WHERE id = ? AND deleted IS NULL", (group_id,)) is None:
        raise NotFound("the group was deleted", field="group")
    return kv_ops.kv_get(tx, group_id, key)
