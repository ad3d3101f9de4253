"""Who may do what, checked against a real server: only a user's own master tokens reach
the master API, users never see each other's groups, machines never command, and an
enrollment key is worth nothing once used, expired or revoked.

The matrix is built from the server's own OpenAPI document, so an endpoint added later
fails here until it is given a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from wire_helpers import (
    assert_error,
    assert_no_traceback_in_server_log,
    bearer,
    close_code,
    enroll,
    forge,
    pinned_http,
    recv_json,
    wire_agent,
    ws_open,
)

from cloudremotecontrol.errors import NotFound

BLOB = b"the content of a file alice uploaded\n"
SHA = hashlib.sha256(BLOB).hexdigest()
MACHINE_REFUSED = "a machine credential cannot use the master API"
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


# -- the matrix -------------------------------------------------------------------------


@dataclass
class Res:
    """The identifiers a request names: alice's real ones, or ones that never existed."""

    group: str
    job_id: str
    sha256: str
    key: str  # in the group's key/value store
    machine: str  # a pending machine of the group


Request = tuple[str, str, Callable[[Res], dict[str, Any]]]

# Every master endpoint with a request alice may make (checked at the end, in this order,
# so the refusals are about who asks and never about what is asked).
MASTER: list[Request] = [
    ("GET", "/v1/whoami", lambda r: {}),
    ("GET", "/v1/groups", lambda r: {}),
    ("POST", "/v1/groups", lambda r: {"json": {"name": "fresh", "machines": [{"name": "m"}]}}),
    ("GET", "/v1/groups/{group}", lambda r: {}),
    ("POST", "/v1/groups/{group}/jobs", lambda r: {"json": {"to": "a", "argv": ["true"]}}),
    ("GET", "/v1/groups/{group}/jobs", lambda r: {"params": {"limit": 5}}),
    ("POST", "/v1/groups/{group}/hosts-sync", lambda r: {"json": {"to": "all"}}),
    (
        "POST",
        "/v1/groups/{group}/messages",
        lambda r: {"json": {"to": "a", "type": "user.hi", "body": {"n": 1}}},
    ),
    ("GET", "/v1/groups/{group}/events", lambda r: {"params": {"since": 0}}),
    ("GET", "/v1/groups/{group}/cursor", lambda r: {}),
    ("GET", "/v1/jobs/{job_id}", lambda r: {}),
    ("GET", "/v1/jobs/{job_id}/events", lambda r: {}),
    ("GET", "/v1/jobs/{job_id}/file", lambda r: {}),
    ("POST", "/v1/jobs/{job_id}/cancel", lambda r: {}),
    ("HEAD", "/v1/blobs/{sha256}", lambda r: {}),
    ("GET", "/v1/blobs/{sha256}", lambda r: {}),
    ("PUT", "/v1/blobs/{sha256}", lambda r: {"content": BLOB}),
    (
        "POST",
        "/v1/groups/{group}/files",
        lambda r: {"json": {"to": "a", "sha256": r.sha256, "path": "/tmp/crc-authz-file"}},
    ),
    (
        "POST",
        "/v1/groups/{group}/pulls",
        lambda r: {"json": {"machine": "a", "path": "/etc/hostname"}},
    ),
    ("GET", "/v1/groups/{group}/kv", lambda r: {}),
    ("PUT", "/v1/groups/{group}/kv/{key}", lambda r: {"json": {"value": "10.0.0.6"}}),
    ("GET", "/v1/groups/{group}/kv/{key}", lambda r: {}),
    ("POST", "/v1/groups/{group}/machines/{machine}/key", lambda r: {"json": {"key_ttl": 60}}),
    (
        "PUT",
        "/v1/groups/{group}/teardown",
        lambda r: {"json": {"provider": "vultr", "api_key": "VULTR-KEY-OF-ALICE"}},
    ),
    ("DELETE", "/v1/groups/{group}/teardown", lambda r: {}),
    ("GET", "/v1/audit", lambda r: {"params": {"group": r.group}}),
    (
        "PUT",
        "/v1/groups/{group}/run",
        lambda r: {
            "json": {
                "run_id": RUN_ID,
                "scenario": "lab",
                "steps": [{"name": "s", "kind": "run", "to": "a", "needs": [], "retries": 0}],
            }
        },
    ),
    (
        "POST",
        "/v1/groups/{group}/run/report",
        lambda r: {"json": {"type": "phase", "run_id": RUN_ID, "phase": "steps"}},
    ),
    ("GET", "/v1/groups/{group}/run", lambda r: {}),
    ("DELETE", "/v1/groups/{group}", lambda r: {}),
]
# Endpoints for machine credentials (the agent's side).
AGENT: list[Request] = [
    ("GET", "/v1/agent/whoami", lambda r: {}),
    ("GET", "/v1/agent/roster", lambda r: {}),
    ("GET", "/v1/agent/blobs/{sha256}", lambda r: {}),
    ("PUT", "/v1/agent/uploads/{job_id}", lambda r: {"content": b"late upload"}),
    ("GET", "/v1/agent/kv/{key}", lambda r: {}),
    ("PUT", "/v1/agent/kv/{key}", lambda r: {"json": {"value": "from a machine"}}),
]
# Shells and forwards (a connected machine is needed for alice's own pass: see
# test_streams_are_only_for_the_groups_master_and_its_own_machine).
STREAMS: list[Request] = [
    ("POST", "/v1/groups/{group}/streams", lambda r: {"json": {"machine": "a", "kind": "shell"}}),
    ("GET", "/v1/groups/{group}/sessions", lambda r: {}),
    ("GET", "/v1/sessions/{stream}/recording", lambda r: {}),
]
# Endpoints that take no bearer credential at all.
PUBLIC = {
    ("GET", "/v1/health"),
    ("POST", "/v1/agent/enroll"),
    ("GET", "/v1/agent/package"),
    ("GET", "/v1/agent/package.sha256"),
    ("GET", "/v1/agent/wheels"),
    ("GET", "/v1/agent/wheels/{filename}"),
}
# The dashboard's pages: a browser session only (no bearer token), alice's own things.
DASHBOARD: list[Request] = [
    ("GET", "/dashboard/", lambda r: {}),
    ("GET", "/dashboard/groups/{group}", lambda r: {}),
    ("GET", "/dashboard/groups/{group}/rows", lambda r: {"params": {"names": "a,b"}}),
    ("GET", "/dashboard/groups/{group}/run", lambda r: {}),
    ("GET", "/dashboard/groups/{group}/jobs", lambda r: {}),
    ("GET", "/dashboard/groups/{group}/files", lambda r: {}),
    ("GET", "/dashboard/groups/{group}/messages", lambda r: {}),
    ("GET", "/dashboard/groups/{group}/kv", lambda r: {}),
    ("GET", "/dashboard/groups/{group}/events", lambda r: {"params": {"type": "job."}}),
    ("GET", "/dashboard/groups/{group}/audit", lambda r: {}),
    ("GET", "/dashboard/groups/{group}/machines/{machine}/terminal", lambda r: {}),
    ("GET", "/dashboard/jobs/{job_id}", lambda r: {}),
    ("POST", "/dashboard/logout", lambda r: {}),
]
# Dashboard routes anyone may call: the login form and its post, assets, the root.
DASHBOARD_PUBLIC = {
    ("GET", "/"),
    ("GET", "/dashboard/login"),
    ("POST", "/dashboard/login"),
    ("GET", "/dashboard/static/{name}"),
}
RUN_ID = "f" * 32
UNSAFE = {"POST", "PUT", "DELETE", "PATCH"}
# Master endpoints where another user acts on its own namespace, not on alice's things.
OWN_NAMESPACE = {
    ("GET", "/v1/whoami"),
    ("GET", "/v1/groups"),
    ("POST", "/v1/groups"),
    ("PUT", "/v1/blobs/{sha256}"),
    ("GET", "/v1/audit"),
}


