"""The ASGI application: routes, error mapping, body limits, lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..errors import CrcError, InvalidInput, RateLimited, TooLarge
from ..protocol.limits import MAX_HTTP_BODY_BYTES, MAX_JSON_DEPTH
from . import api, api_bootstrap, api_files, api_kv, api_runs, api_streams, api_teardown
from .admission import LoginGate
from .agent_ws import agent_endpoint
from .api_docs import add_docs
from .blobs import BlobStore
from .config import ServerSettings
from .hub import EventBus, Hub
from .methods import Methods
from .openapi import install_openapi
from .ops import delivery
from .ops import groups as groups_ops
from .ops import hostsync as hostsync_ops
from .ops import overdue as overdue_ops
from .ops import recordings as recording_ops
from .ops import retention as retention_ops
from .ops import rollout as rollout_ops
from .ops import sessions as session_ops
from .ops import teardown as teardown_ops
from .pacing import Paces
from .retrylog import RetryLog
from .secheaders import SecurityHeaders
from .store.base import Store, Tx
from .teardown import run_due_teardowns
from .validation import validation_error

__all__ = ["create_app"]

log = logging.getLogger(__name__)

TOUCH_SECONDS = 30.0
EXPIRE_SECONDS = 1.0
ROLLOUT_SECONDS = 0.25
HOSTS_SECONDS = 1.0
#: Replicas (PostgreSQL): seconds between two looks for revoked machines among those
#: connected to this replica (``_revoked_loop``).
REVOKED_SECONDS = 2.0


class CrcApp(FastAPI):
    """The server's application: FastAPI with ``SecurityHeaders`` outside everything,
    Starlette's error handling included (``add_middleware`` puts a middleware inside
    that, where an internal error's 500 would pass it by)."""

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack())


class BodyLimit:
    """Refuse request bodies over the limit with 413, before reading them whole."""

    def __init__(self, app: ASGIApp, limit: int, exempt: tuple[str, ...] = ()) -> None:
        self.app = app
        self.limit = limit
        self.exempt = exempt  # streamed file uploads, bounded where they are stored

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await _send_error(
                    send, TooLarge(f"request body of {int(value)} bytes; the limit is {self.limit}")
                )
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge(f"request body over the limit of {self.limit} bytes")
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLarge:
            await _send_error(send, TooLarge(f"request body over the limit of {self.limit}"))


