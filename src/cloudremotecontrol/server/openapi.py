"""The served OpenAPI document (``/v1/openapi.json``) says which errors each operation
can answer, with their shape.

FastAPI lists only the success status and a ``422`` this server never sends (its
validation errors are ``400``, mapped once in ``app.py``). Here every operation gets
the statuses it can answer, all with the one error shape of ``errors.py``::

    {"error": {"code": "not_found", "message": "...", "details": {...}}}

* every operation: ``413`` (a body over the limit, any method), ``431`` (headers over
  the limit) and ``503`` (too many connections without a credential, or shutting
  down): server/httpguard.py and app.py, before any route is chosen;
* operations with parameters or a body: ``400``; with a path parameter or a body that
  names things: ``404``;
* operations that take a token or credential: ``401`` and ``403``; those that change
  something: ``409``;
* enrollment: ``401`` (key rejected) and ``429`` (too many failures from an address).

An operation with an error of its own declares it on its route (FastAPI's
``responses=``, a description naming the code), and is given the error shape here.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from . import auth

__all__ = ["install_openapi"]

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "machine-readable, e.g. not_found"},
                "message": {"type": "string", "description": "what went wrong, what to do"},
                "details": {"type": "object"},
            },
        }
    },
}

_DESCRIPTIONS = {
    "400": "Invalid input (invalid_input, malformed_json)",
    "401": "Missing, unknown or revoked token or credential (unauthorized, revoked, key_rejected)",
    "403": "This token or credential may not do this (forbidden)",
    "404": "No such group, machine, job, key or file (not_found)",
    "409": "Conflicts with the current state (conflict)",
    "413": "Request body over the limit (too_large)",
    "429": "Too many failed attempts from this address: see Retry-After (rate_limited)",
    "431": "Request header section over the limit (headers_too_large)",
    "503": "Unavailable: too many connections without a credential, or shutting down",
}


def _auth_kind(dependant: Dependant) -> str | None:
    for dep in dependant.dependencies:
        if dep.call is auth.master:
            return "master"
        if dep.call is auth.machine:
            return "machine"
        inner = _auth_kind(dep)
        if inner:
            return inner
    return None


def _statuses(route: APIRoute, method: str, op: dict[str, Any]) -> list[str]:
    codes = {"413", "431", "503"}
    params = op.get("parameters") or []
    has_body = "requestBody" in op or method in ("put", "post")
    if params or has_body:
        codes.add("400")
    if any(p.get("in") == "path" for p in params) or has_body:
        codes.add("404")
    if _auth_kind(route.dependant):
        codes |= {"401", "403"}
        if method in ("post", "put", "delete"):
            codes.add("409")
    if route.path == "/v1/agent/enroll":
        codes = (codes - {"404"}) | {"401", "429"}
    return sorted(codes)


def install_openapi(app: FastAPI, routers: list[APIRouter]) -> None:
    """Replace ``app.openapi`` with the generator described above (``routers``: those
    included in ``app``, whose routes say which operation takes which credential)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        components["Error"] = ERROR_SCHEMA
        ref = {"$ref": "#/components/schemas/Error"}
        routes = {
            (re.sub(r"\{(\w+):\w+\}", r"{\1}", r.path), m.lower()): r
            for router in routers
            for r in router.routes
            if isinstance(r, APIRoute)
            for m in (r.methods or ())
        }
        for path, item in schema.get("paths", {}).items():
            for method, op in item.items():
                if not isinstance(op, dict) or "responses" not in op:
                    continue
                op["responses"].pop("422", None)
                route = routes.get((path, method))
                if route is None:
                    continue
                for code in _statuses(route, method, op):
                    op["responses"].setdefault(code, {"description": _DESCRIPTIONS[code]})
                for code, answer in op["responses"].items():  # the route's own too
                    if code[0] in "45":
                        answer["content"] = {"application/json": {"schema": ref}}
        app.openapi_schema = schema
        return schema

    # FastAPI's documented way to supply the OpenAPI document is to replace this method.
    app.openapi = openapi  # type: ignore[method-assign]
