"""The agent endpoint: one long-lived WebSocket per machine (``/v1/agent/connect``).

Handshake: the agent authenticates with its credential (Authorization header), sends
``hello`` with the highest server seq it processed; the server answers ``welcome`` with
the highest agent seq it processed; then both replay what the other has not processed.
Close codes: 4400 protocol error, 4401 credential refused, 4403 revoked, 4409 replaced
by a newer connection of the same machine, 1011 the server failed to apply a message
(the agent reconnects and sends it again; see poison messages in protocol/delivery.py),
1013 the database is unavailable or the server is stopping (the agent reconnects later;
what it sent and had no ack for is sent again).
Frames are decoded by the catalogue (``protocol/frames.py``) and handled by one method
each; messages by ``ops/delivery.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..errors import CrcError, InvalidInput, Unauthorized, Unavailable
from ..protocol.frames import (
    FEATURES,
    Ack,
    ErrorFrame,
    Hello,
    Msg,
    Revoked,
    Welcome,
    ack_frame,
    read_frame,
    write_frame,
)
from ..protocol.wire import Dispatcher, Frame, Side
from . import auth
from .admission import LoginGate
from .hub import AgentLink, EventBus
from .ops import delivery
from .pacing import Paces, charged_copies, stored_size
from .store.base import Store

__all__ = ["agent_endpoint"]

HELLO_TIMEOUT = 15.0
PACE_CHECK_SECONDS = 1.0  # a paced connection replaced meanwhile ends this soon

log = logging.getLogger(__name__)


async def agent_endpoint(ws: WebSocket) -> None:
    app = ws.app
    gate: LoginGate = app.state.logins
    retry_after = gate.enter()
    if retry_after is not None:
        # Over the bound of logins in progress: answered before the WebSocket exists.
        busy = Unavailable("too many agents connecting at once; try again later")
        await ws.send_denial_response(
            JSONResponse(
                busy.to_payload(),
                status_code=503,
                headers={"Retry-After": str(int(retry_after))},
            )
        )
        return
    try:
        started, welcomed = gate.start(), False
        try:
            login = await _login(ws)
            welcomed = login is not None
        finally:
            gate.leave(started, welcomed)
        if login is not None:
            await _serve(ws, *login)
    except Unavailable as exc:
        # The database failed (or the server is stopping) at any step: nothing this
        # connection sent was acknowledged; the agent reconnects later and resends it.
        log.info("agent connection closed: %s", exc.message)
        await _refuse(ws, 1013, exc)


async def _login(ws: WebSocket) -> tuple[dict[str, Any], Hello, dict[str, Any]] | None:
    """Accept, authenticate, read the hello, record the connection, send the welcome:
    the machine, its hello and what was recorded; None if the agent was refused."""
    app = ws.app
    store: Store = app.state.store
    gate: LoginGate = app.state.logins
    await ws.accept()
    try:
        m = await auth.machine(ws)
    except Unauthorized as exc:
        await _refuse(ws, 4401, exc)
        return None
    if not gate.claim(m["id"]):
        # Its credential is logging in on another connection already: one at a time.
        await _refuse(ws, 1013, Unavailable("this machine is connecting already; try later"))
        return None
    try:
        try:
            hello = read_frame(await asyncio.wait_for(_receive_text(ws), HELLO_TIMEOUT))
            if not isinstance(hello, Hello):
                raise CrcError("expected a hello frame first", code="protocol")
        except (asyncio.TimeoutError, WebSocketDisconnect):
            with contextlib.suppress(Exception):
                await ws.close(4400, "no hello")
            return None
        except CrcError as exc:
            await _refuse(ws, 4400, exc)
            return None
        peer = ws.client.host if ws.client else None
        try:
            info = await store.write(
                delivery.machine_connected,
                m["id"],
                hello.ready,
                peer,
                app.state.replica,
                hello.ack,
                hello.resume_from,
            )
        except InvalidInput as exc:  # a hello the machine's state refuses: nothing changed
            await _refuse(ws, 4400, exc)
            return None
        try:
            await ws.send_text(
                write_frame(
                    Welcome(
                        ack=info["in_done"],
                        resume_from=info["resume_from"],
                        machine=m["name"],
                        group=m["group_name"],
                        features=FEATURES,
                    )
                )
            )
        except (WebSocketDisconnect, ConnectionError, RuntimeError):
            await _gone(ws, m)
            return None
        return m, hello, info
    finally:
        gate.unclaim(m["id"])


async def _gone(ws: WebSocket, m: dict[str, Any]) -> None:
    """The connection of ``m`` ended: it is offline unless a newer one took over."""
    app = ws.app
    if app.state.hub.links.get(m["id"]) is None:
        with contextlib.suppress(Exception):
            await app.state.store.write(delivery.machine_disconnected, m["id"], app.state.replica)


async def _serve(ws: WebSocket, m: dict[str, Any], hello: Hello, info: dict[str, Any]) -> None:
    """The connection after the welcome: replay, then frames until it ends."""
    app = ws.app
    store: Store = app.state.store

    async def reload(machine_id: str, after: int) -> list[tuple[int, str]]:
        return await store.read(delivery.outbox_after, machine_id, after)

    # Not hello.ack: an agent whose state is older than what it acknowledged (restored
    # from a backup) is told to skip to resume_from, and the replay starts there.
    link = AgentLink(m["id"], ws.send_text, ws.close, reload, sent_upto=info["sent_upto"])
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
        await _gone(ws, m)


class _Connection:
    """One agent's connection after the handshake: what each frame it sends does."""

    def __init__(self, ws: WebSocket, store: Store, m: dict[str, Any], link: AgentLink) -> None:
        self.ws, self.store, self.m, self.link = ws, store, m, link
        #: Whether the last frame counts against the machine's bytes per second
        #: (server/pacing.py): all but acks that release a message and what a job sent
        #: it reports, when stored; a ``user.*`` message to peers once per copy stored
        #: (``charged_copies``): how many times the frame's size it costs.
        self.copies = 1

    async def error(self, exc: CrcError, seq: int | None = None) -> None:
        """Tell the agent what was wrong with a frame (nothing was stored); the reader
        waits while the agent does not read (``AgentLink.send_control_now``)."""
        payload = exc.to_payload()["error"]
        frame = write_frame(ErrorFrame(error=payload, seq=seq))
        await self.link.send_control_now(frame, bounded=True)

    async def on_ack(self, frame: Ack) -> bool:
        try:
            released = await self.store.write(delivery.ack_outbox, self.m["id"], frame.seq)
        except CrcError as exc:
            self.copies = 1
            await self.error(exc)
        else:
            # An ack that releases nothing (one already had) was a write for nothing.
            self.copies = 0 if released else 1
        return True

    async def on_msg(self, frame: Msg) -> bool:
        result = await self.store.write(
            delivery.apply_agent_message, self.m["id"], frame.seq, frame.msg, frame.ack
        )
        receipt = result["receipt"]
        self.copies = charged_copies(frame.msg.get("type"), result)
        if result.get("deliveries"):
            self.ws.app.state.hub.deliver(result["deliveries"])
        if receipt == "revoked":
            # Revoked meanwhile (e.g. its group deleted through another replica): told
            # why, and to remove its service where the group asked for that.
            hub = self.ws.app.state.hub
            if self.m["id"] in hub.links:
                await hub.revoke([self.m["id"]], result["reason"], result["uninstall"])
            else:
                await _refuse(self.ws, 4403, CrcError(result["reason"], code="revoked"))
            return False
        if receipt == "gap":
            await _refuse(
                self.ws,
                4400,
                CrcError(f"sequence gap: expected {result['expected']}, resume", code="protocol"),
            )
            return False
        if receipt == "retry":  # this server failed to apply it: the agent sends it again
            await _refuse(self.ws, 1011, CrcError(result["error"]["message"], code="internal"))
            return False
        if "ack_error" in result:  # its msg.ack refused, as an ack frame's would be
            await self.link.send_control_now(write_frame(ErrorFrame(error=result["ack_error"])))
        if "error" in result:
            await self.link.send_control_now(
                write_frame(ErrorFrame(error=result["error"], seq=frame.seq))
            )
        await self.link.send_control_now(ack_frame(frame.seq))
        return True

    async def on_hello(self, frame: Hello) -> bool:
        self.copies = 1
        await self.error(CrcError("unexpected hello frame", code="unknown_type"))
        return True


