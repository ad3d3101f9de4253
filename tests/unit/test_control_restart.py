"""A quick request to an agent that restarts (``agent/control.py``,
``call_through_restarts``): sent again only when the agent cannot have acted on it,
over real Unix sockets with stand-in agents that die at chosen points."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from cloudremotecontrol.agent.control import (
    AgentLost,
    ControlServer,
    NoAgent,
    call,
    call_through_restarts,
)
from cloudremotecontrol.errors import Unavailable


class DiesAfterReading:
    """An agent that reads each request, then dies before answering (``kill -9`` in
    the middle of its work) - the first ``dies`` times; then it answers."""

    def __init__(self, state: Path, dies: int, says_once: bool = False) -> None:
        self.requests: list[dict[str, Any]] = []
        self.dies = dies
        self.says_once = says_once  # knows request ids (an agent of this version)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(state / "control.sock"))
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                line = conn.makefile("rb").readline()
                request = json.loads(line)
                self.requests.append(request)
                if self.says_once and "id" in request:
                    conn.sendall(json.dumps({"once": request["id"]}).encode() + b"\n")
                if len(self.requests) > self.dies:
                    conn.sendall(b'{"ok": true, "answer": 1}\n')

    def close(self) -> None:
        self.sock.close()


def test_a_request_the_agent_may_have_carried_out_is_not_sent_again(tmp_path: Path) -> None:
    agent = DiesAfterReading(tmp_path, dies=5)
    try:
        with pytest.raises(AgentLost, match="`emit` is not sent again"):
            call_through_restarts(tmp_path, {"op": "emit", "type": "user.x"}, agent_wait=10)
    finally:
        agent.close()
    # An agent that did not say it knows request ids (an older one) ignored its id.
    assert [r["op"] for r in agent.requests] == ["emit"] and agent.requests[0]["id"]


def test_a_request_an_agent_does_once_is_sent_again_with_the_same_id(tmp_path: Path) -> None:
    agent = DiesAfterReading(tmp_path, dies=2, says_once=True)
    try:
        reply = call_through_restarts(tmp_path, {"op": "emit", "type": "user.x"}, agent_wait=10)
    finally:
        agent.close()
    assert reply["answer"] == 1 and [r["op"] for r in agent.requests] == ["emit"] * 3
    ids = {r["id"] for r in agent.requests}
    assert len(ids) == 1 and len(next(iter(ids))) >= 16  # one random id per command
    # The next command has an id of its own.
    (tmp_path / "control.sock").unlink()
    agent = DiesAfterReading(tmp_path, dies=0, says_once=True)
    try:
        call_through_restarts(tmp_path, {"op": "progress", "text": "x"}, agent_wait=10)
    finally:
        agent.close()
    assert agent.requests[0]["id"] not in ids


def test_a_request_that_changes_nothing_is_sent_again(tmp_path: Path) -> None:
    agent = DiesAfterReading(tmp_path, dies=2)
    try:
        reply = call_through_restarts(tmp_path, {"op": "status"}, agent_wait=10)
    finally:
        agent.close()
    assert reply["answer"] == 1 and [r["op"] for r in agent.requests] == ["status"] * 3


def test_a_request_the_agent_never_read_goes_to_the_next_agent_once(tmp_path: Path) -> None:
    frozen = socket.socket(socket.AF_UNIX)  # takes connections, never accepts them
    frozen.bind(str(tmp_path / "control.sock"))
    frozen.listen(8)
    handled: list[dict[str, Any]] = []
    result: dict[str, Any] = {}

    def client() -> None:
        try:
            result["reply"] = call_through_restarts(tmp_path, {"op": "emit"}, agent_wait=30)
        except Exception as exc:  # noqa: BLE001 -- reported by the assertion below
            result["error"] = exc

    async def handler(req: dict[str, Any]) -> dict[str, Any]:
        handled.append(req)
        return {}

    async def scenario() -> None:
        thread = threading.Thread(target=client)
        thread.start()
        # Until the client's connection waits in the frozen agent's socket.
        await asyncio.to_thread(select.select, [frozen], [], [], 30)
        frozen.close()  # killed: its unread connections are reset
        (tmp_path / "control.sock").unlink()
        server = ControlServer(tmp_path, handler)  # the restarted agent
        await server.start()
        try:
            await asyncio.to_thread(thread.join, 30)
        finally:
            await server.close()

    asyncio.run(scenario())
    assert "error" not in result, result
    assert result["reply"] == {"ok": True} and [r["op"] for r in handled] == ["emit"]


def test_a_stopping_agent_answers_the_quick_requests_it_took(tmp_path: Path) -> None:
    started = threading.Event()

    async def handler(req: dict[str, Any]) -> dict[str, Any]:
        started.set()
        await asyncio.sleep(0.5)  # still at work when the stop comes
        return {"done": True}

    result: dict[str, Any] = {}

    def client() -> None:
        try:
            result["reply"] = call(tmp_path, {"op": "emit"})
        except Exception as exc:  # noqa: BLE001 -- reported by the assertion below
            result["error"] = exc

    async def scenario() -> None:
        server = ControlServer(tmp_path, handler)
        await server.start()
        thread = threading.Thread(target=client)
        thread.start()
        await asyncio.to_thread(started.wait, 10)
        await server.close()  # SIGTERM; then the process ends, its tasks cancelled
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()
        await asyncio.to_thread(thread.join, 30)

    asyncio.run(scenario())
    assert result.get("reply", result)["done"] is True


def test_no_agent_is_waited_for_saying_so_then_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "agent.db").touch()  # an agent ran here: it may be restarting
    told: list[str] = []
    with pytest.raises(Unavailable, match=r"no agent answered .* within 0.5 s") as exc:
        call_through_restarts(tmp_path, {"op": "progress"}, agent_wait=0.5, on_wait=told.append)
    assert not isinstance(exc.value, NoAgent) and len(told) == 1
    assert told[0].startswith("waiting up to 0.5 s for the agent")
    with pytest.raises(NoAgent):  # no state directory: nothing to wait for
        call_through_restarts(tmp_path / "typo", {"op": "progress"}, on_wait=told.append)
    assert len(told) == 1


@pytest.mark.parametrize("left", [[], ["notes.txt"], ["agent.db-wal"]])
def test_a_state_dir_no_agent_ever_ran_in_is_not_waited_for(
    tmp_path: Path, left: list[str]
) -> None:
    """A directory (empty, or with files that are not an agent's) where no agent ever
    ran: no agent is coming, so no wait of --agent-wait; a clear error at once."""
    for name in left:
        (tmp_path / name).touch()
    told: list[str] = []
    with pytest.raises(NoAgent, match=r"none was ever started there") as exc:
        call_through_restarts(tmp_path, {"op": "status"}, agent_wait=30, on_wait=told.append)
    assert told == [] and exc.value.exit_code == 6
    assert f"--state-dir {tmp_path}`" in exc.value.message


@pytest.mark.parametrize(
    "name", ["agent.lock", "agent.db", "credential.json", "control.json", "service.json"]
)
def test_a_state_dir_an_agent_ran_in_is_waited_for(tmp_path: Path, name: str) -> None:
    (tmp_path / name).touch()
    told: list[str] = []
    with pytest.raises(Unavailable, match=r"no agent answered .* within 0.3 s") as exc:
        call_through_restarts(tmp_path, {"op": "status"}, agent_wait=0.3, on_wait=told.append)
    assert not isinstance(exc.value, NoAgent) and len(told) == 1
