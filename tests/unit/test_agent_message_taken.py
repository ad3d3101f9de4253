"""A user message handed to a waiting script (`crc agent wait-message`) whose taking
cannot be written at once (the state database refuses the write: a full disk, another
writer) is handed to no other script, and is written as taken once the database can be
written again: not lost, not delivered twice. And ``system.ready`` is recorded with the
machine's ready state in one step (the hello says ready only once it is delivered)."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

import pytest

from cloudremotecontrol.agent.core import Agent
from cloudremotecontrol.agent.state import AgentState, Credential
from cloudremotecontrol.errors import Unavailable
from cloudremotecontrol.protocol.messages import Envelope


def _consumed(db: Path) -> list[int]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT consumed FROM messages ORDER BY n")]


def test_system_ready_and_its_number_are_recorded_in_one_step(tmp_path: Path) -> None:
    from cloudremotecontrol.protocol.messages import SystemReady

    state = AgentState(tmp_path / "agent")
    try:
        assert state.get("ready") is None and state.get("ready_seq") is None
        facts = Envelope.make("lab", "m", "master", "system.facts", {"os": "linux"})
        state.enqueue(facts)
        assert state.get("ready") is None  # another message says nothing of it
        ready = Envelope.of(SystemReady(), "lab", "m", "master")
        seq, _ = state.enqueue(ready)
        assert (state.get("ready"), state.get("ready_seq")) == ("1", str(seq))
        # A transaction that does not complete records neither the message nor ready.
        again = AgentState(tmp_path / "other")
        try:
            with pytest.raises(RuntimeError), again.transaction():
                again.enqueue(ready)
                raise RuntimeError("killed here")
            assert again.get("ready") is None and again.get("ready_seq") is None
            assert again.pending_count() == 0
        finally:
            again.close()
    finally:
        state.close()


@pytest.mark.skipif(sys.platform == "win32", reason="the control server listens on a Unix socket")
def test_through_the_control_socket_the_next_waiter_does_not_get_it(tmp_path: Path) -> None:
    # As `crc agent wait-message` asks (confirm=True): the agent's answer goes out, the
    # script confirms, and only then is the message taken - which the database refuses.
    from cloudremotecontrol.agent.control import ControlServer, call
    from cloudremotecontrol.agent.service import _handle

    state = AgentState(tmp_path / "agent")
    agent = Agent(state, Credential("https://127.0.0.1:9", "crca_x", "m", "lab"))
    assert state.mark_processed(1, message=Envelope.make("lab", "master", "m", "user.go", {}))
    db = tmp_path / "agent" / "agent.db"
    ask = {"op": "wait-message", "type": "user.go"}

    async def scenario() -> None:
        server = ControlServer(tmp_path / "agent", lambda req: _handle(agent, req))
        await server.start()
        state.db.execute("PRAGMA busy_timeout = 0")  # refused at once, as a full disk is
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            first = await asyncio.to_thread(
                call, tmp_path / "agent", {**ask, "timeout": 5}, 15.0, True
            )
            assert first["message"]["type"] == "user.go", first
            with pytest.raises(Unavailable, match=r"no user\.go message"):
                await asyncio.to_thread(call, tmp_path / "agent", {**ask, "timeout": 1}, 15.0, True)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
            await asyncio.wait_for(server.close(), 30)
        for _ in range(200):
            if _consumed(db) == [1]:
                break
            await asyncio.sleep(0.05)
        assert _consumed(db) == [1]

    try:
        asyncio.run(scenario())
    finally:
        state.close()