# -- helpers ------------------------------------------------------------------------------


@pytest.fixture
def http(server: Any) -> Iterator[httpx.Client]:
    with pinned_http(server) as c:
        yield c


def call(http: httpx.Client, req: Request, res: Res, auth: str | None) -> httpx.Response:
    """``auth`` is the whole Authorization header value (None: no header)."""
    method, path, kwargs = req
    headers = {} if auth is None else {"Authorization": auth}
    return http.request(
        method,
        path.format(
            group=res.group, job_id=res.job_id, sha256=res.sha256, key=res.key, machine=res.machine
        ),
        headers=headers,
        **kwargs(res),
    )


def send(http: httpx.Client, req: Request, res: Res, headers: dict[str, str]) -> httpx.Response:
    """``req`` with exactly these headers (a session cookie, a CSRF token, an Origin)."""
    method, path, kwargs = req
    http.cookies.clear()  # nothing but ``headers`` speaks for the caller
    return http.request(
        method,
        path.format(
            group=res.group, job_id=res.job_id, sha256=res.sha256, key=res.key, machine=res.machine
        ),
        headers=headers,
        **kwargs(res),
    )


def session_of(server: Any, token: str) -> tuple[str, str]:
    """Log in through the dashboard's form, as a browser does (a client of its own);
    return the session cookie and the session's CSRF token."""
    with pinned_http(server) as c:
        r = c.get("/dashboard/login")
        assert r.status_code == 200, r.text
        form = {"token": token, "form_token": r.cookies["__Host-crc_login"], "next": "/dashboard/"}
        r = c.post("/dashboard/login", data=form)
        assert r.status_code == 303 and r.headers["location"] == "/dashboard/", r.text
        cookie = r.cookies["__Host-crc_session"]
        page = c.get("/dashboard/")
        found = re.search(r'<meta name="crc-csrf" content="([0-9a-f]{64})">', page.text)
        assert found, page.text
    return cookie, found.group(1)


def jar(cookie: str) -> dict[str, str]:
    return {"Cookie": f"__Host-crc_session={cookie}"}


def snapshot(env: Any, http: httpx.Client, job_id: str) -> dict[str, Any]:
    """What alice sees: any change here means a refused request did something."""
    audit = http.get("/v1/audit", headers={"Authorization": bearer(env.token)})
    assert audit.status_code == 200, audit.text
    return {
        "groups": env.client.list_groups(),
        "group": env.client.group("lab"),
        "cursor": env.client.event_cursor("lab"),
        "job": env.client.job(job_id),
        "audit": audit.json()["records"],
    }


@dataclass
class Scene:
    res: Res
    machine_cred: str  # machine a of alice's group lab, enrolled but never connected
    revoked_token: str


def make_scene(env: Any, http: httpx.Client) -> Scene:
    """alice: group lab (a, b), an uploaded file, and a pull job whose file a uploaded."""
    keys = {
        m["name"]: m["key"]
        for m in env.client.create_group("lab", ["a", "b"], ttl=86400)["machines"]
    }
    cred = enroll(http, keys["a"])
    alice = bearer(env.token)
    r = http.put(f"/v1/blobs/{SHA}", content=BLOB, headers={"Authorization": alice})
    assert r.status_code == 200, r.text
    r = http.post(
        "/v1/groups/lab/pulls",
        json={"machine": "a", "path": "/etc/hostname"},
        headers={"Authorization": alice},
    )
    assert r.status_code == 201, r.text
    job_id = r.json()["job_id"]
    r = http.put(
        f"/v1/agent/uploads/{job_id}",
        content=b"a's hostname\n",
        headers={"Authorization": bearer(cred)},
    )
    assert r.status_code == 200, r.text
    r = http.put(
        "/v1/groups/lab/kv/db/host", json={"value": "10.0.0.5"}, headers={"Authorization": alice}
    )
    assert r.status_code == 200, r.text
    # A second token of alice's, good until the admin revokes it.
    laptop = env.server.admin("add-token", "alice", "laptop")["token"]
    assert http.get("/v1/whoami", headers={"Authorization": bearer(laptop)}).status_code == 200
    env.server.admin("revoke-token", "alice", "laptop")
    return Scene(Res("lab", job_id, SHA, "db/host", "b"), cred, laptop)


