"""Odd frames a machine can send on its WebSocket, beyond test_bad_input.py's: a binary
hello, text that is not UTF-8, numbers no float holds, a hello resuming beyond the
number range, hellos and frames with fields of the wrong type or out of range, NaN,
lone surrogates, nesting, duplicated keys, a second hello, a frame at the size limit.
Each is answered with an error frame and, where the connection cannot go on, a close
code that says so (4400, 1007); none is taken for the server's own failure (1011, the
message sent again), changes what it must not, or leaves a traceback or an ERROR in the
server's log."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from wire_helpers import (
    agent_envelope,
    assert_no_traceback_in_server_log,
    bearer,
    close_code,
    enroll,
    msg_frame,
    pinned_http,
    recv_json,
    wire_agent,
    ws_open,
)

from cloudremotecontrol.protocol.delivery import MAX_PEER_ACK
from cloudremotecontrol.protocol.limits import MAX_FRAME_BYTES
from conftest import Env

HUGE = 10**400  # an int JSON carries and no float holds


@pytest.fixture
def http(env: Env) -> Iterator[httpx.Client]:
    with pinned_http(env.server) as client:
        yield client


def _cred(env: Env, http: httpx.Client) -> str:
    [machine] = env.client.create_group("lab", ["a"])["machines"]
    return enroll(http, machine["key"])


def _assert_log_clean(env: Env) -> None:
    assert_no_traceback_in_server_log(env.server)
    log = env.server.log_path.read_text(errors="replace")
    assert " ERROR " not in log, log[-3000:]


def _msg(seq: int, **envelope: Any) -> str:
    return msg_frame(seq, agent_envelope("lab", "a", "progress", {"text": "x"}, fields=envelope))


async def _refused_first(env: Env, cred: str, first: str | bytes) -> dict[str, Any]:
    """Send ``first`` as a connection's first frame: its error, once closed with 4400."""
    async with ws_open(env.server, bearer(cred)) as ws:
        await ws.send(first)
        frame = await recv_json(ws)
        assert frame["type"] == "error", (first[:200], frame)
        assert await close_code(ws) == 4400, first[:200]
        return dict(frame["error"])


def test_a_binary_hello_is_refused_with_an_error_frame_and_4400(env: Env, http: httpx.Client):
    """It was a KeyError out of the endpoint: a traceback, and a connection cut without
    a close frame."""
    cred = _cred(env, http)

    async def scenario() -> None:
        for first in (b"\x00\x01binary", json.dumps({"type": "hello", "ack": 0}).encode()):
            error = await _refused_first(env, cred, first)
            assert error["code"] == "protocol" and "binary" in error["message"], error
        async with wire_agent(env.server, cred, "lab", "a") as a:
            assert [f["type"] for f in await a.send_msg("progress", {"text": "after"})] == ["ack"]

    asyncio.run(scenario())
    assert env.client.group("lab")["machines"][0]["progress"]["text"] == "after"
    _assert_log_clean(env)


def test_a_text_frame_that_is_not_utf8_closes_with_1007_and_logs_no_traceback(
    env: Env, http: httpx.Client
):
    """RFC 6455 (8.1) fails such a connection with 1007; uvicorn did, and logged each
    with a traceback at ERROR (any client past the handshake could fill the log)."""
    cred = _cred(env, http)

    async def scenario() -> None:
        async with ws_open(env.server, bearer(cred)) as ws:  # as the hello
            await ws.send(b'{"type": "hello", "ack": 0, "x": "\xff"}', text=True)
            assert await close_code(ws) == 1007
        async with wire_agent(env.server, cred, "lab", "a") as a:
            # A character split across the fragments of one message is valid UTF-8...
            await a.ws.send([b'{"type": "\xc3', b'\xa9"}'], text=True)
            error = (await recv_json(a.ws))["error"]
            assert error["code"] == "unknown_type" and "\u00e9" in error["message"], error
            # ...half of one is not.
            await a.ws.send([b'{"type": "\xc3', b'"}'], text=True)
            assert await close_code(a.ws) == 1007
        async with wire_agent(env.server, cred, "lab", "a") as a:
            assert [f["type"] for f in await a.send_msg("progress", {"text": "after"})] == ["ack"]

    asyncio.run(scenario())
    _assert_log_clean(env)  # (a line at INFO each, below the default --log-level)


