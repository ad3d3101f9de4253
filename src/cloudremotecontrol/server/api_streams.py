"""Shell sessions and TCP forwards over HTTP: open, splice, list, replay.

``POST /v1/groups/{group}/streams`` (master) checks and audits the request and asks
the machine's agent (``stream.open`` on its control connection) to dial
``/v1/agent/streams/{id}``; the master dials ``/v1/streams/{id}``; the server splices
the two (server/streams.py, protocol/streams.py for why one WebSocket per stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import Field
from starlette.websockets import WebSocket

from ..errors import Conflict, CrcError, Forbidden, InvalidInput, NotFound, Unauthorized
from ..protocol.frames import write_frame
from ..protocol.streams import (
    STREAM_ID,
    StreamError,
    StreamOpen,
    StreamRequest,
    check_host,
    check_terminal_size,
    new_stream_id,
    write_control,
)
from . import auth
from .httpguard import mark_authenticated
from .models import StrictBody
from .ops import recordings as recording_ops
from .ops import sessions as session_ops
from .recorder import Recorder
from .store.base import Store, Tx
from .streams import AGENT_DIAL_SECONDS, Stream, StreamBroker, close_ends, splice

__all__ = ["add_stream_routes", "router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1")
Master = Annotated[dict[str, Any], Depends(auth.master)]


class StreamCreate(StrictBody):
    machine: str = Field(max_length=63)
    kind: Literal["shell", "forward"]
    argv: list[str] | None = Field(default=None, max_length=1000)
    shell: str | None = Field(default=None, max_length=1024)
    cols: int | None = None
    rows: int | None = None
    term: str | None = Field(default=None, max_length=64)
    host: str | None = Field(default=None, max_length=255)
    port: int | None = None
    record: bool | None = None
    stdin: Literal["pipe"] | None = None
    #: A forward's first connection, made only to check that the remote end answers:
    #: audited as any stream, marked so that session lists leave it out by default.
    probe: bool | None = None


def _broker(app: Any) -> StreamBroker:
    broker: StreamBroker = app.state.streams
    return broker


def _open_frame(body: StreamCreate, stream_id: str) -> tuple[StreamOpen, dict[str, Any]]:
    """The agent's frame (every field checked by the catalogue) and the audit detail."""
    fields: dict[str, Any] = {"stream": stream_id, "kind": body.kind}
    detail: dict[str, Any]
    if body.kind == "shell":
        if body.probe:
            raise InvalidInput("only a forward can be a probe", field="probe")
        if body.host is not None or body.port is not None:
            raise InvalidInput("a shell takes no host or port", field="host")
        cols, rows = check_terminal_size(
            80 if body.cols is None else body.cols, 24 if body.rows is None else body.rows
        )
        fields.update(
            cols=cols,
            rows=rows,
            argv=body.argv,
            shell=body.shell,
            term=body.term,
            stdin=body.stdin,
        )
        detail = {"kind": "shell", "argv": body.argv, "shell": body.shell}
    else:
        if body.port is None:
            raise InvalidInput("a forward needs the remote port", field="port")
        if body.argv is not None or body.shell is not None or body.cols or body.rows or body.stdin:
            raise InvalidInput("a forward takes no command or terminal", field="argv")
        host = check_host(body.host or "127.0.0.1")
        fields.update(host=host, port=body.port)
        detail = {"kind": "forward", "target": f"{host}:{body.port}"}
        if body.probe:
            detail["probe"] = True
    frame = StreamOpen.from_body(fields)
    return frame, {k: v for k, v in detail.items() if v is not None}


