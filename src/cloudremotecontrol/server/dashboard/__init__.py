"""The web dashboard, served by the server itself under ``/dashboard/`` (docs/dashboard.md).

``install(app)`` adds its pages and its assets. The security headers its responses
carry (CSP first) are those of every answer of the server (``secheaders.py``). The
pages use the /v1 API with a session cookie (sessions.py); with ``crc server run
--no-dashboard`` none of this is installed and cookies mean nothing.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from ..secheaders import CSP

__all__ = ["CSP", "PATH", "install"]

PATH = "/dashboard/"


def install(app: FastAPI) -> None:
    """Serve the dashboard on ``app`` (and send a browser at ``/`` to it)."""
    from .routes import router

    app.state.dashboard = True
    app.include_router(router)

    @app.get("/", include_in_schema=False, response_class=RedirectResponse)
    async def root() -> RedirectResponse:
        """The server's root: to the dashboard."""
        return RedirectResponse(PATH, status_code=307)