def openapi_operations(http: httpx.Client) -> set[tuple[str, str]]:
    r = http.get("/v1/openapi.json")
    assert r.status_code == 200, r.text
    return {
        (method.upper(), path)
        for path, item in r.json()["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


async def refused_connection(server: Any, auth: str | None) -> tuple[dict[str, Any], int]:
    """Connect, say hello; return the frame the server answers and its close code."""
    async with ws_open(server, auth) as ws:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps({"type": "hello", "ack": 0, "ready": True}))
        frame = await recv_json(ws)
        return frame, await close_code(ws)


# -- tests ----------------------------------------------------------------------------------


def dashboard_operations() -> set[tuple[str, str]]:
    """The dashboard's pages (HTML for browsers, kept out of the API's document)."""
    from fastapi.routing import APIRoute

    from cloudremotecontrol.server.dashboard.routes import router

    return {("GET", "/")} | {
        (method, re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path))
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods
        if method.lower() in HTTP_METHODS and method != "HEAD"
    }


def test_the_matrix_covers_every_endpoint_the_server_documents(http):
    documented = openapi_operations(http)
    assert not {p for _, p in documented if p == "/" or p.startswith("/dashboard")}
    documented |= dashboard_operations()
    covered = {(m, p) for m, p, _ in MASTER + AGENT + DASHBOARD + STREAMS}
    covered |= PUBLIC | DASHBOARD_PUBLIC
    assert len(covered) == len(MASTER) + len(AGENT) + len(DASHBOARD) + len(STREAMS) + len(
        PUBLIC
    ) + len(DASHBOARD_PUBLIC)  # no duplicate rows
    missing = sorted(documented - covered)
    assert not missing, f"endpoints without an authorization row here: {missing}"
    stale = sorted(covered - documented)
    assert not stale, f"rows for endpoints the server no longer has: {stale}"
    assert MASTER[-1][0] == "DELETE"  # alice's own pass below deletes the group last
    assert {(m, p) for m, p, _ in MASTER} >= OWN_NAMESPACE
    for method, path in PUBLIC - {("POST", "/v1/agent/enroll")}:  # enroll: see below
        path = path.replace("{filename}", "none-1-cp312-cp312-win_amd64.whl")
        expected = 404 if path.endswith(".whl") else 200  # no wheel in this server's dir
        assert http.request(method, path).status_code == expected, path


def test_master_api_refuses_missing_bad_revoked_tokens_and_machine_credentials(env, http):
    scene = make_scene(env, http)
    before = snapshot(env, http, scene.res.job_id)
    strangers = {
        "no token": None,
        "empty bearer": "Bearer",
        "not bearer": env.token,  # the right token without the scheme
        "malformed token": "Bearer not-a-token",
        "unknown token": "Bearer crcm_0123456789abcdef_" + "x" * 32,
        "forged secret": bearer(forge(env.token)),
        "revoked token": bearer(scene.revoked_token),
    }
    for name, auth in strangers.items():
        for req in MASTER:
            resp = call(http, req, scene.res, auth)
            assert_error(resp, 401, "unauthorized")
            if name == "revoked token" and req[0] != "HEAD":
                assert "revoked" in resp.json()["error"]["message"]
    for req in MASTER:
        resp = call(http, req, scene.res, bearer(scene.machine_cred))
        msg = assert_error(resp, 403, "forbidden")
        assert req[0] == "HEAD" or msg == MACHINE_REFUSED
    # Nothing changed: no group created or deleted, no job, no message, no event.
    assert snapshot(env, http, scene.res.job_id) == before
    assert [g["group"] for g in env.client.list_groups()] == ["lab"]

    # Every request above was well formed: alice herself may make each one.
    alice = bearer(env.token)
    for req in MASTER[:-1]:
        resp = call(http, req, scene.res, alice)
        assert resp.status_code in (200, 201), f"{req[0]} {req[1]}: {resp.text}"
    # The push above is open for machine a, so its credential may now fetch the file.
    r = http.get(f"/v1/agent/blobs/{SHA}", headers={"Authorization": bearer(scene.machine_cred)})
    assert r.status_code == 200 and r.content == BLOB
    resp = call(http, MASTER[-1], scene.res, alice)
    assert resp.status_code == 200 and resp.json()["deleted"] is True
    # Deleting the group revoked its machine credential.
    r = http.get("/v1/agent/whoami", headers={"Authorization": bearer(scene.machine_cred)})
    assert_error(r, 401, "revoked")
    assert_no_traceback_in_server_log(env.server)


