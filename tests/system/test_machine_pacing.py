"""One machine cannot make the server store its messages faster than the server's
``--machine-bytes-per-second`` after a burst of ``--machine-burst-bytes``
(server/pacing.py): a machine blasting messages without waiting for acks has them
stored at that pace, every one of them in the end (nothing it sent is lost), while
a peer's messages are not held behind its backlog."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

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
BLAST = 16  # messages of about 4 KiB each
BODY = {"fill": "x" * 4000}


def _stored(env: Env) -> int:
    return sum(1 for e in env.client.events("lab") if e.type == "message" and e.machine == "a")


def test_a_machine_blasting_messages_has_them_stored_at_its_pace(tmp_path: Path) -> None:
    srv = ServerProcess(
        tmp_path / "srv",
        args=["--machine-bytes-per-second", str(RATE), "--machine-burst-bytes", str(BURST)],
    ).start()
    env = Env(srv, tmp_path)
    try:
        keys = {m["name"]: m["key"] for m in env.client.create_group("lab", ["a", "b"])["machines"]}
        with pinned_http(srv) as http:
            creds = {name: enroll(http, key) for name, key in keys.items()}

        async def blast() -> None:
            async with wire_agent(srv, creds["a"], "lab", "a") as a:
                frames = []
                for _ in range(BLAST):  # all sent at once: no wait for an ack
                    a.seq += 1
                    env_ = {
                        "id": uuid.uuid4().hex,
                        "group": "lab",
                        "from": "a",
                        "to": "master",
                        "type": "user.fill",
                        "body": BODY,
                        "correlation_id": None,
                        "created": time.time(),
                    }
                    frames.append(json.dumps({"type": "msg", "seq": a.seq, "msg": env_}))
                cost = max(len(frames[0]), MIN_COST)
                start = time.monotonic()
                for text in frames:
                    await a.ws.send(text)
                # Stored at the pace: at no moment more than the burst and what the rate
                # gave since the first frame left, plus the frame that went into debt.
                seen = []
                acked = 0
                async with wire_agent(srv, creds["b"], "lab", "b") as b:
                    # b's message is stored while most of a's still wait.
                    assert [f["type"] for f in await b.send_msg("user.hi", {})] == ["ack"]
                    assert _stored(env) < BLAST, "a's messages were stored at once (or b's waited for them)"
                deadline = time.monotonic() + 120  # a safety net: 16 x 4 KiB at 4 KiB/s
                while acked < BLAST:
                    assert time.monotonic() < deadline, f"{acked}/{BLAST} acknowledged"
                    frame = await recv_json(a.ws, timeout=60)
                    if frame.get("type") == "ack":
                        acked = frame["seq"]
                    elapsed = time.monotonic() - start
                    stored = _stored(env)
                    seen.append(stored)
                    allowed = (BURST + RATE * elapsed) // cost + 1
                    assert stored <= allowed, (
                        f"{stored} messages stored {elapsed:.1f} s after the blast began; "
                        f"the pace allows {allowed}"
                    )
                assert _stored(env) == BLAST, seen  # every one of them, in the end

        asyncio.run(blast())
        assert_no_traceback_in_server_log(srv)
    finally:
        env.close()
        srv.stop()
