"""The agent's control channel hands a waited-for thing over only to a client that has
it (``agent/control.py``): over a real Unix socket, with the real client ``call``."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from cloudremotecontrol.agent.control import AgentGone, ControlServer, Handed, NoAgent, call


class Recorder:
    def __init__(self) -> None:
        self.log: list[str] = []
        self.cancelled = asyncio.Event()

    async def handler(self, req: dict[str, Any]) -> dict[str, Any] | Handed:
        if req.get("op") == "emit":  # quick, and must not be cut halfway
            await asyncio.sleep(0.3)
            self.log.append("emitted")
            return {}
        if req.get("op") == "kv-wait":
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        return Handed(
            {"thing": 7}, lambda: self.log.append("taken"), lambda: self.log.append("released")
        )


async def _with_server(tmp_path: Path, client: Any) -> Recorder:
    rec = Recorder()
    server = ControlServer(tmp_path, rec.handler)
    await server.start()
    try:
        await asyncio.to_thread(client, tmp_path, rec)
        for _ in range(100):  # the server finishes its side after the client's
            if rec.log or rec.cancelled.is_set():  # (emit: after its sleep)
                break
            await asyncio.sleep(0.02)
    finally:
        await server.close()
    return rec


def test_a_confirmed_answer_is_taken(tmp_path: Path) -> None:
    def client(state: Path, rec: Recorder) -> None:
        assert call(state, {"op": "get"}, confirm=True)["thing"] == 7

    assert asyncio.run(_with_server(tmp_path, client)).log == ["taken"]


def test_an_answer_the_client_did_not_confirm_is_released(tmp_path: Path) -> None:
    def client(state: Path, rec: Recorder) -> None:
        with socket.socket(socket.AF_UNIX) as sock:  # reads the answer, then dies
            sock.connect(str(state / "control.sock"))
            sock.sendall(json.dumps({"op": "get", "confirm": True}).encode() + b"\n")
            assert json.loads(sock.makefile().readline())["thing"] == 7

    assert asyncio.run(_with_server(tmp_path, client)).log == ["released"]


def test_a_client_that_goes_away_while_waiting_cancels_its_request(tmp_path: Path) -> None:
    def client(state: Path, rec: Recorder) -> None:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(state / "control.sock"))
            sock.sendall(json.dumps({"op": "kv-wait", "confirm": True}).encode() + b"\n")

    rec = asyncio.run(_with_server(tmp_path, client))
    assert rec.cancelled.is_set() and rec.log == []


def test_a_client_that_does_not_ask_to_confirm_takes_what_was_sent(tmp_path: Path) -> None:
    def client(state: Path, rec: Recorder) -> None:
        assert call(state, {"op": "get"})["thing"] == 7

    assert asyncio.run(_with_server(tmp_path, client)).log == ["taken"]


def test_no_agent_and_a_gone_agent_are_told_apart(tmp_path: Path) -> None:
    with pytest.raises(NoAgent, match="no agent is running"):
        call(tmp_path, {"op": "get"})
    stale = socket.socket(socket.AF_UNIX)  # a socket file nobody listens on: killed agent
    stale.bind(str(tmp_path / "control.sock"))
    stale.close()
    with pytest.raises(AgentGone, match="no agent is running"):
        call(tmp_path, {"op": "get"})


def test_a_quick_request_is_carried_out_even_if_its_client_leaves(tmp_path: Path) -> None:
    def client(state: Path, rec: Recorder) -> None:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(state / "control.sock"))
            sock.sendall(json.dumps({"op": "emit"}).encode() + b"\n")

    assert asyncio.run(_with_server(tmp_path, client)).log == ["emitted"]