def test_another_user_never_sees_alices_groups_jobs_or_files(env, http):
    scene = make_scene(env, http)
    before = snapshot(env, http, scene.res.job_id)
    bob = bearer(env.server.add_user("bob"))
    ghost = Res(
        "ghost",
        uuid.uuid4().hex,
        hashlib.sha256(b"never uploaded").hexdigest(),
        "no/such/key",
        "nobody",
    )

    def masked(resp: httpx.Response, res: Res) -> tuple[int, str]:
        text = resp.text.replace(f"'{res.group}'", "'<group>'").replace(f"'{res.key}'", "'<k>'")
        return resp.status_code, text.replace(res.job_id, "<job>").replace(res.sha256, "<sha>")

    for req in MASTER:
        if (req[0], req[1]) in OWN_NAMESPACE:
            continue
        resp = call(http, req, scene.res, bob)
        assert_error(resp, 404, "not_found")
        # Indistinguishable from asking about something that never existed.
        assert masked(resp, scene.res) == masked(call(http, req, ghost, bob), ghost)
    r = http.get("/v1/whoami", headers={"Authorization": bob})
    assert r.status_code == 200 and r.json()["user"] == "bob"
    r = http.get("/v1/groups", headers={"Authorization": bob})
    assert r.status_code == 200 and r.json() == {"groups": []}
    for params in ({}, {"group": "lab"}):
        r = http.get("/v1/audit", params=params, headers={"Authorization": bob})
        assert r.status_code == 200
        assert not [rec for rec in r.json()["records"] if rec["group"] is not None], r.text
    assert snapshot(env, http, scene.res.job_id) == before

    # Names are per user: bob may have a "lab" too (a conflict would reveal alice's).
    r = http.post(
        "/v1/groups",
        json={"name": "lab", "machines": [{"name": "z"}]},
        headers={"Authorization": bob},
    )
    assert r.status_code == 201, r.text
    r = http.get("/v1/groups/lab", headers={"Authorization": bob})
    assert [m["name"] for m in r.json()["machines"]] == ["z"]
    # Uploading the same content makes bob an owner of his copy, not of alice's jobs.
    r = http.put(f"/v1/blobs/{SHA}", content=BLOB, headers={"Authorization": bob})
    assert r.status_code == 200, r.text
    r = http.get(f"/v1/jobs/{scene.res.job_id}/file", headers={"Authorization": bob})
    assert_error(r, 404, "not_found")
    r = http.get("/v1/groups", headers={"Authorization": bob})
    assert [g["group"] for g in r.json()["groups"]] == ["lab"]
    assert r.json()["groups"][0]["machines"] == 1
    assert snapshot(env, http, scene.res.job_id) == before
    assert_no_traceback_in_server_log(env.server)


def test_agent_endpoints_and_connection_refuse_master_tokens_and_bad_credentials(env, http):
    scene = make_scene(env, http)
    keys = env.client.create_group("gone", ["g"])["machines"]
    gone_cred = enroll(http, keys[0]["key"])
    env.client.delete_group("gone")
    refused = {  # the Authorization header, and the error code the server answers with
        "no credential": (None, "unauthorized"),
        "master token": (bearer(env.token), "unauthorized"),
        "malformed": ("Bearer crca_nonsense", "unauthorized"),
        "unknown": ("Bearer crca_0123456789abcdef_" + "x" * 32, "revoked"),
        "forged secret": (bearer(forge(scene.machine_cred)), "revoked"),
        "of a deleted group": (bearer(gone_cred), "revoked"),
    }
    for auth, code in refused.values():
        for req in AGENT:
            assert_error(call(http, req, scene.res, auth), 401, code)
    # The machine's own credential works (positive control).
    r = http.get("/v1/agent/whoami", headers={"Authorization": bearer(scene.machine_cred)})
    assert r.json() == {"machine": "a", "group": "lab", "kind": "machine"}

    async def connections() -> None:
        for name, (auth, code) in refused.items():
            frame, close_code = await refused_connection(env.server, auth)
            assert frame["type"] == "revoked", (name, frame)
            assert frame["error"]["code"] == code, (name, frame)
            assert close_code == 4401, name
        # And the credential of machine a connects.
        async with wire_agent(env.server, scene.machine_cred, "lab", "a"):
            pass

    asyncio.run(connections())
    assert http.get("/v1/health").status_code == 200
    assert_no_traceback_in_server_log(env.server)


def test_a_machine_can_neither_command_its_peers_nor_reach_another_group(env, http):
    keys = {
        m["name"]: m["key"] for m in env.client.create_group("lab", ["a", "b", "c"])["machines"]
    }
    cred_a, cred_c = enroll(http, keys["a"]), enroll(http, keys["c"])
    env.agent("b", keys["b"])  # a real agent: it must run nothing a sends
    env.wait_state("lab", ["b"], "ready")
    cred_x = enroll(http, env.client.create_group("other", ["x"])["machines"][0]["key"])
    marker = env.tmp / "a-commanded-b"
    job_id = uuid.uuid4().hex
    commands = [
        ("job.run", "b", {"job_id": job_id, "argv": ["touch", str(marker)]}),
        ("job.run", "all", {"job_id": job_id, "command": f"touch {marker}"}),
        ("job.cancel", "b", {"job_id": job_id}),
        (
            "file.put",
            "b",
            {"job_id": job_id, "sha256": SHA, "size": len(BLOB), "path": str(marker)},
        ),
        ("file.get", "b", {"job_id": job_id, "path": "/etc/hostname"}),
        (
            "hosts.sync",
            "b",
            {"job_id": job_id, "group": "lab", "entries": [["192.0.2.66", "evil"]]},
        ),
        ("system.roster", "b", {}),
    ]

    async def scenario() -> tuple[int, int]:
        async with (
            wire_agent(env.server, cred_a, "lab", "a") as a,
            wire_agent(env.server, cred_c, "lab", "c") as c,
            wire_agent(env.server, cred_x, "other", "x") as x,
        ):
            cursor, other_cursor = env.client.event_cursor("lab"), env.client.event_cursor("other")
            for kind, to, body in commands:
                frames = await a.send_msg(kind, body, to=to)
                errors = [f for f in frames if f["type"] == "error"]
                assert len(errors) == 1 and errors[0]["error"]["code"] == "unknown_type", frames
            # Naming another group's machine (even claiming to be in its group) reaches
            # nothing; claiming to be the master changes nothing either.
            frames = await a.send_msg("user.hi", {"n": 1}, to="x", envelope={"group": "other"})
            assert [f["type"] for f in frames] == ["error", "ack"]
            assert "no machine 'x'" in frames[0]["error"]["message"]
            frames = await a.send_msg("user.hi", {"n": 2}, to="c", envelope={"from": "master"})
            assert [f["type"] for f in frames] == ["ack"]
            got = await c.next_msg()
            assert (got["from"], got["group"], got["type"], got["body"]) == (
                "a",
                "lab",
                "user.hi",
                {"n": 2},
            )
            # x received nothing from a: the master's message is the first it gets.
            env.client.send_message("other", "x", "user.ping", {})
            got = await x.next_msg()
            assert (got["from"], got["type"]) == ("master", "user.ping")
            return cursor, other_cursor

    cursor, other_cursor = asyncio.run(scenario())
    events = list(env.client.events("lab", since=cursor))
    refusals = [e for e in events if e["type"] == "agent.error"]
    assert len(refusals) == len(commands) + 1
    assert all(e["machine"] == "a" for e in refusals)
    assert not [e for e in events if e["type"].startswith("job.")]
    with pytest.raises(NotFound):
        env.client.job(job_id)
    other = [
        e for e in env.client.events("other", since=other_cursor) if e["type"] != "machine.state"
    ]  # x going offline as the test ends
    assert [(e["type"], e["data"].get("from")) for e in other] == [("message.sent", "master")]
    # b is alive and has worked through its queue: the master's job runs, a's never did.
    results = [
        e
        for e in env.client.run("lab", "b", argv=["true"])
        if e["type"] == "job.status" and e["data"]["status"] == "succeeded"
    ]
    assert len(results) == 1
    assert not marker.exists()
    # Nor can it read or write another group's key/value store: each sees its own.
    alice = {"Authorization": bearer(env.token)}
    assert (
        http.put("/v1/groups/lab/kv/db/host", json={"value": "10.0.0.5"}, headers=alice).status_code
        == 200
    )
    as_x = {"Authorization": bearer(cred_x)}
    assert_error(http.get("/v1/agent/kv/db/host", headers=as_x), 404, "not_found")
    assert http.put("/v1/agent/kv/db/host", json={"value": "evil"}, headers=as_x).status_code == 200
    r = http.get("/v1/agent/kv/db/host", headers={"Authorization": bearer(cred_a)})
    assert r.json()["value"] == "10.0.0.5"
    assert [g["group"] for g in env.client.list_groups()] == ["lab", "other"]


