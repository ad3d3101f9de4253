"""The control requests an agent remembers (to answer one sent again without doing it
twice) are bounded: the last ``MAX_REQUEST_IDS``, none older than a day."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cloudremotecontrol.agent import state as state_mod
from cloudremotecontrol.agent.state import AgentState


def test_only_the_last_request_ids_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_mod, "MAX_REQUEST_IDS", 5)
    state = AgentState(tmp_path)
    try:
        for i in range(12):
            state.record_request(f"id-{i}", {"i": i})
        assert state.request_reply("id-6") is None
        assert state.request_reply("id-7") == {"i": 7}
        assert state.request_reply("id-11") == {"i": 11}
        count = state.db.execute("SELECT COUNT(*) FROM control_requests").fetchone()[0]
        assert count == 5
    finally:
        state.close()


def test_request_ids_older_than_a_day_are_forgotten(tmp_path: Path) -> None:
    state = AgentState(tmp_path)
    try:
        state.record_request("old", {})
        later = time.time() + state_mod.KEEP_REQUEST_IDS_SECONDS + 60
        state.record_request("new", {})
        state.db.execute("UPDATE control_requests SET created = ? WHERE id = 'new'", (later,))
        assert state.prune_requests(now=later) == 1
        assert state.request_reply("old") is None and state.request_reply("new") == {}
    finally:
        state.close()


def test_a_state_dir_of_an_older_agent_gets_the_table(tmp_path: Path) -> None:
    state = AgentState(tmp_path)
    state.db.execute("DROP TABLE control_requests")
    state.close()
    state = AgentState(tmp_path)
    try:
        state.record_request("x" * 20, {"ok": 1})
        assert state.request_reply("x" * 20) == {"ok": 1}
    finally:
        state.close()


def test_finishing_a_pending_request_keeps_the_ids_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A request recorded as started, then done (an upsert) after other rows were
    # written meanwhile (the job output queued while a kv set waited for the server):
    # the bound counts this table's rows, not the last row written anywhere.
    monkeypatch.setattr(state_mod, "MAX_REQUEST_IDS", 5)
    state = AgentState(tmp_path)
    try:
        state.record_request("done-before", {"i": 1})
        state.record_request("kv", {}, pending={"key": "k"})
        state.db.execute("INSERT INTO outbox (seq, frame) VALUES (50000, 'queued meanwhile')")
        state.record_request("kv", {"version": 2})
        assert state.request_reply("done-before") == {"i": 1}
        assert state.request_reply("kv") == {"version": 2}
    finally:
        state.close()
