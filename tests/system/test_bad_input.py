"""Bad input gets a clear error (status, machine-readable code, human message; on the CLI
one line and a non-zero exit), never a traceback, and never changes what is stored.
Checked against a real server, through HTTP, the agent WebSocket and the `crc` CLI.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from wire_helpers import (
    WireAgent,
    assert_error,
    assert_no_traceback_in_server_log,
    bearer,
    close_code,
    enroll,
    pinned_http,
    recv_json,
    wire_agent,
    ws_open,
)

from cloudremotecontrol.protocol.limits import (
    MAX_FRAME_BYTES,
    MAX_HTTP_BODY_BYTES,
    MAX_MESSAGE_BODY_BYTES,
)
from cloudremotecontrol.tlspin import client_context

JSON = {"content-type": "application/json"}
G = "/v1/groups"
J = "/v1/groups/lab/jobs"
M = [{"name": "m"}]  # a valid machine list
BAD_NAMES = ["LAB", "a" * 64, "", "a_b", "-ab", "ab-", "a b", "lä", "a.b"]


@pytest.fixture
def http(server: Any) -> Iterator[httpx.Client]:
    with pinned_http(server) as c:
        yield c


def state(env: Any) -> dict[str, Any]:
    """Everything alice can see of her groups: a change means bad input did something."""
    return {
        "groups": env.client.list_groups(),
        "lab": env.client.group("lab"),
        "cursor": env.client.event_cursor("lab"),
    }


def job(**fields: Any) -> dict[str, Any]:
    return {"json": {"to": "a", **fields}}


def chunks(total: int) -> Iterator[bytes]:
    """A request body sent chunked (no Content-Length: the server must count)."""
    while total > 0:
        yield b" " * min(total, 64 << 10)
        total -= 64 << 10


# (method, path, request kwargs, status, code, a part of the message)
CASES: list[tuple[str, str, dict[str, Any], int, str, str]] = [
    # Not JSON, or not the JSON object expected.
    (
        "POST",
        G,
        {"content": b'{"name": "x", ', "headers": JSON},
        400,
        "malformed_json",
        "not valid JSON",
    ),
    ("POST", G, {"content": b"name=x&machines=a", "headers": JSON}, 400, "malformed_json", ""),
    (
        "POST",
        J,
        {"content": b"{'to': 'a', 'argv': ['true']}", "headers": JSON},
        400,
        "malformed_json",
        "",
    ),
    ("POST", "/v1/agent/enroll", {"content": b"{", "headers": JSON}, 400, "malformed_json", ""),
    (
        "POST",
        G,
        {"content": b'{"name": "\xff\xfe", "machines": []}', "headers": JSON},
        400,
        "malformed_json",
        "",
    ),  # not UTF-8
    (
        "POST",
        G,
        {"content": b"[" * 100_000 + b"]" * 100_000, "headers": JSON},
        400,
        "too_deep",
        "request body is nested more than 32 levels deep",
    ),  # nested deeper than any parser recurses: as deep JSON it can parse is
    (
        "PUT",
        G + "/lab/kv/deep",
        {"content": b'{"value": ' + b"[" * 995 + b"]" * 995 + b"}", "headers": JSON},
        400,
        "too_deep",
        "nested more than 32 levels deep",
    ),
    (
        "POST",
        G,
        {"content": b'{"key_ttl": ' + b"9" * 5000 + b"}", "headers": JSON},
        400,
        "malformed_json",
        "request body holds a number with more digits than a number may have",
    ),  # a number longer than Python converts
    ("POST", G, {"json": []}, 400, "invalid_input", ""),
    ("POST", G, {"json": "lab"}, 400, "invalid_input", ""),
    ("POST", G, {}, 400, "invalid_input", ""),
    # Past a declared bound: said in the API's words, with the bound.
    (
        "POST",
        G,
        {"json": {"name": "big", "machines": [{"name": f"m{i}"} for i in range(1001)]}},
        400,
        "invalid_input",
        "invalid machines: takes at most 1000 items, not 1001",
    ),
    (
        "GET",
        G + "/lab/events?since=" + "9" * 20,
        {},
        400,
        "invalid_input",
        "invalid query.since: must be at most 9223372036854775807",
    ),
    # Wrong types.
    ("POST", G, {"json": {"name": 5, "machines": M}}, 400, "invalid_input", "name"),
    ("POST", G, {"json": {"name": "x", "machines": "a,b"}}, 400, "invalid_input", "machines"),
    ("POST", G, {"json": {"name": "x", "machines": [{"name": 5}]}}, 400, "invalid_input", "name"),
    (
        "POST",
        G,
        {"json": {"name": "x", "machines": [{"name": "m", "labels": {"role": 1}}]}},
        400,
        "invalid_input",
        "labels",
    ),
    (
        "POST",
        G,
        {"json": {"name": "x", "machines": [{"name": "m", "labels": {"Ro le": "x"}}]}},
        400,
        "invalid_input",
        "label",
    ),
    (
        "POST",
        G,
        {"json": {"name": "x", "machines": M, "key_ttl": "soon"}},
        400,
        "invalid_input",
        "key_ttl",
    ),
    ("POST", G, {"json": {"name": "x", "machines": M, "key_ttl": 0}}, 400, "invalid_input", "TTL"),
    ("POST", G, {"json": {"name": "x", "machines": M, "key_ttl": -5}}, 400, "invalid_input", "TTL"),
    ("POST", G, {"json": {"name": "x", "machines": M, "ttl": 0}}, 400, "invalid_input", "TTL"),
    # Under a second is no lifetime (a key gone before any agent can present it, a group
    # that expires as it is made): refused as the message says, "between 1 second and".
    *[
        ("POST", G, {"json": {"name": "x", "machines": M, key: value}}, 400, "invalid_input", part)
        for key, part in (("key_ttl", "key TTL must be between 1 second"), ("ttl", "group TTL"))
        for value in (0.001, 0.5, 0.999)
    ],
    (
        "POST",
        "/v1/groups/lab/machines/b/key",
        {"json": {"key_ttl": 0.5}},
        400,
        "invalid_input",
        "key TTL must be between 1 second and 30 days",
    ),
    # A JSON boolean or string is not a number (true would be a TTL of 1 s: a group that
    # expires, and revokes its machines, at once).
    ("POST", G, {"json": {"name": "x", "machines": M, "ttl": True}}, 400, "invalid_input", "ttl"),
    (
        "POST",
        G,
        {"json": {"name": "x", "machines": M, "key_ttl": "60"}},
        400,
        "invalid_input",
        "ttl",
    ),
    ("POST", J, job(argv=["true"], timeout=True), 400, "invalid_input", "timeout"),
    ("POST", J, job(argv=["true"], timeout="5"), 400, "invalid_input", "timeout"),
    ("POST", J, job(argv=["true"], canary=True), 400, "invalid_input", "canary"),
    ("POST", J, job(argv=["true"], max_concurrency=True), 400, "invalid_input", "max_concurrency"),
    (
        "POST",
        G,
        {"json": {"name": "x", "machines": [{"name": "m", "labels": {"n": 1}}]}},
        400,
        "invalid_input",
        "labels",
    ),
    # Unknown fields are refused, not ignored (a typo must not pass silently).
    (
        "POST",
        G,
        {"json": {"name": "x", "machines": M, "colour": "red"}},
        400,
        "invalid_input",
        "colour",
    ),
    (
        "POST",
        G,
        {"json": {"name": "x", "machines": [{"name": "m", "role": "db"}]}},
        400,
        "invalid_input",
        "role",
    ),
    ("POST", J, job(argv=["true"], retries=3), 400, "invalid_input", "retries"),
    # Names.
    *[
        ("POST", G, {"json": {"name": bad, "machines": M}}, 400, "invalid_input", "")
        for bad in BAD_NAMES
    ],
    *[
        ("POST", G, {"json": {"name": "x", "machines": [{"name": bad}]}}, 400, "invalid_input", "")
        for bad in BAD_NAMES
    ],
    ("POST", G, {"json": {"name": "x", "machines": []}}, 400, "invalid_input", "machine"),
    (
        "POST",
        G,
        {"json": {"name": "x", "machines": [{"name": "m"}, {"name": "m"}]}},
        400,
        "invalid_input",
        "unique",
    ),
    ("POST", G, {"json": {"name": "lab", "machines": M}}, 409, "conflict", "exists already"),
    # Targets.
    ("POST", J, {"json": {"to": "nosuch", "argv": ["true"]}}, 404, "not_found", "'nosuch'"),
    ("POST", J, {"json": {"to": "a,nosuch", "argv": ["true"]}}, 404, "not_found", "'nosuch'"),
    (
        "POST",
        J,
        {"json": {"to": "role=web", "argv": ["true"]}},
        404,
        "not_found",
        "matches no machine",
    ),
    ("POST", J, {"json": {"to": "", "argv": ["true"]}}, 400, "invalid_input", "target"),
    ("POST", J, {"json": {"to": "A", "argv": ["true"]}}, 400, "invalid_input", "'A'"),
    ("POST", J, {"json": {"to": "a" * 5000, "argv": ["true"]}}, 400, "invalid_input", "to"),
    ("POST", "/v1/groups/nosuch/jobs", job(argv=["true"]), 404, "not_found", "'nosuch'"),
    # Commands.
    ("POST", J, job(argv=[]), 400, "invalid_input", "argv"),
    ("POST", J, job(argv=["true"], command="true"), 400, "invalid_input", "either"),
    ("POST", J, job(), 400, "invalid_input", "either"),
    ("POST", J, job(argv="true"), 400, "invalid_input", "argv"),
    ("POST", J, job(argv=[1, 2]), 400, "invalid_input", "argv"),
    ("POST", J, job(argv=["a\x00b"]), 400, "invalid_input", "NUL"),
    ("POST", J, job(command="   "), 400, "invalid_input", "command"),
    ("POST", J, job(command="true", shell="fish"), 400, "invalid_input", "unknown shell"),
    ("POST", J, job(argv=["true"], timeout=0), 400, "invalid_input", "timeout"),
    ("POST", J, job(argv=["true"], timeout=-1), 400, "invalid_input", "timeout"),
    ("POST", J, job(argv=["true"], timeout=1e12), 400, "invalid_input", "timeout"),
    ("POST", J, job(argv=["true"], timeout="long"), 400, "invalid_input", "timeout"),
    ("POST", J, job(argv=["true"], env={"A": 1}), 400, "invalid_input", "env"),
    ("POST", J, job(argv=["true"], env={"A=B": "x"}), 400, "invalid_input", "env"),
    ("POST", J, job(argv=["true"], env="A=1"), 400, "invalid_input", "env"),
    ("POST", J, job(argv=["true"], cwd=""), 400, "invalid_input", "cwd"),
    # Messages, hosts, files, key/value store, event cursors.
    (
        "POST",
        "/v1/groups/lab/messages",
        {"json": {"to": "a", "type": "job.run"}},
        400,
        "invalid_input",
        "message type",
    ),
    (
        "POST",
        "/v1/groups/lab/messages",
        {"json": {"to": "a", "type": "user."}},
        400,
        "invalid_input",
        "message type",
    ),
    (
        "POST",
        "/v1/groups/lab/messages",
        {"json": {"to": "a", "type": "user.big", "body": {"x": "y" * MAX_MESSAGE_BODY_BYTES}}},
        413,
        "too_large",
        "",
    ),
    ("POST", "/v1/groups/lab/hosts-sync", {"json": {"ip": "bogus"}}, 400, "invalid_input", "ip"),
    (
        "POST",
        "/v1/groups/lab/pulls",
        {"json": {"machine": "a", "path": "etc/hostname"}},
        400,
        "invalid_input",
        "absolute",
    ),
    (
        "POST",
        "/v1/groups/lab/files",
        {"json": {"to": "a", "sha256": "xyz", "path": "/tmp/f"}},
        400,
        "invalid_input",
        "",
    ),
    ("PUT", "/v1/groups/lab/kv/bad key", {"json": {"value": 1}}, 400, "invalid_input", "key"),
    # A key no client could name as it is (an empty or dot part is resolved away).
    ("PUT", "/v1/groups/lab/kv/a//b", {"json": {"value": 1}}, 400, "invalid_input", "key"),
    ("PUT", "/v1/groups/lab/kv/a/%2E%2E/b", {"json": {"value": 1}}, 400, "invalid_input", "key"),
    ("GET", "/v1/groups/lab/kv/a/%2E/b", {}, 400, "invalid_input", "key"),
    ("PUT", "/v1/groups/lab/kv/big", {"json": {"value": "v" * (65 << 10)}}, 413, "too_large", ""),
    ("GET", "/v1/groups/lab/events", {"params": {"since": -1}}, 400, "invalid_input", "since"),
    ("GET", "/v1/groups/lab/events", {"params": {"since": "abc"}}, 400, "invalid_input", "since"),
    (
        "GET",
        "/v1/groups/lab/events",
        {"params": {"since": 2**63}},
        400,
        "invalid_input",
        "since",
    ),  # past the database's integers: refused before the stream starts
    ("GET", "/v1/jobs/nosuch", {}, 404, "not_found", "'nosuch'"),
    # Places and methods that do not exist.
    ("GET", "/v1/nowhere", {}, 404, "not_found", ""),
    ("PATCH", G, {"json": {}}, 405, "method_not_allowed", ""),
    # Too large: announced, and sent chunked without a length.
    (
        "POST",
        G,
        {"content": b" " * (MAX_HTTP_BODY_BYTES + 1), "headers": JSON},
        413,
        "too_large",
        "",
    ),
    (
        "POST",
        J,
        {"content": chunks(MAX_HTTP_BODY_BYTES + 1), "headers": JSON},
        413,
        "too_large",
        "",
    ),
    (
        "POST",
        "/v1/agent/enroll",
        {"content": chunks(4 * MAX_HTTP_BODY_BYTES), "headers": JSON},
        413,
        "too_large",
        "",
    ),
]


def test_bad_http_input_gets_a_clear_error_and_changes_nothing(env, http):
    env.client.create_group("lab", [{"name": "a", "labels": {"role": "db"}}, {"name": "b"}])
    before = state(env)
    alice = {"Authorization": bearer(env.token)}
    for method, path, kwargs, status, code, part in CASES:
        kwargs = dict(kwargs)
        headers = {**alice, **kwargs.pop("headers", {})}
        resp = http.request(method, path, headers=headers, **kwargs)
        assert_error(resp, status, code, part)
        assert http.get("/v1/health").status_code == 200
    assert state(env) == before
    assert [g["group"] for g in env.client.list_groups()] == ["lab"]
    # Each kind of request above works when the input is right (positive control).
    r = http.post(J, json={"to": "role=db", "argv": ["true"], "timeout": 5}, headers=alice)
    assert r.status_code == 201 and r.json()["targets"] == ["a"]
    assert_no_traceback_in_server_log(env.server)


def test_bad_agent_frames_get_error_frames_and_never_corrupt_state(env, http):
    keys = {m["name"]: m["key"] for m in env.client.create_group("lab", ["a", "b"])["machines"]}
    cred = enroll(http, keys["a"])
    groups = env.client.list_groups()

    async def scenario() -> tuple[int, int]:
        async with wire_agent(env.server, cred, "lab", "a") as a:
            cursor = env.client.event_cursor("lab")
            # Frames the server cannot use: an error frame each, and the connection stays.
            for text, code in [
                (json.dumps({"type": "bogus"}), "unknown_type"),
                (json.dumps({"type": "job.run", "argv": ["true"]}), "unknown_type"),
                ("this is not json", "invalid_input"),
                ("[1, 2]", "invalid_input"),
                (json.dumps({"type": "msg", "seq": "one", "msg": {}}), "invalid_input"),
                (json.dumps({"type": "msg", "seq": a.seq + 1, "msg": "text"}), "invalid_input"),
                (json.dumps({"type": "ack", "seq": 99}), "invalid_input"),
                (json.dumps({"type": "ack", "seq": 2**64}), "invalid_input"),
                (json.dumps({"type": "msg", "seq": 10**30, "msg": {}}), "invalid_input"),
            ]:
                await a.ws.send(text)
                frame = await recv_json(a.ws)
                assert frame["type"] == "error" and frame["error"]["code"] == code, (text, frame)
            assert [f["type"] for f in await a.send_msg("progress", {"text": "still here"})] == [
                "ack"
            ]
            # Messages the server cannot apply: acknowledged (never re-sent for ever) and
            # recorded as agent.error events, with nothing else stored.
            bad = [
                ("weird.thing", {}, {}, "unknown_type"),
                ("progress", {"percent": 500}, {}, "invalid_input"),
                ("progress", {"text": "x", "percent": True}, {}, "invalid_input"),
                ("job.result", {"job_id": "nosuch", "status": "exploded"}, {}, "invalid_input"),
                ("user.big", {"x": "y" * MAX_MESSAGE_BODY_BYTES}, {}, "too_large"),
                ("user.hi", {}, {"id": ""}, "invalid_input"),
                ("user.hi", {}, {"body": [1]}, "invalid_input"),
                ("user.hi", {}, {"to": "NOSUCH"}, "invalid_input"),
            ]
            for kind, body, override, code in bad:
                frames = await a.send_msg(kind, body, envelope=override)
                assert [f["type"] for f in frames] == ["error", "ack"], frames
                assert frames[0]["error"]["code"] == code and frames[0]["seq"] == a.seq, frames
            last = a.seq
            # A frame over the size limit closes the connection (1009, message too big)...
            await a.ws.send("x" * (MAX_FRAME_BYTES + 1))
            assert await close_code(a.ws) == 1009
        # ...and the server is still up: the machine reconnects where it was.
        assert http.get("/v1/health").status_code == 200
        async with wire_agent(env.server, cred, "lab", "a") as a:
            assert a.seq == last
            assert [f["type"] for f in await a.send_msg("progress", {"text": "back"})] == ["ack"]
            last = a.seq
        return cursor, last

    cursor, last = asyncio.run(scenario())
    events = [e for e in env.client.events("lab", since=cursor) if e["type"] != "machine.state"]
    assert [e["type"] for e in events] == ["progress"] + ["agent.error"] * 8 + ["progress"]
    assert [e["data"]["text"] for e in events if e["type"] == "progress"] == ["still here", "back"]
    assert env.client.list_groups() == groups
    assert env.client.group("lab")["machines"][0]["progress"]["text"] == "back"
    assert last == 10  # 1 + 8 + 1 messages, each applied once
    assert_no_traceback_in_server_log(env.server)


def test_protocol_violations_close_the_connection_and_the_server_carries_on(env, http):
    keys = {m["name"]: m["key"] for m in env.client.create_group("lab", ["a"])["machines"]}
    cred = enroll(http, keys["a"])

    async def scenario() -> None:
        # Anything but hello first: an error frame and 4400.
        for first in [
            '{"type": "ack", "seq": 0}',
            "hello?",
            '{"type": "hello", "ack": -1}',
            json.dumps({"type": "hello", "ack": 2**63}),
        ]:
            async with ws_open(env.server, bearer(cred)) as ws:
                await ws.send(first)
                frame = await recv_json(ws)
                assert frame["type"] == "error", frame
                assert await close_code(ws) == 4400
        # A binary frame, and a sequence gap (the agent must resume): 4400 too.
        async with wire_agent(env.server, cred, "lab", "a") as a:
            await a.ws.send(b"\x00\x01binary")
            assert (await recv_json(a.ws))["type"] == "error"
            assert await close_code(a.ws) == 4400
        async with wire_agent(env.server, cred, "lab", "a") as a:
            await a.ws.send(
                json.dumps(
                    {
                        "type": "msg",
                        "seq": a.seq + 5,
                        "msg": {
                            "id": uuid.uuid4().hex,
                            "group": "lab",
                            "from": "a",
                            "to": "master",
                            "type": "progress",
                            "body": {"text": "from the future"},
                        },
                    }
                )
            )
            frame = await recv_json(a.ws)
            assert frame["type"] == "error" and "sequence gap" in frame["error"]["message"]
            assert await close_code(a.ws) == 4400
        # The next connection resumes normally; nothing of the above was applied.
        async with wire_agent(env.server, cred, "lab", "a") as a:
            assert a.seq == 0
            await check_alive(a)

    asyncio.run(scenario())
    assert http.get("/v1/health").status_code == 200
    machine = env.client.group("lab")["machines"][0]
    assert machine["progress"]["text"] == "alive"
    assert_no_traceback_in_server_log(env.server)


async def check_alive(a: WireAgent) -> None:
    assert [f["type"] for f in await a.send_msg("progress", {"text": "alive"})] == ["ack"]


def test_cli_bad_input_exits_non_zero_with_one_line_and_no_traceback(env, crc):
    env.client.create_group("lab", ["a", "b"])
    before = state(env)
    cases = [
        (["run", "lab", "--to", "nosuch", "--", "true"], 4, "nosuch"),
        (["run", "nosuch", "--to", "a", "--", "true"], 4, "nosuch"),
        (["run", "lab", "--to", "role=web", "--", "true"], 4, "matches no machine"),
        (["run", "lab", "--to", "a", "--timeout", "0", "--", "true"], 2, "0"),
        (["group", "create", "BAD_NAME", "--machines", "a"], 2, "BAD_NAME"),
        (["group", "create", "x", "--machines", "a_b"], 2, "a_b"),
        (["group", "create", "lab", "--machines", "a"], 5, "exists already"),
        (["group", "create", "x", "--machines", "a", "--ttl", "0.5s"], 2, "group TTL"),
        (["group", "create", "x", "--machines", "a", "--key-ttl", "0.001"], 2, "key TTL"),
        (["bootstrap", "lab", "b", "--os", "linux", "--key-ttl", "0.9s"], 2, "key TTL"),
        (["send", "lab", "--to", "a", "user.x", "{bad"], 2, "JSON"),
        (["send", "lab", "--to", "a", "bad type!"], 2, "message type"),
        (
            ["group", "create", "x", "--machines", ",".join(f"m{i}" for i in range(1001))],
            2,
            "names 1001 machines; a group has at most 1000",
        ),
        (["events", "lab", "--since", "9" * 20], 2, "not in the range 0<=x<=9223372036854775807"),
    ]
    for args, code, part in cases:
        r = crc(*args)
        assert r.returncode == code, (args, r.returncode, r.stderr)
        assert "Traceback" not in r.stderr + r.stdout, args
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("crc: error:"), (args, r.stderr)
        assert part in lines[0], (args, lines)
    # A usage error (click's own) is also clear and non-zero, without a traceback.
    r = crc("run", "lab", "--to", "a", "--shell", "fish", "--", "true")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "'fish'" in r.stderr
    assert state(env) == before


def test_a_range_the_server_cannot_serve_gets_the_api_error_shape(env, http):
    """Downloads take Range requests; a malformed or unsatisfiable one is answered like
    any other bad input: a status, a code and a message in JSON."""
    import hashlib

    data = bytes(range(256)) * 4
    sha = hashlib.sha256(data).hexdigest()
    alice = {"Authorization": bearer(env.token)}
    assert http.put(f"/v1/blobs/{sha}", content=data, headers=alice).status_code == 200
    url = f"/v1/blobs/{sha}"
    for bad in ["bytes=abc", "bytes=9-3", "items=0-1", "bytes=", "bytes=x-y", "bytes=--1"]:
        resp = http.get(url, headers={**alice, "Range": bad})
        assert_error(resp, 400, "invalid_input", "Range")
    for past in ["bytes=5000-", "bytes=1024-2000", "bytes=-0", "bytes=0-3,2000-"]:
        resp = http.get(url, headers={**alice, "Range": past})
        assert_error(resp, 416, "range_not_satisfiable", "1024 bytes")
        assert resp.headers["content-range"] == "bytes */1024"
    # Ranges it can serve are served (positive control).
    resp = http.get(url, headers={**alice, "Range": "bytes=10-19"})
    assert resp.status_code == 206 and resp.content == data[10:20]
    resp = http.get(url, headers={**alice, "Range": "bytes=-4"})
    assert resp.status_code == 206 and resp.content == data[-4:]
    assert http.get(url, headers=alice).content == data
    assert_no_traceback_in_server_log(env.server)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_an_agent_sending_bad_frames_and_never_reading_costs_the_server_a_bounded_slice(env, http):
    """Each bad frame is answered with an error frame. A machine that sends them as fast
    as it can and never reads its socket is read no faster than it reads: the server's
    memory stays where it was (it grew by hundreds of MiB), and its peer is served."""
    keys = {m["name"]: m["key"] for m in env.client.create_group("lab", ["a", "b"])["machines"]}
    cred_a, cred_b = enroll(http, keys["a"]), enroll(http, keys["b"])
    assert env.server.proc is not None
    pid = env.server.proc.pid

    async def scenario() -> tuple[int, int, str]:
        # A long type is named in the error cut short, not echoed whole.
        async with wire_agent(env.server, cred_a, "lab", "a") as a:
            await a.ws.send(json.dumps({"type": "t" * 100_000}))
            error = (await recv_json(a.ws))["error"]["message"]
        before = _rss_kib(pid)
        ctx, _ = client_context(env.server.url, env.server.fingerprint)
        url = "wss://" + env.server.url.split("://", 1)[1].rstrip("/") + "/v1/agent/connect"
        sent = 0
        async with connect(  # max_queue=1: it stops reading its socket at once
            url, ssl=ctx, additional_headers={"Authorization": bearer(cred_a)}, max_queue=1
        ) as ws:
            await ws.send(json.dumps({"type": "hello", "ack": 0, "ready": True}))
            await ws.recv()  # the welcome; nothing is read after it
            try:
                while sent < 300_000:
                    await asyncio.wait_for(ws.send("{}"), 5)
                    sent += 1
            except TimeoutError:
                pass  # the server stopped reading it: what it costs is bounded
            grown = _rss_kib(pid) - before
            async with wire_agent(env.server, cred_b, "lab", "b") as b:
                await check_alive(b)
            ws.transport.abort()
        return grown, sent, error

    grown, sent, error = asyncio.run(scenario())
    assert grown < 16 * 1024, f"server RSS grew {grown} KiB for {sent} bad frames"
    assert error == f"unknown frame type {'t' * 64!r}...", error[:200]
    assert http.get("/v1/health").status_code == 200
    assert_no_traceback_in_server_log(env.server)


def test_an_agent_sending_frames_only_the_server_sends_is_told_and_kept(env, http):
    """welcome, error and revoked are frames only an agent receives: one sent by a
    machine is answered with an error frame, and its connection goes on (it was a
    traceback and a connection cut without a close code)."""
    keys = {m["name"]: m["key"] for m in env.client.create_group("lab", ["a"])["machines"]}
    cred = enroll(http, keys["a"])

    async def scenario() -> None:
        async with wire_agent(env.server, cred, "lab", "a") as a:
            for frame in (
                {"type": "welcome", "group": "lab", "machine": "a", "ack": 0},
                {"type": "error", "error": {"code": "internal", "message": "x"}},
                {"type": "revoked", "reason": "forged"},
            ):
                await a.ws.send(json.dumps(frame))
                error = (await recv_json(a.ws))["error"]
                assert error["code"] == "unknown_type", (frame, error)
                assert f"unexpected {frame['type']} frame" in error["message"], error
            assert [f["type"] for f in await a.send_msg("user.hi", {})] == ["ack"]

    asyncio.run(scenario())
    assert_no_traceback_in_server_log(env.server)


def test_a_machine_reporting_on_a_job_not_sent_to_it_is_refused_and_changes_nothing(env, http):
    keys = {m["name"]: m["key"] for m in env.client.create_group("lab", ["a", "b"])["machines"]}
    creds = {name: enroll(http, key) for name, key in keys.items()}
    job_id = env.client.start_job("lab", "b", argv=["true"])["job_id"]

    async def scenario() -> None:
        async with wire_agent(env.server, creds["a"], "lab", "a") as a:
            # Output alone changes nothing and is acknowledged without an event per chunk
            # (a job still running after a restore of the server sends many).
            output = {"job_id": job_id, "stream": "stdout", "data": "forged"}
            frames = [f for f in await a.send_msg("job.output", output) if f["type"] != "msg"]
            assert [f["type"] for f in frames] == ["ack"], frames
            for kind, body in [
                ("job.started", {"job_id": job_id}),
                ("job.result", {"job_id": job_id, "status": "succeeded", "exit_code": 0}),
                ("job.result", {"job_id": "nosuch", "status": "failed", "exit_code": 1}),
            ]:
                frames = [f for f in await a.send_msg(kind, body) if f["type"] != "msg"]
                assert [f["type"] for f in frames] == ["error", "ack"], (kind, frames)
                assert frames[0]["error"]["code"] == "invalid_input", frames
                assert "was not sent to this machine" in frames[0]["error"]["message"], frames

    asyncio.run(scenario())
    target = env.client.job(job_id)["targets"][0]
    assert (target["machine"], target["status"], target["output_bytes"]) == ("b", "queued", 0)
    errors = [e for e in env.client.events("lab") if e["type"] == "agent.error"]
    assert [(e["machine"], e["data"]["type"]) for e in errors] == [
        ("a", "job.started"),
        ("a", "job.result"),
        ("a", "job.result"),
    ]
    assert_no_traceback_in_server_log(env.server)