def test_numbers_beyond_any_float_are_bad_input_not_a_server_failure(env: Env, http: httpx.Client):
    """An envelope's ``created`` or a progress ``percent`` of 1e400 written as an int
    raised OverflowError, which the server took for its own failure: an ERROR line, the
    connection closed with 1011 and the message asked for again, three times. Each is
    now refused as any bad message is: an error frame, acknowledged, an agent.error."""
    cred = _cred(env, http)
    cursor = env.client.event_cursor("lab")

    async def scenario() -> int:
        async with wire_agent(env.server, cred, "lab", "a") as a:
            for kind, body, override, part in (
                ("progress", {"text": "x"}, {"created": HUGE}, "created"),
                ("progress", {"text": "x"}, {"created": -HUGE}, "created"),
                ("progress", {"text": "x", "percent": HUGE}, {}, "percent"),
                ("progress", {"text": "x", "percent": -HUGE}, {}, "percent"),
            ):
                frames = await a.send_msg(kind, body, envelope=override)
                assert [f["type"] for f in frames] == ["error", "ack"], frames
                error = frames[0]["error"]
                assert error["code"] == "invalid_input" and part in error["message"], error
            frames = await a.send_msg("progress", {"text": "still here", "percent": 50})
            assert [f["type"] for f in frames] == ["ack"], frames
            return a.seq

    assert asyncio.run(scenario()) == 5  # each applied once, none asked for again
    events = [e for e in env.client.events("lab", since=cursor) if e["type"] != "machine.state"]
    assert [e["type"] for e in events] == ["agent.error"] * 4 + ["progress"], events
    assert env.client.group("lab")["machines"][0]["progress"]["text"] == "still here"
    _assert_log_clean(env)


def test_a_hello_resuming_beyond_half_the_number_range_is_refused_and_changes_nothing(
    env: Env, http: httpx.Client
):
    """``resume_from`` near 2**63 made the server take every number below it for
    processed, for good: the machine's later messages were duplicates, dropped, and its
    agent refused the welcome's ack. It is refused as an ack that far is."""
    cred = _cred(env, http)

    async def scenario() -> None:
        async with wire_agent(env.server, cred, "lab", "a") as a:
            assert [f["type"] for f in await a.send_msg("progress", {"text": "one"})] == ["ack"]
        for resume_from in (MAX_PEER_ACK + 2, 2**63 - 1):
            hello = json.dumps({"type": "hello", "ack": 0, "resume_from": resume_from})
            error = await _refused_first(env, cred, hello)
            assert "beyond any message sent" in error["message"], error
        async with wire_agent(env.server, cred, "lab", "a") as a:
            assert a.seq == 1  # what the server had processed, unchanged
            assert [f["type"] for f in await a.send_msg("progress", {"text": "two"})] == ["ack"]

    asyncio.run(scenario())
    assert not [e for e in env.client.events("lab") if e["type"] == "machine.resync"]
    assert env.client.group("lab")["machines"][0]["progress"]["text"] == "two"
    _assert_log_clean(env)


HELLOS = [
    '{"type": "hello", "ack": true}',
    '{"type": "hello", "ack": 1.0}',
    '{"type": "hello", "ack": NaN}',
    f'{{"type": "hello", "ack": {HUGE}}}',
    f'{{"type": "hello", "ack": {MAX_PEER_ACK + 1}}}',
    '{"type": "hello", "ack": 0, "resume_from": -1}',
    '{"type": "hello", "ack": 0, "resume_from": false}',
    '{"type": "hello", "ack": 0, "x": Infinity}',
    '{"type": "hello", "ack": 0, "ready": "yes"}',
    '{"type": "hello", "ack": 0, "agent_version": 5}',
    '{"type": "hello", "ack": 0, "features": "job.fold"}',
    json.dumps({"type": "hello", "ack": 0, "features": ["f"] * 17}),
    '{"type": "hello", "ack": 0, "\\ud800": 1}',
    '{"type": "hello", "ack": 0, "agent_version": "\\ud800"}',
    '{"type": "hello", "ack": 0, "x": ' + "[" * 40 + "]" * 40 + "}",
    '{"type": "hello", "ack": 0, "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
    '{"type": "hello", "ack": 0, "type": "msg", "seq": 1, "msg": {}}',  # the last key wins
    "",
]


