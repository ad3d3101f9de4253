"""``/v1/docs``: the API's browsable page (Swagger UI), served entirely by this server.

FastAPI's default page loads Swagger UI from a CDN, so it is blank offline or behind a
firewall - where servers like this one often run. Here its JavaScript and CSS come from
the ``fastapi-offline`` package (its copy of Swagger UI 5, which reads the OpenAPI 3.1
document FastAPI makes), served under ``/v1/docs/static/``; the page itself fetches
only ``/v1/openapi.json``. Only those files are used, not the package's app class.

The page starts Swagger UI with one inline script, so it has a policy of its own: the
server's (secheaders.py) with that script admitted by its hash, the inline styles and
``data:`` images Swagger UI draws with, and nothing from elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

__all__ = ["DOCS_PATH", "add_docs"]

DOCS_PATH = "/v1/docs"


def add_docs(app: FastAPI, openapi_url: str) -> None:
    """Serve Swagger UI at ``/v1/docs`` from the package's own copy of its files."""
    from importlib.resources import files

    assets = files("fastapi_offline") / "static"
    static = f"{DOCS_PATH}/static"
    app.mount(static, StaticFiles(directory=str(assets)), name="swagger-ui")

    page = get_swagger_ui_html(
        openapi_url=openapi_url,
        title=f"{app.title} API",
        swagger_js_url=f"{static}/swagger-ui-bundle.js",
        swagger_css_url=f"{static}/swagger-ui.css",
        swagger_favicon_url=f"{static}/favicon.png",
    ).body
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode() + "'"
        for script in re.findall(rb"<script>(.*?)</script>", bytes(page), re.DOTALL)
    )
    csp = (
        f"default-src 'none'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; font-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )

    @app.get(DOCS_PATH, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": csp})