def test_enrollment_keys_are_single_use_expire_and_die_with_their_group(env, http):
    brief = env.client.create_group("brief", ["t"], key_ttl=1)["machines"][0]
    keys = {
        m["name"]: m["key"] for m in env.client.create_group("keys", ["k1", "k2", "k3"])["machines"]
    }
    doomed_key = env.client.create_group("doomed", ["d"])["machines"][0]["key"]
    env.client.delete_group("doomed")

    def refused(key: Any, part: str) -> None:
        assert_error(http.post("/v1/agent/enroll", json={"key": key}), 401, "key_rejected", part)

    enroll(http, keys["k1"])
    refused(keys["k1"], "already used")
    # A guess with a real key id but the wrong secret neither works nor burns the key,
    # and learns nothing about the key: only its holder hears "used" or "revoked".
    refused(forge(keys["k2"]), "rejected")
    refused(forge(keys["k1"]), "rejected")
    refused(forge(doomed_key), "rejected")
    enroll(http, keys["k2"])
    refused("crck_0123456789abcdef_" + "z" * 32, "rejected")
    for malformed in ("hello", "crck_", "crck__x", env.token, ""):
        refused(malformed, "malformed")
    refused(doomed_key, "revoked")
    time.sleep(max(0.0, brief["key_expires"] + 0.2 - time.time()))  # same host, same clock
    refused(brief["key"], "expired")
    states = {m["name"]: m["state"] for m in env.client.group("keys")["machines"]}
    assert states == {"k1": "enrolled", "k2": "enrolled", "k3": "pending"}
    assert env.client.group("brief")["machines"][0]["state"] == "pending"


def test_agent_run_with_a_refused_key_exits_with_one_clear_line(env, http):
    keys = {
        m["name"]: m["key"] for m in env.client.create_group("lab", ["used", "spare"])["machines"]
    }
    enroll(http, keys["used"])
    cases = {
        "already used": keys["used"],
        "enrollment key rejected": "crck_0123456789abcdef_" + "z" * 32,
        "malformed enrollment key": "not-a-key",
    }
    for i, (part, key) in enumerate(cases.items()):
        state_dir = env.tmp / f"refused-{i}"
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "cloudremotecontrol",
                "agent",
                "run",
                "--url",
                env.server.url,
                "--key",
                key,
                "--fingerprint",
                env.server.fingerprint,
                "--state-dir",
                str(state_dir),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 3, (r.returncode, r.stderr)
        assert "Traceback" not in r.stderr + r.stdout
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("crc: error:"), r.stderr
        assert part in lines[0] and key not in lines[0]
        assert not (state_dir / "credential.json").exists()
    # The spare key was never touched by all this.
    assert {m["name"]: m["state"] for m in env.client.group("lab")["machines"]} == {
        "used": "enrolled",
        "spare": "pending",
    }