@router.post("/groups/{group}/streams", status_code=201, tags=["streams"])
async def open_stream(
    group: str, body: StreamCreate, user: Master, request: Request
) -> dict[str, Any]:
    """Open a shell or a forward to a machine: answers the stream id to dial at
    ``/v1/streams/{id}`` (WebSocket, the same bearer token) within 30 seconds."""
    app = request.app
    stream_id = new_stream_id()
    frame, detail = _open_frame(body, stream_id)
    store: Store = app.state.store
    info = await store.read(
        session_ops.check_stream, user, group, body.machine, body.kind, body.record
    )
    link = app.state.hub.links.get(info["machine_id"])
    here = link is not None and not link.closed
    elsewhere = (
        not here
        and info["state"] == "ready"
        and bool(info["connected_by"])
        and info["connected_by"] != app.state.replica
    )
    replica_url: str | None = getattr(app.state, "replica_url", None)
    if not here and not (elsewhere and replica_url):
        where = (
            " (it is connected to another server replica, and this one has no --replica-url "
            "for it to dial back: open the stream there)"
            if elsewhere
            else ""
        )
        raise Conflict(
            f"machine {body.machine!r} is not connected{where}: see `crc status {group}`",
            code="machine_offline",
        )
    stream = Stream(
        id=stream_id,
        kind=body.kind,
        user=user,
        group=group,
        group_id=info["group_id"],
        machine=body.machine,
        machine_id=info["machine_id"],
        detail=detail,
        record=info["record"],
        record_input=info["record_input"],
        cols=frame.cols or 80,
        rows=frame.rows or 24,
    )
    await store.write(
        session_ops.open_stream,
        user,
        group,
        info["group_id"],
        body.machine,
        detail | {"stream": stream_id},
        app.state.replica,
    )
    _broker(app).add(stream)
    if link is not None and here:
        link.send_control(write_frame(frame))
    else:
        # The replica holding the machine's connection delivers the request (a numbered
        # message, through the database); the machine dials back here.
        asked = StreamRequest.from_body({**frame.to_body(), "url": replica_url})
        deliveries = await store.write(
            session_ops.request_stream, group, info["machine_id"], body.machine, asked
        )
        app.state.hub.deliver(deliveries)
    return {
        "stream": stream_id,
        "kind": body.kind,
        "machine": body.machine,
        "group": group,
        "record": stream.record,
    }


@router.get("/groups/{group}/sessions", tags=["streams"])
async def list_sessions(
    group: str,
    user: Master,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    probes: bool = False,
) -> dict[str, Any]:
    """Shell sessions and forwards of the group that ended (who, target, bytes,
    duration, exit code, recording), oldest first: the latest ``limit``. The
    connections ``crc forward`` makes at its start to check the remote end (``"probe":
    true``) are left out, and not counted, unless ``probes=true``."""
    store: Store = request.app.state.store
    rows = await store.read(session_ops.list_sessions, user["user_id"], group, limit, probes)
    kept = await store.read(
        recording_ops.recorded_streams, user["user_id"], [str(r.get("stream")) for r in rows]
    )
    broker = _broker(request.app)
    for row in rows:
        path = broker.recording_path(str(row.get("stream")))
        row["recorded"] = row.get("stream") in kept or bool(path is not None and path.is_file())
    return {"group": group, "sessions": rows}


@router.get("/sessions/{stream}/recording", tags=["streams"], response_model=dict[str, Any])
async def recording(stream: str, user: Master, request: Request) -> Any:
    """The recording of a shell session: ``cast`` is an asciinema v2 file (``crc
    sessions play``). Any replica serves it (it is in the database); the answer is
    streamed, one stored chunk at a time."""
    stream = STREAM_ID.check(stream, "stream")
    store: Store = request.app.state.store
    user_id = str(user["user_id"])
    info = await store.read(recording_ops.recording_info, user_id, stream)
    if info is not None:
        return StreamingResponse(
            _cast_json(store, user_id, stream, info["chunks"]), media_type="application/json"
        )
    path = _broker(request.app).recording_path(stream)  # kept on disk by an older version
    if path is None or not path.is_file():
        raise NotFound(
            f"session {stream} has no recording (not recorded, or past its retention)",
            field="stream",
        )
    text = await asyncio.to_thread(path.read_text, "ascii")
    return {"stream": stream, "format": "asciicast-v2", "cast": text}


async def _cast_json(store: Store, user_id: str, stream: str, chunks: int) -> AsyncIterator[bytes]:
    """``{"stream", "format", "cast"}`` with the cast's chunks read one at a time (the
    text is ASCII, so each chunk is escaped on its own). A chunk pruned meanwhile ends
    the cast there. The database failing midway ends the answer unfinished (not valid
    JSON), so that a client never takes a part for the whole."""
    head = json.dumps({"stream": stream, "format": "asciicast-v2"}, separators=(",", ":"))
    yield (head[:-1] + ',"cast":"').encode()
    for n in range(chunks):
        try:
            data = await store.read(recording_ops.read_chunk, user_id, stream, n)
        except CrcError as exc:
            log.warning("recording of %s: reading chunk %d failed: %s", stream, n, exc.message)
            return
        if data is None:
            break
        yield json.dumps(data.decode("ascii"))[1:-1].encode()
    yield b'"}'


