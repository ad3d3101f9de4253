"""The two real ends of the agent connection in one process, for protocol tests: the
server's operations on a real SQLite store, and a real agent (``Agent`` over its
``AgentState`` on a SQLite file). Tests play the link between them: what each end
writes is collected as frame texts, and handed to the other end's receiving code
(``apply_agent_message`` / ``ack_outbox`` on the server, ``Agent._on_frame`` on the
agent) - the code the shipped server and agent run."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from cloudremotecontrol.agent.core import Agent
from cloudremotecontrol.agent.state import AgentState, Credential
from cloudremotecontrol.protocol.frames import Ack, Msg, Welcome, read_frame, write_frame
from cloudremotecontrol.server.ops import delivery, enrollment, groups, users
from cloudremotecontrol.server.store.sqlite import SqliteStore


class Wire:
    """What an agent writes to its connection: frame texts, in order."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, text: str) -> None:
        self.sent.append(text)

    async def close(self) -> None:
        pass


class Server:
    """The server's side: a real SQLite store holding user alice, group lab, machine m."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.store = self._open()
        token = self.store.write_sync(users.create_user, "alice")
        self.user = self.store.write_sync(users.authenticate_master, token)
        out = self.store.write_sync(
            groups.create_group, self.user["user_id"], "lab", [{"name": "m"}]
        )
        self.credential = self.store.write_sync(enrollment.enroll, out["machines"][0]["key"], None)
        self.machine_id = self.machine()["id"]

    def _open(self) -> SqliteStore:
        store = SqliteStore(str(self.path))
        store.open_sync()
        return store

    def restart(self) -> None:
        """kill -9 and start again: only what was committed is left."""
        self.store.close_sync()
        self.store = self._open()

    def close(self) -> None:
        self.store.close_sync()

    def run(self, op: Any, *args: Any) -> Any:
        return self.store.write_sync(op, *args)

    def machine(self) -> dict[str, Any]:
        row = self.run(lambda tx: tx.one("SELECT * FROM machines WHERE name = 'm'"))
        assert row is not None
        return dict(row)

    def connect(self, hello_ack: int, resume_from: int | None) -> tuple[Welcome, list[str]]:
        """The handshake's server half: the welcome, and what it replays after it."""
        info = self.run(
            delivery.machine_connected, self.machine_id, True, None, "r1", hello_ack, resume_from
        )
        welcome = Welcome(ack=info["in_done"], resume_from=info["resume_from"], machine="m")
        replay = []
        after = info["sent_upto"]  # as agent_ws.py starts its AgentLink
        while rows := self.run(delivery.outbox_after, self.machine_id, after):
            replay.extend(frame for _, frame in rows)
            after = rows[-1][0]
        return welcome, replay

    def receive(self, text: str) -> list[str] | None:
        """A frame from the agent, as the endpoint handles it: the frames it answers, or
        None when it closes the connection (a gap, or "retry")."""
        frame = read_frame(text)
        if isinstance(frame, Ack):
            self.run(delivery.ack_outbox, self.machine_id, frame.seq)
            return []
        assert isinstance(frame, Msg)
        result = self.run(delivery.apply_agent_message, self.machine_id, frame.seq, frame.msg)
        if result["receipt"] in ("gap", "retry", "revoked"):
            return None
        return [write_frame(Ack(seq=frame.seq))]

    def events(self, kind: str) -> list[dict[str, Any]]:
        from cloudremotecontrol.server.ops.common import loads

        rows = self.run(
            lambda tx: tx.all(
                "SELECT data, machine FROM events WHERE type = ? ORDER BY id", (kind,)
            )
        )
        return [{"machine": r["machine"], **loads(r["data"])} for r in rows]

    def outbox_seqs(self) -> list[int]:
        rows = self.run(delivery.outbox_after, self.machine_id, 0, 10**6)
        return [seq for seq, _ in rows]


class AgentEnd:
    """The agent's side: a real Agent whose state lives in ``state_dir``; ``restart``
    is a kill -9 (a new process on the same state directory)."""

    def __init__(self, state_dir: Path, credential: str) -> None:
        self.state_dir = state_dir
        self.cred = Credential(
            url="https://127.0.0.1:9", credential=credential, machine="m", group="lab"
        )
        self.loop = asyncio.new_event_loop()
        self.wire = Wire()
        self._start()

    def _start(self) -> None:
        self.state = AgentState(self.state_dir)
        self.agent = Agent(self.state, self.cred)

    def restart(self) -> None:
        self.agent._ws = None
        self.state.close()
        self._start()

    def close(self) -> None:
        self.state.close()
        self.loop.close()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def connect(self, welcome: Welcome) -> list[str]:
        """The handshake's agent half after ``welcome``: what it sends again."""
        frames = self.agent.welcomed(welcome)
        self.agent._ws = self.wire
        return frames

    def disconnect(self) -> None:
        self.agent._ws = None

    def receive(self, text: str) -> list[str] | None:
        """A frame from the server: the frames the agent answers (acks), or None when
        it drops the connection (a gap, or a message to try again)."""
        from cloudremotecontrol.errors import Unavailable

        ws = Wire()
        try:
            self.run(self.agent._on_frame(ws, text))
        except Unavailable:
            return None
        return ws.sent

    def take_sent(self) -> list[str]:
        """Frames the agent wrote on its own (what it sends while connected)."""
        sent, self.wire.sent = self.wire.sent, []
        return sent
