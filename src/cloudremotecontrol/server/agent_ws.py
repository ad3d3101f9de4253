"""The agent endpoint: one long-lived WebSocket per machine (``/v1/agent/connect``).

Handshake: the agent authenticates with its credential (Authorization header), sends
``hello`` with the highest server seq it processed; the server answers ``welcome`` with
the highest agent seq it processed; then both replay what the other has not processed.
Close codes: 4400 protocol error, 4401 credential refused, 4403 revoked, 4409 replaced
by a newer connection of the same machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from ..errors import CrcError, Unauthorized
from ..protocol.messages import decode_frame, encode_frame
from . import auth
from .hub import AgentLink
from .ops import delivery
from .store.base import Store

__all__ = ["agent_endpoint"]

HELLO_TIMEOUT = 15.0


async def agent_endpoint(ws: WebSocket) -> None:
    app = ws.app
    store: Store = app.state.store
    await ws.accept()
    try:
        m = await auth.machine(ws)
    except Unauthorized as exc:
        await _refuse(ws, 4401, exc)
        return
    try:
        hello = decode_frame(await asyncio.wait_for(ws.receive_text(), HELLO_TIMEOUT))
        if hello["type"] != "hello":
            raise CrcError("expected a hello frame first", code="protocol")
    except (asyncio.TimeoutError, WebSocketDisconnect):
        with contextlib.suppress(Exception):
            await ws.close(4400, "no hello")
        return
    except CrcError as exc:
        await _refuse(ws, 4400, exc)
        return
    peer = ws.client.host if ws.client else None
    agent_ack = hello["ack"]  # hello.ack and hello.resume_from checked by decode_frame
    info = await store.write(
        delivery.machine_connected,
        m["id"],
        bool(hello.get("ready")),
        peer,
        app.state.replica,
        agent_ack,
        hello.get("resume_from"),
    )
    await ws.send_text(
        encode_frame(
            {
                "type": "welcome",
                "ack": info["in_done"],
                "machine": m["name"],
                "group": m["group_name"],
            }
        )
    )

    async def reload(machine_id: str, after: int) -> list[tuple[int, str]]:
        return await store.read(delivery.outbox_after, machine_id, after)

    link = AgentLink(m["id"], ws.send_text, ws.close, reload, sent_upto=agent_ack)
    old = app.state.hub.attach(link)
    app.state.hub.deliver(info.get("deliveries") or [])
    if old is not None:
        old.closed = True
        with contextlib.suppress(Exception):
            await old.close(4409, "replaced by a newer connection")
    writer = asyncio.create_task(link.run_writer())
    try:
        await _read_loop(ws, store, m, link)
    except (WebSocketDisconnect, ConnectionError, RuntimeError):
        pass
    finally:
        link.closed = True
        writer.cancel()
        with contextlib.suppress(
            asyncio.CancelledError, WebSocketDisconnect, ConnectionError, RuntimeError
        ):
            await writer
        app.state.hub.detach(link)
        if app.state.hub.links.get(m["id"]) is None:
            with contextlib.suppress(Exception):
                await store.write(delivery.machine_disconnected, m["id"], app.state.replica)


async def _read_loop(ws: WebSocket, store: Store, m: dict[str, Any], link: AgentLink) -> None:
    while not link.closed:
        try:
            text = await ws.receive_text()
        except (KeyError, RuntimeError):  # binary frame or closed socket
            await _refuse(ws, 4400, CrcError("binary frames are not supported", code="protocol"))
            return
        try:
            frame = decode_frame(text)
        except CrcError as exc:
            # Malformed frame: tell the agent, keep the connection (nothing was stored).
            link.send_control(encode_frame({"type": "error", **exc.to_payload()}))
            continue
        kind = frame["type"]
        if kind == "ack":
            try:
                await store.write(delivery.ack_outbox, m["id"], frame["seq"])
            except CrcError as exc:
                link.send_control(encode_frame({"type": "error", **exc.to_payload()}))
        elif kind == "msg":
            result = await store.write(
                delivery.apply_agent_message, m["id"], frame["seq"], frame["msg"]
            )
            receipt = result["receipt"]
            if result.get("deliveries"):
                ws.app.state.hub.deliver(result["deliveries"])
            if receipt == "revoked":
                await _refuse(ws, 4403, CrcError("machine revoked", code="revoked"))
                return
            if receipt == "gap":
                await _refuse(
                    ws,
                    4400,
                    CrcError(
                        f"sequence gap: expected {result['expected']}, resume", code="protocol"
                    ),
                )
                return
            if "error" in result:
                link.send_control(
                    encode_frame({"type": "error", "seq": frame["seq"], "error": result["error"]})
                )
            link.send_control(encode_frame({"type": "ack", "seq": frame["seq"]}))
        else:
            link.send_control(
                encode_frame(
                    {
                        "type": "error",
                        "error": {"code": "unknown_type", "message": f"unexpected {kind} frame"},
                    }
                )
            )


async def _refuse(ws: WebSocket, code: int, exc: CrcError) -> None:
    with contextlib.suppress(Exception):
        await ws.send_text(
            json.dumps(
                {
                    "type": "revoked" if code in (4401, 4403) else "error",
                    "reason": exc.message,
                    **exc.to_payload(),
                }
            )
        )
        await ws.close(code, exc.message[:120])