def _recorder(store: Store, stream: Stream) -> Recorder:
    """The session's recording, written to the store in chunks as it goes."""
    user_id = str(stream.user["user_id"])

    kept = session_ops.kept_detail(
        stream.machine, stream.detail | {"stream": stream.id}, stream.group_id
    )

    def append(tx: Tx, n: int, data: bytes, size: int, at: float, up: int, down: int) -> None:
        recording_ops.append_chunk(tx, stream.id, user_id, stream.group_id, n, data, size, at)
        # The bytes each way so far, with the chunk: a session cut by this server's
        # death (kill -9) is listed with them, not with none.
        session_ops.note_stream_bytes(tx, stream.id, kept, up, down)

    async def sink(n: int, data: bytes, size: int) -> None:
        await store.write(
            append, n, data, size, time.time(), stream.to_machine, stream.from_machine
        )

    header = {
        "version": 2,
        "width": stream.cols,
        "height": stream.rows,
        "timestamp": int(stream.opened),
        "title": f"{stream.group}/{stream.machine}",
        "env": {"TERM": str(stream.detail.get("term") or "xterm-256color")},
    }
    return Recorder(sink, header, stream.record_input)


# -- the two WebSockets of a stream ----------------------------------------------------


async def _deny(ws: WebSocket, exc: CrcError) -> None:
    """Refuse the WebSocket handshake with the HTTP error (status, JSON error)."""
    await ws.send_denial_response(JSONResponse(exc.to_payload(), status_code=exc.http_status))


def _own_origin(ws: WebSocket) -> str | None:
    """The origin a page of this server has (``https://host:port``), from the handshake."""
    host = ws.headers.get("host", "")
    if not host:
        return None
    scheme = "https" if ws.url.scheme == "wss" else "http"
    return f"{scheme}://{host}".lower()


async def _browser_user(ws: WebSocket) -> dict[str, Any]:
    """The dashboard's user for a handshake without a bearer token: a live session
    cookie, and an ``Origin`` header naming this server (a browser always sends it; a
    page of another site cannot forge it), else refused. The stream id itself is the
    ticket: only a CSRF-checked POST of the same user gets one, it is good for one
    connection within 30 s (docs/dashboard.md)."""
    from .dashboard.sessions import COOKIE, session_from_cookie

    if not getattr(ws.app.state, "dashboard", False) or not ws.cookies.get(COOKIE):
        raise Unauthorized("missing bearer token: run `crc login`")
    origin = ws.headers.get("origin")
    if origin is None or origin.lower() != _own_origin(ws):
        raise Forbidden(
            "a browser may open a stream only from this server's dashboard (Origin "
            f"{(origin or 'missing')[:100]!r} refused)",
            code="csrf",
        )
    user = await session_from_cookie(ws)
    if user is None:
        raise Unauthorized("log in to the dashboard first")
    mark_authenticated(ws)  # a live session: the connection leaves the pre-login pool
    return dict(user)


async def master_stream(ws: WebSocket) -> None:
    """``/v1/streams/{stream}``: the master's end. A bearer token, or the dashboard's
    session cookie from a page of this server's own origin (no cross-site WebSocket)."""
    app = ws.app
    broker = _broker(app)
    try:
        if auth.bearer(ws) is None:
            user = await _browser_user(ws)
        else:
            user = await auth.master(ws)
        stream_id = STREAM_ID.check(ws.path_params.get("stream"), "stream")
        stream = broker.streams.get(stream_id)
        if stream is None or stream.user["user_id"] != user["user_id"]:
            raise NotFound(f"no open stream {stream_id} (it expires 30 s after its POST)")
        if stream.master_attached:
            raise Conflict(f"stream {stream_id} is in use already")
    except CrcError as exc:
        await _deny(ws, exc)
        return
    stream.master_attached = True
    if stream.expiry is not None:
        stream.expiry.cancel()
    await ws.accept()
    rec: Recorder | None = None
    agent: WebSocket | None = None
    try:
        try:
            agent = await asyncio.wait_for(asyncio.shield(stream.agent), AGENT_DIAL_SECONDS)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            stream.error = (
                f"machine {stream.machine!r} did not answer within {AGENT_DIAL_SECONDS:g} s "
                "(offline, or it refused the stream)"
            )
            stream.error_code = "machine_unreachable"
            with contextlib.suppress(Exception):
                await ws.send_text(
                    write_control(StreamError(code="machine_unreachable", message=stream.error))
                )
                await ws.close(1000)
            return
        if stream.record:
            rec = _recorder(app.state.store, stream)
        await _splice_while_valid(ws, agent, stream, rec, app.state.store, auth.credential(ws))
    except asyncio.CancelledError:  # the server stops (uvicorn cancels after its grace)
        stream.error = "the server stopped"
        stream.error_code = "server_stopped"
    finally:
        store: Store = app.state.store
        if rec is not None:  # written before the close: whoever sees it finds the recording
            try:
                await rec.close()
            except Exception as exc:  # noqa: BLE001 -- the session's end is audited regardless
                log.warning("recording of %s: the rest is not recorded: %r", stream.id, exc)
        try:
            with contextlib.suppress(CrcError):
                await _write_end(store, stream, recorded=rec is not None)
            # Closed once its end is recorded: whoever sees the close finds it in the audit.
            await close_ends(ws, agent)
        finally:
            broker.remove(stream)
        broker.prune(app.state.settings.retain_recordings_days)