def test_dashboard_pages_need_a_live_session_and_show_each_user_only_their_own(env, http):
    scene = make_scene(env, http)
    cookie, csrf = session_of(env.server, env.token)
    refused = {
        "no session": {},
        "malformed cookie": jar("nonsense"),
        "unknown session": jar("crcs_0123456789abcdef_" + "x" * 32),
        "forged secret": jar(forge(cookie)),
        "master token as a cookie": jar(env.token),
        "master token as bearer": {"Authorization": bearer(env.token)},
        "machine credential": {"Authorization": bearer(scene.machine_cred)},
    }
    pages = [req for req in DASHBOARD if req[0] == "GET"]
    for name, headers in refused.items():
        for req in pages:
            resp = send(http, req, scene.res, headers)
            if req[1].endswith("/rows"):  # JSON for the page's script
                assert_error(resp, 401, "unauthorized")
                continue
            assert resp.status_code == 303, (name, req[1], resp.status_code)
            assert resp.headers["location"].startswith("/dashboard/login?next="), name
            # A panel refresh (htmx) sends the whole page to the login form instead.
            resp = send(http, req, scene.res, {**headers, "HX-Request": "true"})
            assert resp.status_code == 401 and resp.headers["hx-redirect"].startswith(
                "/dashboard/login"
            ), (name, req[1])
    # Alice's session: every page, under the dashboard's CSP.
    for req in pages:
        resp = send(http, req, scene.res, jar(cookie))
        assert resp.status_code == 200, (req[1], resp.text[:500])
        assert "script-src 'self'" in resp.headers["content-security-policy"]
        assert resp.headers["x-frame-options"] == "DENY"
    # Bob's session: alice's group and job are "not found", exactly like ones that never
    # existed; his list of groups is empty.
    bob_cookie, bob_csrf = session_of(env.server, env.server.add_user("bob"))
    ghost = Res("ghost", uuid.uuid4().hex, SHA, "no/such/key", "nobody")
    for req in pages:
        resp = send(http, req, scene.res, jar(bob_cookie))
        if req[1] == "/dashboard/":
            assert resp.status_code == 200 and "/dashboard/groups/lab" not in resp.text
            continue
        assert resp.status_code == 404, (req[1], resp.status_code)
        other = send(http, req, ghost, jar(bob_cookie))
        assert other.status_code == 404

        def masked(text: str, res: Res) -> str:
            for quoted in (f"'{res.group}'", f"&#39;{res.group}&#39;"):
                text = text.replace(quoted, "<group>")
            return text.replace(res.job_id, "<job>")

        assert masked(resp.text, scene.res) == masked(other.text, ghost), req[1]
    # Logging out needs the session's own CSRF token, in the form.
    logout = DASHBOARD[-1]
    assert logout[1] == "/dashboard/logout"
    for wrong in ("", "0" * 64, bob_csrf):
        resp = http.post(
            "/dashboard/logout", data={"csrf": wrong} if wrong else {}, headers=jar(cookie)
        )
        # The dashboard's error page (a browser shows it), with a Log out of its own.
        assert resp.status_code == 403 and "text/html" in resp.headers["content-type"]
        assert "out of date" in resp.text and csrf in resp.text
        assert not wrong or wrong not in resp.text
        assert send(http, pages[0], scene.res, jar(cookie)).status_code == 200  # still in
    resp = http.post("/dashboard/logout", data={"csrf": csrf}, headers=jar(cookie))
    assert resp.status_code == 303 and resp.headers["location"] == "/dashboard/login"
    assert send(http, pages[0], scene.res, jar(cookie)).status_code == 303  # gone
    assert send(http, pages[0], scene.res, jar(bob_cookie)).status_code == 200  # bob's stays
    assert_no_traceback_in_server_log(env.server)


def test_a_session_cookie_reaches_the_api_as_its_user_and_changes_nothing_without_csrf(env, http):
    scene = make_scene(env, http)
    cookie, csrf = session_of(env.server, env.token)
    _, bob_csrf = session_of(env.server, env.server.add_user("bob"))
    before = snapshot(env, http, scene.res.job_id)  # alice's login is in it
    unsafe = [req for req in MASTER if req[0] in UNSAFE]
    assert len(unsafe) >= 10
    forged = {
        "no CSRF token": {},
        "a wrong token": {"X-CSRF-Token": "0" * 64},
        "another session's token": {"X-CSRF-Token": bob_csrf},
        "from another origin": {"X-CSRF-Token": csrf, "Origin": "https://evil.example"},
    }
    for name, headers in forged.items():
        for req in unsafe:
            resp = send(http, req, scene.res, {**jar(cookie), **headers})
            assert_error(resp, 403, "csrf"), name
    assert snapshot(env, http, scene.res.job_id) == before
    # With its token, the session is alice: every request she may make, in order.
    for req in MASTER[:-1]:
        resp = send(http, req, scene.res, {**jar(cookie), "X-CSRF-Token": csrf})
        assert resp.status_code in (200, 201), f"{req[0]} {req[1]}: {resp.text}"
    run = env.client.run_state("lab")
    assert run["phase"] == "steps" and run["started_by"] == "alice"
    # Revoking the master token that opened the session ends the session too.
    env.server.admin("revoke-token", "alice", "default")
    resp = send(http, MASTER[0], scene.res, jar(cookie))
    assert_error(resp, 401, "unauthorized")
    assert_no_traceback_in_server_log(env.server)


def _stream_ws(server: Any, path: str, auth: str | None) -> Any:
    from websockets.asyncio.client import connect

    from cloudremotecontrol.tlspin import client_context

    ctx, _ = client_context(server.url, server.fingerprint)
    url = "wss://" + server.url.split("://", 1)[1].rstrip("/") + path
    headers = {} if auth is None else {"Authorization": auth}
    return connect(url, ssl=ctx, additional_headers=headers, compression=None, open_timeout=15)


async def _refused_ws(server: Any, path: str, auth: str | None) -> tuple[int, str]:
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as exc:
        async with _stream_ws(server, path, auth):
            pass
    body = json.loads(exc.value.response.body or b"{}")
    return exc.value.response.status_code, body["error"]["code"]


