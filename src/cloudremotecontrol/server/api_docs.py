"""``/v1/docs``: the API's browsable page (Swagger UI), served entirely by this server.

FastAPI's default page loads Swagger UI from a CDN, so it is blank offline or behind a
firewall - where servers like this one often run. Here its JavaScript and CSS come from
the ``fastapi-offline`` package (its copy of Swagger UI 5, which reads the OpenAPI 3.1
document FastAPI makes), served under ``/v1/docs/static/``; the page itself fetches
only ``/v1/openapi.json``. Only those files are used, not the package's app class.
"""

from __future__ import annotations

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

    @app.get(DOCS_PATH, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} API",
            swagger_js_url=f"{static}/swagger-ui-bundle.js",
            swagger_css_url=f"{static}/swagger-ui.css",
            swagger_favicon_url=f"{static}/favicon.png",
        )
