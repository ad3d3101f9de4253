"""Helpers for system tests that speak the wire protocols by hand: HTTP with a pinned
certificate and the agent WebSocket without the real agent's manners (so tests can send
what a broken or hostile machine would)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from cloudremotecontrol.tlspin import client_context


def agent_envelope(
    group: str,
    sender: str,
    type: str,
    body: Any,
    to: str = "master",
    fields: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A message's envelope as an agent writes it (``fields`` override or add any field)."""
    return {
        "id": uuid.uuid4().hex,
        "group": group,
        "from": sender,
        "to": to,
        "type": type,
        "body": body,
        "correlation_id": None,
        "created": time.time(),
        **(fields or {}),
    }


def msg_frame(seq: int, msg: dict[str, Any], **frame: Any) -> str:
    """The ``msg`` frame carrying ``msg`` as number ``seq`` (``frame``: e.g. ``ack``)."""
    return json.dumps({"type": "msg", "seq": seq, **frame, "msg": msg})


def pinned_http(server: Any) -> httpx.Client:
    """A bare HTTP client trusting exactly the server's certificate, with no credential."""
    ctx, _ = client_context(server.url, server.fingerprint)
    return httpx.Client(base_url=server.url, verify=ctx, trust_env=False, timeout=30)


def assert_no_traceback_in_server_log(server: Any) -> None:
    """An error the server did not expect is logged with a traceback: there must be none."""
    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]


def assert_error(resp: httpx.Response, status: int, code: str, part: str = "") -> str:
    where = f"{resp.request.method} {resp.request.url.path}"
    assert resp.status_code == status, f"{where}: {resp.status_code} {resp.text}"
    if resp.request.method == "HEAD":
        assert resp.content == b""
        return ""
    body = resp.json()
    assert list(body) == ["error"], f"{where}: {body}"
    err = body["error"]
    assert {"code", "message"} <= set(err), f"{where}: {body}"
    assert err["code"] == code, f"{where}: {body}"
    assert isinstance(err["message"], str) and err["message"].strip(), f"{where}: {body}"
    assert "Traceback" not in resp.text
    assert part in err["message"], f"{where}: {body}"
    return str(err["message"])


def enroll(http: httpx.Client, key: str) -> str:
    r = http.post("/v1/agent/enroll", json={"key": key})
    assert r.status_code == 200, r.text
    cred = r.json()["credential"]
    assert cred.startswith("crca_")
    return str(cred)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def forge(secret: str) -> str:
    """The same kind and id as ``secret``, with another secret part."""
    kind, ident, _ = secret.split("_", 2)
    return f"{kind}_{ident}_{'y' * 32}"


# -- the raw agent wire -------------------------------------------------------------------


def ws_url(server: Any) -> str:
    return "wss://" + server.url.split("://", 1)[1].rstrip("/") + "/v1/agent/connect"


async def recv_json(ws: ClientConnection, timeout: float = 15.0) -> dict[str, Any]:
    return dict(json.loads(await asyncio.wait_for(ws.recv(), timeout)))


@contextlib.asynccontextmanager
async def ws_open(server: Any, auth: str | None) -> AsyncIterator[ClientConnection]:
    ctx, _ = client_context(server.url, server.fingerprint)
    headers = {} if auth is None else {"Authorization": auth}
    async with connect(
        ws_url(server), ssl=ctx, additional_headers=headers, compression=None, open_timeout=15
    ) as ws:
        yield ws


class WireAgent:
    """An agent written by hand: the raw protocol, with none of the real agent's manners."""

    def __init__(self, ws: ClientConnection, group: str, name: str, seq: int) -> None:
        self.ws, self.group, self.name, self.seq = ws, group, name, seq

    async def send_msg(
        self, type: str, body: Any, to: str = "master", envelope: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Send the next message (``envelope`` overrides any field of the envelope);
        return the frames up to and including its ack."""
        self.seq += 1
        msg = agent_envelope(self.group, self.name, type, body, to, envelope)
        await self.ws.send(msg_frame(self.seq, msg))
        frames = []
        while True:
            frame = await recv_json(self.ws)
            frames.append(frame)
            if frame == {"type": "ack", "seq": self.seq}:
                return frames

    async def next_msg(self) -> dict[str, Any]:
        """The next message the server delivers (acknowledged)."""
        while True:
            frame = await recv_json(self.ws)
            if frame["type"] == "msg":
                await self.ws.send(json.dumps({"type": "ack", "seq": frame["seq"]}))
                return dict(frame["msg"])


@contextlib.asynccontextmanager
async def wire_agent(server: Any, cred: str, group: str, name: str) -> AsyncIterator[WireAgent]:
    async with ws_open(server, bearer(cred)) as ws:
        await ws.send(json.dumps({"type": "hello", "ack": 0, "ready": True}))
        welcome = await recv_json(ws)
        assert welcome["type"] == "welcome", welcome
        assert (welcome["group"], welcome["machine"]) == (group, name)
        yield WireAgent(ws, group, name, welcome["ack"])


async def close_code(ws: ClientConnection, timeout: float = 15.0) -> int:
    """Read (and drop) frames until the server closes; return its close code."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except ConnectionClosed as exc:
        assert exc.rcvd is not None, "closed without a close frame from the server"
        return exc.rcvd.code