def test_streams_are_only_for_the_groups_master_and_its_own_machine(env, http):
    keys = {m["name"]: m["key"] for m in env.client.create_group("lab", ["a", "b"])["machines"]}
    cred_a, cred_b = enroll(http, keys["a"]), enroll(http, keys["b"])
    alice, bob = bearer(env.token), bearer(env.server.add_user("bob"))
    refusals = {
        "no token": (None, 401, "unauthorized"),
        "unknown token": ("Bearer crcm_0123456789abcdef_" + "x" * 32, 401, "unauthorized"),
        "machine credential": (bearer(cred_a), 403, "forbidden"),
        "another user": (bob, 404, "not_found"),
    }

    def request(req: Request, auth: str | None, stream: str) -> httpx.Response:
        method, path, kwargs = req
        headers = {} if auth is None else {"Authorization": auth}
        url = path.replace("{group}", "lab").replace("{stream}", stream)
        return http.request(method, url, headers=headers, **kwargs(None))  # type: ignore[arg-type]

    async def scene() -> None:
        async with wire_agent(env.server, cred_a, "lab", "a") as agent:
            for auth, status, code in refusals.values():
                for req in STREAMS:
                    assert_error(request(req, auth, "st_" + "x" * 22), status, code)
            # alice's pass: the stream is asked of machine a, and of no one else.
            r = request(STREAMS[0], alice, "")
            assert r.status_code == 201, r.text
            sid = r.json()["stream"]
            opened = await recv_json(agent.ws)
            assert opened["type"] == "stream.open" and opened["stream"] == sid
            master_path, agent_path = f"/v1/streams/{sid}", f"/v1/agent/streams/{sid}"
            for auth, status, code in refusals.values():
                got = await _refused_ws(env.server, master_path, auth)
                assert got == (status, code if status != 403 else "forbidden")
            assert await _refused_ws(env.server, agent_path, alice) == (401, "unauthorized")
            assert await _refused_ws(env.server, agent_path, bearer(cred_b)) == (404, "not_found")
            assert await _refused_ws(env.server, agent_path, None) == (401, "unauthorized")
            # The right ends meet, and what the (hostile) machine sends is checked.
            async with _stream_ws(env.server, agent_path, bearer(cred_a)) as machine_end:
                async with _stream_ws(env.server, master_path, alice) as master_end:
                    assert await _refused_ws(env.server, master_path, alice) == (
                        409,
                        "conflict",
                    )
                    await machine_end.send(b"hello from a")
                    assert await asyncio.wait_for(master_end.recv(), 15) == b"hello from a"
                    await master_end.send(b"keys")
                    assert await asyncio.wait_for(machine_end.recv(), 15) == b"keys"
                    await machine_end.send('{"type": "stream.resize", "cols": 1, "rows": 1}')
                    error = json.loads(await asyncio.wait_for(master_end.recv(), 15))
                    assert error["type"] == "stream.error" and error["code"] == "protocol"
                    with pytest.raises(ConnectionClosed):
                        await asyncio.wait_for(master_end.recv(), 15)
        # Who opened it, on what, and what it carried: in alice's audit only.
        closes = [r for r in env.client.audit("lab") if r["action"] == "stream.close"]
        assert closes and closes[-1]["detail"]["stream"] == sid
        assert closes[-1]["detail"]["bytes_from_machine"] == len(b"hello from a")
        r = http.get("/v1/audit", headers={"Authorization": bob})
        assert not [x for x in r.json()["records"] if x["action"].startswith("stream.")]

    asyncio.run(scene())
    assert_no_traceback_in_server_log(env.server)


@pytest.mark.parametrize("path", ["/v1/groups/lab/events", "/v1/jobs/{job}/events"])
def test_a_token_revoked_while_its_event_stream_is_open_sees_nothing_more(env, path):
    """An event stream followed with a token ends once the admin revokes the token: what
    happens after the revocation is not sent on it, and the client is told why (401)."""
    from cloudremotecontrol.errors import Unauthorized
    from cloudremotecontrol.master.client import Client

    env.client.create_group("lab", ["a"])
    job = env.client.start_job("lab", "a", argv=["true"])  # a never connects: pending
    laptop = env.server.admin("add-token", "alice", "laptop")["token"]
    client = Client(env.server.url, laptop, env.server.fingerprint)
    if path.startswith("/v1/jobs"):
        stream = client.job_events(job["job_id"], follow=True)
    else:
        stream = client.events("lab", since=0, follow=True, keepalive=True)
    seen: list[Any] = []
    outcome: list[BaseException] = []
    first = threading.Event()

    def follow() -> None:
        try:
            for ev in stream:
                first.set()
                if ev is not None:
                    seen.append(ev)
        except BaseException as exc:  # noqa: BLE001 -- handed to the test's thread
            outcome.append(exc)
        finally:
            first.set()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    assert first.wait(30), "the stream never answered"
    assert seen and not outcome, outcome
    env.server.admin("revoke-token", "alice", "laptop")
    # Events after the revocation: the job's target cancelled, a message to machine a.
    env.client.cancel_job(job["job_id"])
    env.client.send_message("lab", "a", "user.secret", {"password": "hunter2"})
    reader.join(60)
    assert not reader.is_alive(), "the revoked token's stream is still open"
    client.close()
    assert len(outcome) == 1 and isinstance(outcome[0], Unauthorized), outcome
    assert "revoked" in str(outcome[0])
    sent = [ev.type for ev in seen]
    assert "job.status" not in sent and "message.sent" not in sent, sent
    assert "hunter2" not in repr([ev.data for ev in seen])
    # alice's other token still follows the group, from the start.
    types = [ev.type for ev in env.client.events("lab", since=0)]
    assert "job.status" in types and "message.sent" in types
    assert_no_traceback_in_server_log(env.server)


