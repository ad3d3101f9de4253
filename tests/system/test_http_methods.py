"""Methods answered the way HTTP says, on a real server over TLS: ``HEAD`` wherever
``GET`` is (RFC 9110, 9.3.2), ``405`` with an ``Allow`` naming every method of the
path, and ``426 Upgrade Required`` for a WebSocket endpoint reached without the upgrade.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from wire_helpers import (
    assert_error,
    assert_no_traceback_in_server_log,
    bearer,
    enroll,
    pinned_http,
    recv_json,
    ws_open,
)

STREAM = "st_" + "a" * 22
WEBSOCKETS = ["/v1/agent/connect", f"/v1/streams/{STREAM}", f"/v1/agent/streams/{STREAM}"]
# Headers that may differ between two answers to the same request (uvicorn chunks a
# streamed GET body; a HEAD has none to chunk).
VARYING = {"date", "content-length", "etag", "last-modified", "set-cookie", "transfer-encoding"}


@pytest.fixture
def http(env: Any) -> Iterator[httpx.Client]:
    with pinned_http(env.server) as c:
        c.headers["Authorization"] = bearer(env.token)
        yield c


def _get_paths(http: httpx.Client, values: dict[str, str]) -> list[str]:
    doc = http.get("/v1/openapi.json").json()
    paths = [p for p, item in doc["paths"].items() if "get" in item]
    assert len(paths) >= 20, paths
    filled = [re.sub(r"\{(\w+)\}", lambda m: values.get(m[1], "x"), p) for p in paths]
    return [*filled, "/v1/openapi.json", "/v1/docs", "/dashboard/", "/"]


def test_head_answers_like_get_on_every_get_endpoint(env: Any, http: httpx.Client) -> None:
    env.client.create_group("lab", ["a"])
    job = env.client.start_job("lab", "a", argv=["true"])
    values = {"group": "lab", "job_id": job["job_id"], "key": "k", "sha256": "0" * 64}
    for path in _get_paths(http, values):
        get = http.get(path, params={"wait": 0})
        head = http.head(path, params={"wait": 0})
        where = f"HEAD {path}: GET {get.status_code} {get.text[:200]}"
        assert head.status_code == get.status_code, where
        assert head.content == b"", where
        same = {k: v for k, v in get.headers.items() if k not in VARYING}
        assert {k: v for k, v in head.headers.items() if k not in VARYING} == same, where
        assert ("content-length" in head.headers) == ("content-length" in get.headers), where
    # The length HEAD announces is the GET body's (a large, fixed one).
    for path in ("/v1/openapi.json", "/v1/agent/package"):
        get, head = http.get(path), http.head(path)
        assert get.status_code == head.status_code == 200, (path, get.text[:200])
        assert int(head.headers["content-length"]) == len(get.content) > 1000, path
    # A followed event stream answers a HEAD with its headers and ends.
    head = http.head("/v1/groups/lab/events", params={"follow": "true"})
    assert head.status_code == 200 and head.content == b"", head.headers
    assert head.headers["content-type"].startswith("text/event-stream"), head.headers
    # An uploaded file: HEAD (its own operation: "uploaded already?") says what GET does.
    upload = env.tmp / "blob.bin"
    upload.write_bytes(b"x" * 5000)
    sha = env.client.upload(str(upload))["sha256"]
    get, head = http.get(f"/v1/blobs/{sha}"), http.head(f"/v1/blobs/{sha}")
    assert get.status_code == head.status_code == 200, get.text[:200]
    for name in ("content-length", "content-type", "accept-ranges"):
        assert head.headers[name] == get.headers[name], (name, head.headers, get.headers)
    # A HEAD with no credential is refused like the GET, and says nothing more.
    anonymous = http.head("/v1/groups", headers={"Authorization": ""})
    assert_error(anonymous, 401, "unauthorized")
    assert_no_traceback_in_server_log(env.server)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/v1/health", "GET, HEAD"),
        ("PATCH", "/v1/groups", "GET, HEAD, POST"),
        ("PUT", "/v1/groups/lab", "GET, HEAD, DELETE"),
        ("DELETE", "/v1/groups/lab/kv/k", "GET, HEAD, PUT"),
        ("GET", "/v1/groups/lab/messages", "POST"),
        ("HEAD", "/v1/agent/enroll", "POST"),
    ],
)
def test_405_names_every_method_of_the_path_in_allow(
    http: httpx.Client, method: str, path: str, allow: str
) -> None:
    resp = http.request(method, path)
    assert_error(resp, 405, "method_not_allowed", "method not allowed")
    assert resp.headers["allow"] == allow, (method, path, resp.headers)


def test_plain_http_to_a_websocket_endpoint_answers_426_upgrade_required(
    env: Any, http: httpx.Client
) -> None:
    for path in WEBSOCKETS:
        for method in ("GET", "POST", "HEAD"):
            resp = http.request(method, path)
            message = assert_error(resp, 426, "upgrade_required", "WebSocket")
            assert resp.headers["upgrade"] == "websocket", (method, path, resp.headers)
            assert method == "HEAD" or path in message, message
    # The WebSocket itself still opens, and a machine connects through it.
    key = env.client.create_group("ws", ["m"])["machines"][0]["key"]
    cred = enroll(http, key)

    async def hello() -> dict[str, Any]:
        async with ws_open(env.server, bearer(cred)) as ws:
            await ws.send(json.dumps({"type": "hello", "ack": 0, "ready": True}))
            return await recv_json(ws)

    assert asyncio.run(hello())["type"] == "welcome"
    assert_no_traceback_in_server_log(env.server)
