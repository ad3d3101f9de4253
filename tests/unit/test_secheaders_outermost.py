"""The security headers wrap the whole application, Starlette's own error handling
included: an internal error's 500 carries them like any page (server/secheaders.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from cloudremotecontrol.server.app import create_app
from cloudremotecontrol.server.secheaders import CSP
from cloudremotecontrol.server.store.base import open_store


def test_an_internal_error_carries_the_security_headers(tmp_path: Path) -> None:
    app = create_app(open_store(f"sqlite:///{tmp_path / 'crc.db'}"), blob_dir=tmp_path / "b")

    @app.get("/dashboard/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get("/dashboard/boom")

    resp = asyncio.run(get())
    assert resp.status_code == 500
    assert resp.json() == {"error": {"code": "internal", "message": "internal server error"}}
    assert resp.headers["content-security-policy"] == CSP
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["x-frame-options"] == "DENY"
    assert resp.headers["referrer-policy"] == "same-origin"