async def _read_loop(ws: WebSocket, store: Store, m: dict[str, Any], link: AgentLink) -> None:
    conn = _Connection(ws, store, m, link)
    paces: Paces = ws.app.state.paces
    handlers: Dispatcher[Any] = Dispatcher(
        Side.SERVER, Frame, {Hello: conn.on_hello, Msg: conn.on_msg, Ack: conn.on_ack}
    )
    while not link.closed:
        try:
            text = await _next_frame(ws, paces, m["id"], link)
        except CrcError as exc:  # a binary frame
            await _refuse(ws, 4400, exc)
            return
        except RuntimeError:  # the socket closed
            return
        if text is None:
            return
        # Counted whatever becomes of it, also when answering it fails (the machine
        # went away meanwhile) or it ends the connection (a gap): what it cost the
        # server is spent. A handler says what it cost once stored (``copies``).
        conn.copies, go_on = 1, False
        try:
            try:
                frame = read_frame(text)
                handler = handlers[frame]
            except CrcError as exc:
                # Malformed frame, or one only agents receive: tell the agent, keep the
                # connection (nothing was stored).
                go_on = True
                await conn.error(exc)
            else:
                go_on = await handler(frame)
        finally:
            if conn.copies:
                paces.charge(m["id"], stored_size(text) * conn.copies)
        if not go_on:
            return