async def _write_end(store: Store, stream: Stream, recorded: bool) -> None:
    """Audit a stream's end (``crc sessions list``), and so take it off the open ones."""
    summary = stream.summary() | {"recorded": recorded}
    await store.write(
        session_ops.close_stream,
        stream.user,
        stream.group,
        stream.group_id,
        stream.machine,
        summary,
    )


CREDENTIAL_CHECK_SECONDS = auth.CHECK_AGAIN_SECONDS  # an open stream's token, this often


async def _splice_while_valid(
    ws: WebSocket,
    agent: WebSocket,
    stream: Stream,
    rec: Recorder | None,
    store: Store,
    cred: tuple[str, str] | None,
) -> None:
    """``splice`` until either side closes, until the master's token is revoked (or
    its dashboard session ends): a shell opened with a token does not outlive it; or
    until the server ends the stream (``stream.ended``: its machine revoked). The
    master is told why (``stream.error``), and the end says it too."""

    async def until_revoked() -> tuple[str, str]:
        while True:
            await asyncio.sleep(CREDENTIAL_CHECK_SECONDS)
            with contextlib.suppress(CrcError):  # the database away: checked again later
                if not await store.read(auth.still_valid, cred):
                    return ("unauthorized", "the master token was revoked: the stream is closed")

    async def until_ended() -> tuple[str, str]:
        return await asyncio.shield(stream.ended)

    splicing = asyncio.create_task(splice(ws, agent, stream, rec))
    watching = [asyncio.create_task(until_revoked()), asyncio.create_task(until_ended())]
    why: tuple[str, str] | None = None
    try:
        await asyncio.wait({splicing, *watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not splicing.done():
            ended = [t for t in watching if t.done() and not t.cancelled() and not t.exception()]
            why = ended[0].result() if ended else None
        elif stream.exit_code is None and stream.error is None and stream.ended.done():
            # The agent's end closed as the server ended the stream (its machine revoked,
            # then its connection closed): the master is told why, not that it went away.
            why = stream.ended.result()
        for task in (splicing, *watching):
            task.cancel()
        for task in (splicing, *watching):
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if why is not None:
        await _end_master(ws, stream, *why)


async def _end_master(ws: WebSocket, stream: Stream, code: str, message: str) -> None:
    """The server ends ``stream`` (its splice over): recorded as its end, and the
    master told why with a ``stream.error`` (the caller then closes both ends)."""
    stream.error = message
    stream.error_code = code
    log.info("stream %s closed: %s", stream.id, message)
    with contextlib.suppress(Exception):
        await ws.send_text(write_control(StreamError(code=code, message=message)))


async def agent_stream(ws: WebSocket) -> None:
    """``/v1/agent/streams/{stream}``: the agent's end, dialed after ``stream.open``."""
    broker = _broker(ws.app)
    try:
        m = await auth.machine(ws)
        stream_id = STREAM_ID.check(ws.path_params.get("stream"), "stream")
        stream = broker.streams.get(stream_id)
        if stream is None or stream.machine_id != m["id"] or stream.agent.done():
            raise NotFound(f"no stream {stream_id} for this machine")
    except CrcError as exc:
        await _deny(ws, exc)
        return
    await ws.accept()
    stream.agent.set_result(ws)
    try:
        await stream.done.wait()
    except asyncio.CancelledError:  # the server stops: the master's end says so
        pass
    with contextlib.suppress(Exception):
        await ws.close(1000)


def add_stream_routes(app: Any, recordings: Any) -> None:
    """Mount the WebSocket routes and the broker on ``app`` (``router`` is included
    with the others)."""

    async def never_dialled(stream: Stream) -> None:
        # Its end, as any stream's: audited, listed by `crc sessions list`, and no
        # longer open (a replica that stops later would otherwise leave it to be
        # closed as cut).
        try:
            await _write_end(app.state.store, stream, recorded=False)
        except Exception as exc:  # noqa: BLE001 -- a timer's task: nobody else would see it
            log.warning("stream %s: its end was not recorded: %r", stream.id, exc)

    app.state.streams = StreamBroker(recordings, never_dialled)
    app.add_api_websocket_route("/v1/streams/{stream}", master_stream)
    app.add_api_websocket_route("/v1/agent/streams/{stream}", agent_stream)
