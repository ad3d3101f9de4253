"""What a fresh VM's startup script needs from the server: the agent package, and (for
the master writing that script) a machine's enrollment key again.

The package endpoints are public: the package holds no secret, and a VM has nothing to
authenticate with before it enrolls. Its integrity comes from the pinned TLS connection
the bootstrap script uses for both the package and its ``.sha256``.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from ..bootstrap.package import AgentPackage, agent_package
from . import auth
from .ops.keys import reissue_key

__all__ = ["router"]

router = APIRouter(prefix="/v1")
Master = Annotated[dict[str, Any], Depends(auth.master)]


class KeyReissue(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key_ttl: float | None = Field(default=None, description="seconds the new key stays valid")


async def _package() -> AgentPackage:
    return await asyncio.to_thread(agent_package)  # built once (~50 ms), then cached


@router.get("/agent/package", tags=["agent"], response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}},
                             "description": "the agent zipapp (crc-agent-VERSION.pyz)"}})
async def get_agent_package(request: Request) -> Response:
    """The agent as a zipapp matching this server's version: ``python3 crc-agent.pyz
    agent run ...``. Verify it against ``/v1/agent/package.sha256``."""
    pkg = await _package()
    etag = f'"{pkg.sha256}"'
    headers = {"ETag": etag, "X-Crc-Version": pkg.version, "X-Crc-Sha256": pkg.sha256,
               "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    headers["Content-Disposition"] = f'attachment; filename="{pkg.filename}"'
    return Response(pkg.data, media_type="application/octet-stream", headers=headers)


@router.get("/agent/package.sha256", tags=["agent"], response_class=Response,
            responses={200: {"content": {"text/plain": {}},
                             "description": "`<hex>  crc-agent-VERSION.pyz` (sha256sum format)"}})
async def get_agent_package_sha256() -> Response:
    pkg = await _package()
    return Response(f"{pkg.sha256}  {pkg.filename}\n", media_type="text/plain",
                    headers={"X-Crc-Version": pkg.version, "Cache-Control": "no-cache"})


@router.post("/groups/{group}/machines/{machine}/key", status_code=201, tags=["groups"])
async def new_machine_key(group: str, machine: str, user: Master, request: Request,
                          body: KeyReissue | None = None) -> dict[str, Any]:
    """A fresh single-use key for a machine that has not enrolled yet (the old key is
    burnt). 409 once the machine has enrolled."""
    return await request.app.state.store.write(
        reissue_key, user["user_id"], group, machine, body.key_ttl if body else None)
