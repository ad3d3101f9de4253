"""One machine cannot make the server store its messages faster than the server's
``--machine-bytes-per-second`` after a burst of ``--machine-burst-bytes``
(server/pacing.py): a machine blasting messages without waiting for acks has them
stored at that pace, every one of them in the end (nothing it sent is lost), while a
peer's messages are not held behind its backlog; a machine that reconnects for each
message is held to the same pace (the debt is the machine's, not the connection's)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from wire_helpers import (
    assert_no_traceback_in_server_log,
    enroll,
    pinned_http,
    recv_json,
    wire_agent,
)

from cloudremotecontrol.master.localrun import ServerProcess
from cloudremotecontrol.server.pacing import MIN_COST
from conftest import Env

RATE, BURST = 4096, 8192  # bytes per second, bytes at once


@pytest.fixture
def paced(tmp_path: Path) -> Iterator[tuple[Env, dict[str, str]]]:
    """A server pacing machines at RATE after BURST, a group lab of a and b, their
    credentials."""
    srv = ServerProcess(
        tmp_path / "srv",
        args=["--machine-bytes-per-second", str(RATE), "--machine-burst-bytes", str(BURST)],
    ).start()
    env = Env(srv, tmp_path)
    try:
        keys = {m["name"]: m["key"] for m in env.client.create_group("lab", ["a", "b"])["machines"]}
        with pinned_http(srv) as http:
            creds = {name: enroll(http, key) for name, key in keys.items()}
        yield env, creds
        assert_no_traceback_in_server_log(srv)
        assert "machine_bytes_per_second is 4096" in srv.log_path.read_text()  # warned
    finally:
        env.close()
        srv.stop()


def _stored(env: Env) -> int:
    return sum(1 for e in env.client.events("lab") if e.type == "message" and e.machine == "a")


def _allowed(elapsed: float, cost: int) -> int:
    """The most messages of ``cost`` bytes the pace lets be stored ``elapsed`` seconds
    after the first was sent: the burst, what the rate refilled, and the one that went
    into debt."""
    return int((BURST + RATE * elapsed) // cost) + 1


def _frame(seq: int, body: dict[str, str]) -> str:
    envelope = {
        "id": uuid.uuid4().hex,
        "group": "lab",
        "from": "a",
        "to": "master",
        "type": "user.fill",
        "body": body,
        "correlation_id": None,
        "created": time.time(),
    }
    return json.dumps({"type": "msg", "seq": seq, "msg": envelope})


def test_a_machine_blasting_messages_has_them_stored_at_its_pace(
    paced: tuple[Env, dict[str, str]],
) -> None:
    env, creds = paced
    blast = 16  # messages of about 4 KiB each: 4 s at the rate once the burst is spent

    async def run() -> None:
        async with wire_agent(env.server, creds["a"], "lab", "a") as a:
            frames = [_frame(a.seq + 1 + n, {"fill": "x" * 4000}) for n in range(blast)]
            a.seq += blast
            cost = max(len(frames[0]), MIN_COST)
            start = time.monotonic()
            for text in frames:  # all sent at once: no wait for an ack
                await a.ws.send(text)
            async with wire_agent(env.server, creds["b"], "lab", "b") as b:
                # b's message is stored while most of a's still wait.
                assert [f["type"] for f in await b.send_msg("user.hi", {})] == ["ack"]
                assert _stored(env) < blast, "a's messages were stored at once"
            seen = []
            acked = 0
            deadline = time.monotonic() + 120  # a safety net: about 15 s at the rate
            while acked < blast:
                assert time.monotonic() < deadline, f"{acked}/{blast} acknowledged"
                frame = await recv_json(a.ws, timeout=60)
                if frame.get("type") == "ack":
                    acked = frame["seq"]
                stored = _stored(env)  # counted first, then the time: never too early
                elapsed = time.monotonic() - start
                seen.append(stored)
                assert stored <= _allowed(elapsed, cost), (
                    f"{stored} messages stored {elapsed:.1f} s after the blast began; "
                    f"the pace allows {_allowed(elapsed, cost)}"
                )
            assert _stored(env) == blast, seen  # every one of them, in the end

    asyncio.run(run())


def test_reconnecting_does_not_reset_a_machines_pace(paced: tuple[Env, dict[str, str]]) -> None:
    env, creds = paced
    rounds = 5  # messages of about 6 KiB, each on a connection of its own
    body = {"fill": "x" * 6000}
    cost = max(len(_frame(1, body)), MIN_COST)

    async def run() -> None:
        start = time.monotonic()
        for _ in range(rounds):
            async with wire_agent(env.server, creds["a"], "lab", "a") as a:
                assert [f["type"] for f in await a.send_msg("user.fill", body)] == ["ack"]
            stored = _stored(env)
            elapsed = time.monotonic() - start
            assert stored <= _allowed(elapsed, cost), (
                f"{stored} messages stored {elapsed:.1f} s after the first, one per "
                f"connection; the pace allows {_allowed(elapsed, cost)}"
            )
        assert _stored(env) == rounds

    asyncio.run(run())
