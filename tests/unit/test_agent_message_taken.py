"""A user message handed to a waiting script (`crc agent wait-message`) whose taking
cannot be written at once (the state database refuses the write: a full disk, another
writer) is handed to no other script, and is written as taken once the database can be
written again: not lost, not delivered twice. And ``system.ready`` is recorded with the
machine's ready state in one step (the hello says ready only once it is delivered)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from cloudremotecontrol.agent.core import Agent
from cloudremotecontrol.agent.state import AgentState, Credential
from cloudremotecontrol.errors import Unavailable
from cloudremotecontrol.protocol.messages import Envelope


def _consumed(db: Path) -> list[int]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT consumed FROM messages ORDER BY n")]


def test_a_taken_message_that_cannot_be_marked_yet_is_not_handed_out_again(
    tmp_path: Path,
) -> None:
    state = AgentState(tmp_path / "agent")
    agent = Agent(state, Credential("https://127.0.0.1:9", "crca_x", "m", "lab"))
    env = Envelope.make("lab", "master", "m", "user.go", {"n": 1})
    assert state.mark_processed(1, message=env)
    db = tmp_path / "agent" / "agent.db"

    async def scenario() -> None:
        n, message = await agent.wait_message("user.go", None, 5)
        assert message["body"] == {"n": 1}
        state.db.execute("PRAGMA busy_timeout = 0")  # refused at once, as a full disk is
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the database cannot be written now
        try:
            agent.message_taken(n)  # the script has it
            with pytest.raises(Unavailable, match=r"no user\.go message"):
                await agent.wait_message("user.go", None, 0.5)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        for _ in range(200):  # written as taken once it can be (retried every <= 0.25 s)
            if _consumed(db) == [1]:
                break
            await asyncio.sleep(0.05)
        assert _consumed(db) == [1]
        with pytest.raises(Unavailable):
            await agent.wait_message("user.go", None, 0.2)

    try:
        asyncio.run(scenario())
    finally:
        state.close()


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