async def _next_frame(ws: WebSocket, paces: Paces, machine: str, link: AgentLink) -> str | None:
    """The machine's next frame, read once it is out of debt (nothing it sent is lost);
    None once the connection is replaced or the server stops meanwhile (what it held
    was not acknowledged: the agent sends it again). While it waits, one frame is read
    ahead, so that a machine that goes away is noticed (its connection ends) rather
    than waited for; the next is read after the debt."""
    bus: EventBus = ws.app.state.bus
    ahead: asyncio.Task[str] | None = None
    try:
        while (delay := paces.due(machine)) > 0 and not link.closed:
            if bus.stopping:  # not waited for: the server stops in a few seconds
                return None
            if ahead is None:
                ahead = asyncio.ensure_future(_receive_text(ws))
            wait = min(delay, PACE_CHECK_SECONDS)
            if ahead.done():
                ahead.result()  # the socket closed, or a binary frame: raised as a read would
                await asyncio.sleep(wait)
            else:
                await asyncio.wait({ahead}, timeout=wait)
        if link.closed:
            return None
        return await (ahead if ahead is not None else _receive_text(ws))
    finally:
        if ahead is not None:
            if not ahead.done():
                ahead.cancel()
                await asyncio.wait({ahead})
            if not ahead.cancelled():
                # A read that failed (the socket closed) as the wait ended for another
                # reason: seen here, not logged as "never retrieved" by asyncio.
                ahead.exception()


async def _receive_text(ws: WebSocket) -> str:
    """The next message, which must be text (every frame is a JSON text frame): CrcError
    (code ``protocol``) for a binary one, whose ASGI message has no ``text`` (starlette's
    ``receive_text`` raises KeyError), also when it comes first, as the hello."""
    try:
        return await ws.receive_text()
    except KeyError:
        raise CrcError("binary frames are not supported", code="protocol") from None


async def _refuse(ws: WebSocket, code: int, exc: CrcError) -> None:
    payload = exc.to_payload()["error"]
    frame: Frame = (
        Revoked(reason=exc.message, error=payload)
        if code in (4401, 4403)
        else ErrorFrame(error=payload, reason=exc.message)
    )
    with contextlib.suppress(Exception):
        await ws.send_text(write_frame(frame))
        await ws.close(code, exc.message[:120])