def test_a_shell_opened_with_a_token_is_closed_once_the_token_is_revoked(env, http):
    """A shell (or forward) spliced with a master token does not outlive the token: once
    the admin revokes it the master's end is told why and closed, and the close is
    audited."""
    keys = {m["name"]: m["key"] for m in env.client.create_group("lab", ["a"])["machines"]}
    cred_a = enroll(http, keys["a"])
    laptop = env.server.admin("add-token", "alice", "laptop")["token"]

    async def scene() -> None:
        async with wire_agent(env.server, cred_a, "lab", "a") as agent:
            r = http.post(
                "/v1/groups/lab/streams",
                json={"machine": "a", "kind": "shell"},
                headers={"Authorization": bearer(laptop)},
            )
            assert r.status_code == 201, r.text
            sid = r.json()["stream"]
            assert (await recv_json(agent.ws))["stream"] == sid
            agent_end = _stream_ws(env.server, f"/v1/agent/streams/{sid}", bearer(cred_a))
            master_end = _stream_ws(env.server, f"/v1/streams/{sid}", bearer(laptop))
            async with agent_end as machine, master_end as master:
                await machine.send(b"$ ")
                assert await asyncio.wait_for(master.recv(), 15) == b"$ "
                env.server.admin("revoke-token", "alice", "laptop")
                error: dict[str, Any] = {}
                deadline = time.monotonic() + 40  # a safety net
                with contextlib.suppress(ConnectionClosed):
                    while time.monotonic() < deadline:
                        with contextlib.suppress(ConnectionClosed):
                            await machine.send(b"output after the revocation\n")
                        try:
                            got = await asyncio.wait_for(master.recv(), 0.5)
                        except asyncio.TimeoutError:
                            continue
                        if isinstance(got, str):
                            error = json.loads(got)
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(master.recv(), 15)
                assert error.get("type") == "stream.error", error
                assert error["code"] == "unauthorized" and "revoked" in error["message"]

    asyncio.run(scene())
    closes = [r for r in env.client.audit("lab") if r["action"] == "stream.close"]
    assert closes and "revoked" in str(closes[-1]["detail"].get("error"))
    assert_no_traceback_in_server_log(env.server)


@pytest.mark.parametrize("who", ["master token", "machine"])
def test_a_kv_wait_ends_once_its_credential_is_revoked(env, http, who):
    """A long kv wait does not outlive its credential: a master token revoked by the admin,
    or a machine revoked when its group's TTL passes, ends the wait with 401 and never
    gets the value set after the revocation."""
    import sqlite3

    keys = {
        m["name"]: m["key"] for m in env.client.create_group("lab", ["a"], ttl=3600)["machines"]
    }
    if who == "machine":
        cred, path = enroll(http, keys["a"]), "/v1/agent/kv/go"
    else:
        cred = env.server.admin("add-token", "alice", "laptop")["token"]
        path = "/v1/groups/lab/kv/go"
    answers: list[httpx.Response] = []

    def wait() -> None:
        with pinned_http(env.server) as c:
            answers.append(
                c.get(
                    path, params={"wait": 90}, headers={"Authorization": bearer(cred)}, timeout=120
                )
            )

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    # Let the wait begin: a request that arrives after the revocation is refused at the
    # door, which is not what this test is about (it would pass without the re-check).
    time.sleep(1.5)
    assert waiter.is_alive() and not answers, answers
    if who == "machine":
        # The group's TTL passes (set so in its database): the server revokes its machines
        # within a second; the group stays, and its owner can still set keys.
        with contextlib.closing(sqlite3.connect(env.server.data_dir / "crc.db")) as db, db:
            db.execute("UPDATE groups SET expires = ? WHERE name = 'lab'", (time.time() - 1,))
        deadline = time.monotonic() + 30  # a safety net
        while not env.client.group("lab")["expired"]:
            assert time.monotonic() < deadline, "the group never expired"
            time.sleep(0.2)
    else:
        env.server.admin("revoke-token", "alice", "laptop")
    env.client.kv_set("lab", "go", {"password": "hunter2"})
    waiter.join(60)
    assert not waiter.is_alive(), "the revoked credential's kv wait is still open"
    assert "hunter2" not in answers[0].text
    assert_error(answers[0], 401, "revoked" if who == "machine" else "unauthorized", "revoked")
    # The owner's own token still reads it.
    assert env.client.kv_get("lab", "go")["value"] == {"password": "hunter2"}
    assert_no_traceback_in_server_log(env.server)


def test_a_kv_wait_on_a_group_deleted_meanwhile_ends_with_404(env):
    """A master's kv wait on a group that is deleted while it waits ends at once with 404,
    not when its wait runs out."""
    env.client.create_group("lab", ["a"])
    answers: list[BaseException] = []

    def wait() -> None:
        try:
            env.client.kv_get("lab", "go", wait=120)
        except BaseException as exc:  # noqa: BLE001 -- handed to the test's thread
            answers.append(exc)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    time.sleep(1.5)  # let the wait begin (one that begins after the deletion gets 404 too)
    env.client.delete_group("lab")
    waiter.join(60)  # a safety net, well below the wait's 120 s
    assert not waiter.is_alive(), "the kv wait on a deleted group is still open"
    assert len(answers) == 1 and isinstance(answers[0], NotFound), answers
    assert "deleted" in str(answers[0])


def test_a_machine_cannot_write_the_keys_crc_up_keeps_its_record_in(env, http):
    """`crc up` records in the group's store which steps succeeded (`crc.up/steps`) and
    the job each step started (`crc.up/job/...`): a machine that wrote them could make
    a resumed `crc up` skip a step or follow another job. Machines read `crc.` keys,
    never write them; their other keys are theirs, and the master writes every key."""
    key = env.client.create_group("lab", ["a"])["machines"][0]["key"]
    cred = enroll(http, key)
    machine = {"Authorization": bearer(cred)}
    env.client.kv_set("lab", "crc.up/steps", {"steps": {}})
    for name in ("crc.up/steps", "crc.up/job/0123456789abcdef", "crc.anything"):
        r = http.put(f"/v1/agent/kv/{name}", json={"value": {"done": True}}, headers=machine)
        assert_error(r, 403, "forbidden", f"key {name!r}: keys starting with 'crc.'")
    assert env.client.kv_get("lab", "crc.up/steps")["value"] == {"steps": {}}
    assert [k["key"] for k in env.client.kv_list("lab")] == ["crc.up/steps"]
    r = http.get("/v1/agent/kv/crc.up/steps", headers=machine)  # read: allowed
    assert r.status_code == 200 and r.json()["value"] == {"steps": {}}
    r = http.put("/v1/agent/kv/crcx", json={"value": 1}, headers=machine)
    assert r.status_code == 200, r.text  # not the prefix: the machine's to write
    assert_no_traceback_in_server_log(env.server)