class NoNul:
    """Refuse a request whose path or query string holds a NUL character (``%00``) with
    400: no name, id or filter of the API contains one, and PostgreSQL text cannot hold
    it (the lookup would fail there, not answer "not found")."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            "\x00" in scope["path"] or b"%00" in scope.get("query_string", b"")
        ):
            await _send_error(send, InvalidInput("the URL holds a NUL character (%00)"))
            return
        await self.app(scope, receive, send)


class NoStore:
    """``Cache-Control: no-store`` on every /v1 answer that does not say otherwise: key
    values, job output, files and group details are secrets, and a browser (the
    dashboard's session cookie authenticates /v1 requests too) would otherwise keep them
    in its disk cache, which outlives the session."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return

        async def no_store(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, no_store)


class _BodyTooLarge(StarletteHTTPException):
    """An HTTPException, so that FastAPI's body parsing re-raises it (any other error
    while reading a chunked body becomes a 400 "error parsing the body")."""

    def __init__(self, detail: str) -> None:
        super().__init__(413, detail)


async def _dashboard_page(
    request: Request,
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
) -> Response | None:
    """The error as the dashboard's HTML page when a browser asked for a dashboard
    address (dashboard/routes.py ``wants_page``), else None (the API's JSON error)."""
    if not request.app.state.dashboard:
        return None
    from .dashboard.routes import error_page, wants_page

    if not wants_page(request):
        return None
    return await error_page(request, status, code, message, headers)


async def _send_error(send: Send, exc: CrcError) -> None:
    resp = JSONResponse(exc.to_payload(), status_code=exc.http_status)
    await send(
        {"type": "http.response.start", "status": resp.status_code, "headers": resp.raw_headers}
    )
    await send({"type": "http.response.body", "body": resp.body})


def create_app(
    store: Store,
    *,
    replica: str | None = None,
    blob_dir: Path | None = None,
    settings: ServerSettings | None = None,
    dashboard: bool = True,
) -> FastAPI:
    hub = Hub()
    bus = EventBus()
    store.on_commit(bus.notify_threadsafe)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = bus.loop = asyncio.get_running_loop()
        store.replica = app.state.replica
        store.on_outbox(lambda machines: hub.reload_threadsafe(loop, machines))
        try:
            await store.start()
        except CrcError as exc:
            # A database that cannot be opened or reached: `crc server run` says so in
            # one line with its exit code, not uvicorn's traceback (server/runner.py).
            app.state.startup_error = exc
            raise
        await store.write(
            delivery.mark_all_offline, None if store.dialect == "sqlite" else app.state.replica
        )
        if store.dialect == "sqlite":  # alone on its database: its old claims are void
            await store.write(teardown_ops.release_claims)
            # ... and no stream is open: those a killed server never closed are cut.
            await store.write(session_ops.close_cut_streams)
        else:  # replicas: a lease, and the streams of those whose lease expired are cut
            await store.write(session_ops.renew_lease, app.state.replica)
            await store.write(session_ops.cut_orphaned_streams)
        async with asyncio.TaskGroup() as tg:
            leaser = (
                None
                if store.dialect == "sqlite"
                else tg.create_task(_lease_loop(store, app.state.replica))
            )
            # One process alone on SQLite revokes where it deletes (or expires) a group,
            # and tells its agents then; replicas tell those connected to the others.
            revoker = (
                None if store.dialect == "sqlite" else tg.create_task(_revoked_loop(store, hub))
            )
            grace = overdue_ops.grace_for(app.state.settings.agent_silence_timeout)
            toucher = tg.create_task(_touch_loop(store, hub, grace))
            expirer = tg.create_task(_expire_loop(app, store, hub))
            pruner = tg.create_task(_retention_loop(app, store))
            roller = tg.create_task(
                _due_loop(
                    store,
                    hub,
                    ROLLOUT_SECONDS,
                    rollout_ops.due_jobs,
                    rollout_ops.due,
                    "rate control",
                )
            )
            hosts = tg.create_task(
                _due_loop(
                    store,
                    hub,
                    HOSTS_SECONDS,
                    hostsync_ops.due_groups,
                    hostsync_ops.sync_due,
                    "hosts sync",
                )
            )
            try:
                yield
            finally:
                toucher.cancel()
                expirer.cancel()
                pruner.cancel()
                roller.cancel()
                hosts.cancel()
                for task in (leaser, revoker):
                    if task is not None:
                        task.cancel()
                for link in list(hub.links.values()):
                    link.closed = True
                    with contextlib.suppress(Exception):
                        await link.close(1012, "server restarting")
        await store.close()

    app = CrcApp(
        title="CloudRemoteControl",
        version=__version__,
        lifespan=lifespan,
        openapi_url="/v1/openapi.json",
        docs_url=None,  # api_docs.py: served from the package, not a CDN
        redoc_url=None,
    )
    app.state.store = store
    app.state.settings = settings or ServerSettings()
    app.state.logins = LoginGate(app.state.settings.max_logins)
    app.state.paces = Paces(
        app.state.settings.machine_bytes_per_second, app.state.settings.machine_burst_bytes
    )
    app.state.hub = hub
    app.state.stream_cuts = api.StreamCutLog()
    app.state.bus = bus
    app.state.replica = replica or uuid.uuid4().hex[:12]
    app.state.blobs = BlobStore(
        blob_dir or Path(tempfile.mkdtemp(prefix="crc-blobs-")),
        shared=store if store.dialect == "postgresql" else None,
    )
    routers = [
        api.router,
        api_files.router,
        api_kv.router,
        api_teardown.router,
        api_bootstrap.router,
        api_runs.router,
        api_streams.router,
    ]
    for router in routers:
        app.include_router(router)
    add_docs(app, "/v1/openapi.json")
    app.state.dashboard = False
    if dashboard:  # the web pages under /dashboard/ (server/dashboard/)
        from .dashboard import install

        install(app)
    app.add_api_websocket_route("/v1/agent/connect", agent_endpoint)
    api_streams.add_stream_routes(app, blob_dir.parent / "recordings" if blob_dir else None)
    hub.streams = app.state.streams  # a machine revoked ends its open streams
    install_openapi(app, routers)  # every operation's error statuses, with the error shape
    app.add_middleware(Methods, routes=app.router.routes)  # HEAD, Allow, 426: methods.py
    app.add_middleware(NoNul)
    app.add_middleware(NoStore)
    app.add_middleware(BodyLimit, limit=MAX_HTTP_BODY_BYTES, exempt=api_files.LARGE_BODY_PREFIXES)

    @app.exception_handler(CrcError)
    async def crc_error(request: Request, exc: CrcError) -> Response:
        retry = exc.details.get("retry_after") if isinstance(exc, RateLimited) else None
        headers = {"Retry-After": str(retry)} if retry is not None else None
        if isinstance(exc, RateLimited):
            # Told to come back later: its connection is not kept open meanwhile (a
            # client refused again and again would otherwise hold a descriptor each).
            headers = {**(headers or {}), "Connection": "close"}
        page = await _dashboard_page(request, exc.http_status, exc.code, exc.message, headers)
        if page is not None:
            return page
        return JSONResponse(exc.to_payload(), status_code=exc.http_status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def shape_refused(request: Request, exc: RequestValidationError) -> Response:
        err = validation_error(list(exc.errors()))
        page = await _dashboard_page(request, 400, err.code, err.message)
        if page is not None:
            return page
        return JSONResponse(err.to_payload(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400 and isinstance(exc.__cause__, (ValueError, RecursionError)):
            # FastAPI's "error parsing the body": not UTF-8, nested too deep for the
            # parser, a number too long - JSON we cannot read, said as precisely as we can.
            err = _unreadable_body(exc.__cause__)
            return JSONResponse(err.to_payload(), status_code=400)
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.status_code, "http_error"
        )
        message = str(exc.detail)
        if exc.status_code in (404, 405) and message in ("Not Found", "Method Not Allowed"):
            # No route: say which request, and where the API is described.
            what = "no endpoint" if exc.status_code == 404 else "method not allowed:"
            path = (
                request.url.path
                if len(request.url.path) <= 200
                else (request.url.path[:200] + "...")
            )
            message = f"{what} {request.method} {path} (the API: GET /v1/openapi.json)"
            if exc.status_code == 404:
                page_message = f"no page {path}: check the address"
                page = await _dashboard_page(request, 404, code, page_message)
                if page is not None:
                    return page
        headers = getattr(exc, "headers", None)
        page = await _dashboard_page(request, exc.status_code, code, message, headers)
        if page is not None:
            return page
        return JSONResponse(
            {"error": {"code": code, "message": message}},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"error": {"code": "internal", "message": "internal server error"}}, status_code=500
        )

    return app


def _unreadable_body(cause: BaseException) -> InvalidInput:
    """A body FastAPI could not parse: nested deeper than the parser goes (the API takes
    ``MAX_JSON_DEPTH`` levels: ``too_deep``, as a body it could parse), a number with
    more digits than Python converts, or anything else JSON cannot be."""
    if isinstance(cause, RecursionError):
        return InvalidInput(
            f"request body is nested more than {MAX_JSON_DEPTH} levels deep", code="too_deep"
        )
    if "digits" in str(cause):  # int(): "Exceeds the limit (4300 digits) ..."
        return InvalidInput(
            "request body holds a number with more digits than a number may have",
            code="malformed_json",
        )
    return InvalidInput("request body is not valid JSON", code="malformed_json")


async def _expire_loop(app: FastAPI, store: Store, hub: Hub) -> None:
    """Groups past their TTL are revoked within about a second; where the owner opted
    in, their machines are then destroyed at the provider (server/teardown.py)."""
    while True:
        await asyncio.sleep(EXPIRE_SECONDS)
        with contextlib.suppress(CrcError):
            revoked = await store.write(groups_ops.expire_groups)
            if revoked:
                await hub.revoke(revoked, "group expired (TTL)")
        with contextlib.suppress(CrcError):
            await run_due_teardowns(store, getattr(app.state, "teardown_cipher", None))


async def _due_loop(
    store: Store,
    hub: Hub,
    every: float,
    find: Callable[[Tx, float], list[str]],
    run: Callable[[Tx, list[str], float], list[tuple[str, int, str]]],
    what: str,
) -> None:
    """Every ``every`` seconds, ``find`` (a read) what is due by now; only if something
    is, ``run`` it (a write) and deliver what it sends: nothing is written while nothing
    is due. Used by rate control (ops/rollout.py: jobs whose batch wait is over or whose
    delivery deadline passed; a target ending is handled where its result is stored)
    and by ``--sync-hosts`` groups whose sync window ended (ops/hostsync.py)."""
    retries = RetryLog(log, what)
    while True:
        await asyncio.sleep(every)
        try:
            at = time.time()
            due = await store.read(find, at)
            if due:
                hub.deliver(await store.write(run, due, at))
            retries.worked()
        except Exception as exc:  # noqa: BLE001 -- the loop must outlive one failure
            retries.failed(exc)


async def _retention_loop(app: FastAPI, store: Store) -> None:
    """Events, files and recordings past their retention are forgotten (ops/retention.py,
    ops/recordings.py): at start, then every ``prune_interval`` seconds; a large backlog
    is taken in batches."""
    settings: ServerSettings = app.state.settings
    retries = RetryLog(log, "retention")
    while True:
        t = time.time()
        ev_days, blob_days = settings.retain_events_days, settings.retain_blobs_days
        events_before = t - ev_days * 86400 if ev_days > 0 else None
        blobs_before = t - blob_days * 86400 if blob_days > 0 else None
        try:
            for _ in range(100):
                done = await store.write(retention_ops.prune, events_before, blobs_before)
                batch = retention_ops.BATCH
                if done["events"] < batch and done["blob_owners"] < batch:
                    break
            if blobs_before is not None:
                await app.state.blobs.sweep(store, blobs_before)
            rec_days = settings.retain_recordings_days
            recordings_before = t - rec_days * 86400 if rec_days > 0 else None
            for _ in range(100):
                gone = await store.write(
                    recording_ops.prune_recordings, recordings_before, events_before
                )
                if gone < recording_ops.BATCH:
                    break
            app.state.streams.prune(rec_days)  # recordings on disk, of older versions
            retries.worked()
        except Exception as exc:  # noqa: BLE001 -- retention must never stop the server
            retries.failed(exc, "pruning failed, trying again later")
        await asyncio.sleep(settings.prune_interval)


async def _lease_loop(store: Store, replica: str) -> None:
    """Replicas (PostgreSQL): renew this one's lease, and close as cut the streams of
    any replica whose lease expired (killed: ops/sessions.py)."""
    retries = RetryLog(log, "replica lease")
    while True:
        await asyncio.sleep(session_ops.RENEW_SECONDS)
        try:
            await store.write(session_ops.renew_lease, replica)
            if await store.write(session_ops.cut_orphaned_streams):
                log.info("streams of a stopped replica closed as cut")
            retries.worked()
        except Exception as exc:  # noqa: BLE001 -- the loop must outlive one failure
            retries.failed(exc)


async def _revoked_loop(store: Store, hub: Hub) -> None:
    """Replicas (PostgreSQL): every ``REVOKED_SECONDS``, the machines connected to this
    replica that are revoked in the database (their group deleted or expired through
    another replica, which could tell only its own agents) are told why, and closed, as
    ``_touch_loop`` would at its next pass (every 30 s); so are the streams open on this
    replica to a revoked machine connected to another. One read a round (``_BATCH`` ids
    a statement, by primary key) while agents or streams are there; none otherwise."""
    retries = RetryLog(log, "revoked machines")
    while True:
        await asyncio.sleep(REVOKED_SECONDS)
        ids = hub.watched()
        if not ids:
            continue
        try:
            for mid, reason, uninstall in await store.read(delivery.revoked_among, ids):
                await hub.revoke([mid], reason, uninstall)
            retries.worked()
        except Exception as exc:  # noqa: BLE001 -- the loop must outlive one failure
            retries.failed(exc)


async def _touch_loop(store: Store, hub: Hub, grace: float) -> None:
    while True:
        await asyncio.sleep(TOUCH_SECONDS)
        ids = list(hub.links)
        try:
            if ids:
                for mid, reason, uninstall in await store.write(delivery.touch_machines, ids):
                    await hub.revoke([mid], reason, uninstall)
            await store.write(delivery.sweep_stale, 3 * TOUCH_SECONDS)
        except CrcError:
            pass  # the database is unavailable: the next round tries again
        except Exception as exc:  # noqa: BLE001 -- the loop must outlive one failure
            log.error("touching machines: trying again: %r", exc)
        try:  # targets whose connected machine never reported their end (ops/overdue.py)
            at = time.time()
            if await store.read(overdue_ops.overdue_targets, at, grace):
                hub.deliver(await store.write(overdue_ops.end_overdue, at, grace))
        except CrcError as exc:
            log.warning("overdue targets: trying again: %s", exc)
        except Exception as exc:  # noqa: BLE001 -- the loop must outlive one failure
            log.error("overdue targets: trying again: %r", exc)
