"""What a fresh VM's startup script needs from the server: the agent package, and (for
the master writing that script) a machine's enrollment key again.

The package endpoints are public: the package holds no secret, and a VM has nothing to
authenticate with before it enrolls. Its integrity comes from the pinned TLS connection
the bootstrap script uses for both the package and its ``.sha256``.

``/v1/agent/wheels`` offers the binary wheels an operator put in the server's
``DATA_DIR/wheels`` (pywin32 for the Windows service host: the agent package itself is
pure Python, pywin32 is not, and a VM should not need PyPI). The bootstrap's helper
picks the one matching its Python and checks the published SHA-256.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import Field

from ..bootstrap.package import AgentPackage, agent_package
from ..errors import NotFound
from . import auth
from .methods import HeadFile
from .models import StrictBody
from .ops.keys import reissue_key
from .store.base import Store

__all__ = ["router"]

router = APIRouter(prefix="/v1")
Master = Annotated[dict[str, Any], Depends(auth.master)]


class KeyReissue(StrictBody):
    key_ttl: float | None = Field(default=None, description="seconds the new key stays valid")


async def _package() -> AgentPackage:
    return await asyncio.to_thread(agent_package)  # built once (~50 ms), then cached


@router.get(
    "/agent/package",
    tags=["agent"],
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "description": "the agent zipapp (crc-agent-VERSION.pyz)",
        }
    },
)
async def get_agent_package(request: Request) -> Response:
    """The agent as a zipapp matching this server's version: ``python3 crc-agent.pyz
    agent run ...``. Verify it against ``/v1/agent/package.sha256``."""
    pkg = await _package()
    etag = f'"{pkg.sha256}"'
    headers = {
        "ETag": etag,
        "X-Crc-Version": pkg.version,
        "X-Crc-Sha256": pkg.sha256,
        "Cache-Control": "no-cache",
    }
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    headers["Content-Disposition"] = f'attachment; filename="{pkg.filename}"'
    return Response(pkg.data, media_type="application/octet-stream", headers=headers)


@router.get(
    "/agent/package.sha256",
    tags=["agent"],
    response_class=Response,
    responses={
        200: {
            "content": {"text/plain": {}},
            "description": "`<hex>  crc-agent-VERSION.pyz` (sha256sum format)",
        }
    },
)
async def get_agent_package_sha256() -> Response:
    pkg = await _package()
    return Response(
        f"{pkg.sha256}  {pkg.filename}\n",
        media_type="text/plain",
        headers={"X-Crc-Version": pkg.version, "Cache-Control": "no-cache"},
    )


_WHEEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+!-]*\.whl")
_hash_lock = threading.Lock()
_hashes: dict[tuple[str, int, int], str] = {}


def _wheel_list(wheel_dir: Path | None) -> dict[str, tuple[Path, str, int]]:
    """``{filename: (path, sha256, size)}`` of the wheels in ``wheel_dir`` (hashes cached
    by path, size and mtime)."""
    out: dict[str, tuple[Path, str, int]] = {}
    if wheel_dir is None or not wheel_dir.is_dir():
        return out
    for path in sorted(wheel_dir.iterdir()):
        if not _WHEEL.fullmatch(path.name) or not path.is_file():
            continue
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        with _hash_lock:
            digest = _hashes.get(key)
        if digest is None:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            with _hash_lock:
                _hashes[key] = digest
        out[path.name] = (path, digest, st.st_size)
    return out


@router.get("/agent/wheels", tags=["agent"])
async def list_agent_wheels(request: Request) -> dict[str, Any]:
    """Binary wheels the agent may need beside its package (pywin32 for the Windows
    service), as the operator put them in ``DATA_DIR/wheels``."""
    wheels = await asyncio.to_thread(_wheel_list, getattr(request.app.state, "wheel_dir", None))
    return {
        "wheels": [
            {"filename": name, "sha256": digest, "size": size}
            for name, (_, digest, size) in wheels.items()
        ]
    }


@router.get(
    "/agent/wheels/{filename}",
    tags=["agent"],
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def get_agent_wheel(filename: str, request: Request) -> Response:
    wheels = await asyncio.to_thread(_wheel_list, getattr(request.app.state, "wheel_dir", None))
    if filename not in wheels:
        raise NotFound(f"no wheel {filename!r} on this server (see GET /v1/agent/wheels)")
    path, digest, _ = wheels[filename]
    return HeadFile(
        path,
        media_type="application/octet-stream",
        filename=filename,
        headers={"X-Crc-Sha256": digest, "Cache-Control": "no-cache"},
    )


@router.post("/groups/{group}/machines/{machine}/key", status_code=201, tags=["groups"])
async def new_machine_key(
    group: str, machine: str, user: Master, request: Request, body: KeyReissue | None = None
) -> dict[str, Any]:
    """A fresh single-use key for a machine that has not enrolled yet (the old key is
    burnt). 409 once the machine has enrolled."""
    store: Store = request.app.state.store
    return await store.write(
        reissue_key, user["user_id"], group, machine, body.key_ttl if body else None
    )