def test_odd_hellos_are_refused_with_4400_and_change_nothing(env: Env, http: httpx.Client):
    cred = _cred(env, http)
    before = env.client.group("lab")["machines"][0]
    cursor = env.client.event_cursor("lab")

    async def scenario() -> None:
        for hello in HELLOS:
            await _refused_first(env, cred, hello)

    asyncio.run(scenario())
    after = env.client.group("lab")["machines"][0]
    assert (after["state"], after.get("progress")) == (before["state"], before.get("progress"))
    assert list(env.client.events("lab", since=cursor)) == []
    _assert_log_clean(env)


def _nested(levels: int) -> str:
    return "[" * levels + "]" * levels


def test_odd_frames_after_the_hello_are_answered_and_the_connection_kept(
    env: Env, http: httpx.Client
):
    cred = _cred(env, http)

    async def scenario() -> None:
        async with wire_agent(env.server, cred, "lab", "a") as a:
            n = a.seq + 1
            msg = _msg(n)

            def fields(text: str) -> str:  # the next message, its seq and ack as ``text``
                return msg.replace(f'"seq": {n}', text)

            for text, code in [
                ('{"type": "ack", "seq": true}', "invalid_input"),
                ('{"type": "ack", "seq": 1.0}', "invalid_input"),
                ('{"type": "ack", "seq": -1}', "invalid_input"),
                (f'{{"type": "ack", "seq": {2**63 - 1}}}', "invalid_input"),  # never sent
                ('{"type": "ack", "seq": 0, "x": NaN}', "invalid_input"),
                ('{"type": "ack", "seq": 0, "\\ud800": 1}', "invalid_input"),
                (f'{{"type": "ack", "seq": 0, "x": {_nested(40)}}}', "too_deep"),
                (f'{{"type": "ack", "seq": 0, "x": {_nested(99_999)}}}', "too_deep"),
                (fields('"seq": true'), "invalid_input"),
                (fields(f'"seq": {2**63}'), "invalid_input"),
                (fields(f'"seq": {n}, "ack": false'), "invalid_input"),
                (fields(f'"seq": {n}, "ack": "1"'), "invalid_input"),
                (fields(f'"seq": {n}, "ack": {HUGE}'), "invalid_input"),
                (f'{{"type": "msg", "seq": {n}, "msg": {_nested(900)}}}', "invalid_input"),
                ('{"type": "hello", "ack": 0}', "unknown_type"),  # a second hello
                ('{"type": "\\ud800"}', "unknown_type"),
            ]:
                await a.ws.send(text)
                frame = await recv_json(a.ws)
                assert frame["type"] == "error", (text[:200], frame)
                assert frame["error"]["code"] == code, (text[:200], frame)
                assert "seq" not in frame, frame  # about the frame: nothing was numbered
            # Messages with odd envelopes: given up (an error frame, acknowledged).
            for override, part in (
                ({"created": float("nan")}, "created"),
                ({"type": "user.x", "body": {"v": float("inf")}}, "finite"),
                ({"type": "user.x", "body": {"k\ud800": 1}}, "valid Unicode"),
                ({"correlation_id": "\ud800"}, "valid Unicode"),
            ):
                a.seq += 1
                await a.ws.send(_msg(a.seq, **override))
                frames = [await recv_json(a.ws), await recv_json(a.ws)]
                assert [f["type"] for f in frames] == ["error", "ack"], (override, frames)
                assert part in frames[0]["error"]["message"], frames
            # A frame of exactly the size limit is read (its text is cut to what is kept).
            a.seq += 1
            head = _msg(a.seq, body={"text": ""})
            text = head.replace('"text": ""', f'"text": "{"y" * (MAX_FRAME_BYTES - len(head))}"')
            assert len(text) == MAX_FRAME_BYTES
            await a.ws.send(text)
            assert await recv_json(a.ws) == {"type": "ack", "seq": a.seq}
            assert [f["type"] for f in await a.send_msg("progress", {"text": "alive"})] == ["ack"]

    asyncio.run(scenario())
    machine = env.client.group("lab")["machines"][0]
    assert machine["progress"]["text"] == "alive"
    _assert_log_clean(env)
