"""The master API under /v1 (JSON, bearer tokens) and the agent's HTTP endpoints."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from .. import __version__
from ..errors import CrcError, KeyRejected, RateLimited, Unavailable
from . import auth
from .hub import CUT_ON_STOP, ServerStopping
from .models import Enroll, GroupCreate, HostsSync, JobCreate, MessageSend
from .ops import events as ev_ops
from .ops import groups as group_ops
from .ops import jobs as job_ops
from .ops import messages as msg_ops
from .ops import roster as roster_ops
from .ops.enrollment import enroll, key_id_of
from .ratelimit import FailureWindow
from .store.base import Store, Tx
from .wsprotocol import SCOPE_KEY

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1")
Master = Annotated[dict[str, Any], Depends(auth.master)]
Machine = Annotated[dict[str, Any], Depends(auth.machine)]
MAX_CURSOR = 2**63 - 1  # event ids are 64-bit integers in both databases


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


async def queue_and_deliver(request: Request, op: Any, *args: Any) -> dict[str, Any]:
    """Run an op that queues messages for machines; once it is committed, hand them to
    the connections of this replica (others learn of them through the store)."""
    result = await _store(request).write(op, *args)
    request.app.state.hub.deliver(result.pop("deliveries"))
    return dict(result)


#: ``GET /health`` asks the database at most this often (seconds): anyone may call it,
#: so a flood of calls costs one query per interval, not one per call.
HEALTH_PROBE_EVERY = 1.0
#: How long the database has to answer the probe before the server reports it down.
HEALTH_PROBE_WAIT = 3.0


def _select_one(tx: Tx) -> Any:
    # A table of crc's, not SELECT 1: a database made again empty under a running
    # server answers, but not with crc's data.
    return tx.one("SELECT version FROM schema_version ORDER BY version DESC LIMIT 1")


async def _probe(store: Store) -> str | None:
    """None when the database answers a query, else why not."""
    try:
        await store.read(_select_one)
    except Unavailable as exc:
        return exc.message
    return None


async def _database_problem(request: Request) -> str | None:
    """The latest probe's finding, probing again when it is older than
    ``HEALTH_PROBE_EVERY`` and done: one probe at a time, whatever the call rate (a
    probe the database does not answer holds one reader thread, never more). A probe
    still running after ``HEALTH_PROBE_WAIT`` counts as the database not answering."""
    state = request.app.state
    loop = asyncio.get_running_loop()
    last: tuple[float, asyncio.Task[str | None]] | None = getattr(state, "health_probe", None)
    if last is None or (last[1].done() and loop.time() - last[0] >= HEALTH_PROBE_EVERY):
        last = (loop.time(), asyncio.create_task(_probe(_store(request))))
        state.health_probe = last
    left = last[0] + HEALTH_PROBE_WAIT - loop.time()
    try:
        return await asyncio.wait_for(asyncio.shield(last[1]), max(left, 0))
    except TimeoutError:
        return f"the database did not answer within {HEALTH_PROBE_WAIT:g} s"


@router.get("/health", tags=["server"], responses={503: {"description": "database down"}})
async def health(request: Request) -> dict[str, Any]:
    """Alive, its version, and where its dashboard is (absent with --no-dashboard).
    503 ``unavailable`` while the database does not answer (a load balancer then sends
    requests to another replica)."""
    problem = await _database_problem(request)
    if problem is not None:
        raise Unavailable(f"the server cannot reach its database: {problem}")
    out: dict[str, Any] = {"ok": True, "version": __version__}
    if request.app.state.dashboard:
        out["dashboard"] = "/dashboard/"
    return out


@router.get("/whoami", tags=["master"])
async def whoami(user: Master) -> dict[str, Any]:
    return {"user": user["user"], "kind": "master"}


@router.post("/groups", status_code=201, tags=["groups"])
async def create_group(body: GroupCreate, user: Master, request: Request) -> dict[str, Any]:
    return await _store(request).write(
        group_ops.create_group,
        user["user_id"],
        body.name,
        [m.model_dump() for m in body.machines],
        body.key_ttl,
        body.ttl,
        body.settings,
    )


@router.get("/groups", tags=["groups"])
async def list_groups(user: Master, request: Request) -> dict[str, Any]:
    return {"groups": await _store(request).read(group_ops.list_groups, user["user_id"])}


@router.get("/groups/{group}", tags=["groups"])
async def show_group(group: str, user: Master, request: Request) -> dict[str, Any]:
    return await _store(request).read(group_ops.show_group, user["user_id"], group)


@router.delete("/groups/{group}", tags=["groups"])
async def delete_group(group: str, user: Master, request: Request) -> dict[str, Any]:
    revoked, uninstall = await _store(request).write(group_ops.delete_group, user["user_id"], group)
    await request.app.state.hub.revoke(revoked, f"group {group!r} deleted", uninstall)
    return {"group": group, "deleted": True, "machines_revoked": len(revoked)}


@router.post("/groups/{group}/jobs", status_code=201, tags=["jobs"])
async def create_job(group: str, body: JobCreate, user: Master, request: Request) -> dict[str, Any]:
    spec = body.model_dump(exclude={"to"})
    return await queue_and_deliver(request, job_ops.create_job, user, group, body.to, spec)


@router.get("/groups/{group}/jobs", tags=["jobs"])
async def list_jobs(
    group: str,
    user: Master,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> dict[str, Any]:
    """The group's latest jobs (oldest first) with a count of their targets' statuses."""
    jobs = await _store(request).read(job_ops.list_jobs, user["user_id"], group, limit)
    return {"group": group, "jobs": jobs}


@router.post("/groups/{group}/hosts-sync", status_code=201, tags=["jobs"])
async def hosts_sync(group: str, body: HostsSync, user: Master, request: Request) -> dict[str, Any]:
    """A job that writes the group's machines into each target's hosts file."""
    return await queue_and_deliver(
        request, job_ops.create_hosts_sync, user, group, body.to, body.ip
    )


@router.post("/groups/{group}/messages", status_code=201, tags=["messages"])
async def send_message(
    group: str, body: MessageSend, user: Master, request: Request
) -> dict[str, Any]:
    """Queue a ``user.*`` data message for machines (durable when answered)."""
    return await queue_and_deliver(
        request, msg_ops.send_message, user, group, body.to, body.type, body.body
    )


@router.get("/jobs/{job_id}", tags=["jobs"])
async def show_job(job_id: str, user: Master, request: Request) -> dict[str, Any]:
    return await _store(request).read(job_ops.job_view, user["user_id"], job_id)


@router.post("/jobs/{job_id}/cancel", tags=["jobs"])
async def cancel_job(job_id: str, user: Master, request: Request) -> dict[str, Any]:
    return await queue_and_deliver(request, job_ops.cancel_job, user, job_id)


_SSE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            "text/event-stream": {
                # One Server-Sent Event (keep-alive comments carry none).
                "schema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {
                        "id": {"type": "string", "description": "the cursor to resume from"},
                        "event": {"type": "string"},
                        "data": {"type": "string", "contentMediaType": "application/json"},
                    },
                }
            }
        },
        "description": "Server-Sent Events: one `data:` JSON event per message, `id:` its cursor",
    }
}


@router.get(
    "/groups/{group}/events", tags=["events"], response_class=StreamingResponse, responses=_SSE
)
async def group_events(
    group: str,
    user: Master,
    request: Request,
    since: Annotated[int | None, Query(ge=0, le=MAX_CURSOR)] = None,
    follow: bool = False,
    type: Annotated[
        str | None, Query(max_length=400, pattern=r"^[a-z][a-z0-9_.\-]*(,[a-z][a-z0-9_.\-]*)*$")
    ] = None,
) -> StreamingResponse:
    """Events of a group after cursor ``since`` (default: from the start, or from now on
    with ``follow`` and no cursor) as Server-Sent Events; ``id:`` is the cursor. ``type``
    (a comma list, e.g. ``message,job.created``) keeps only events of those types."""
    info = await _store(request).read(ev_ops.group_cursor, user["user_id"], group)
    cursor = since if since is not None else (info["cursor"] if follow else 0)
    types = tuple(dict.fromkeys(type.split(","))) if type else ()
    return _sse(request, info["group_id"], cursor, None, follow, types)


@router.get("/groups/{group}/cursor", tags=["events"])
async def group_cursor(group: str, user: Master, request: Request) -> dict[str, Any]:
    """The cursor of the group's latest event: follow from there to see only what is new."""
    info = await _store(request).read(ev_ops.group_cursor, user["user_id"], group)
    return {"group": group, "cursor": info["cursor"]}


@router.get(
    "/jobs/{job_id}/events", tags=["jobs"], response_class=StreamingResponse, responses=_SSE
)
async def job_events(
    job_id: str,
    user: Master,
    request: Request,
    since: Annotated[int, Query(ge=0, le=MAX_CURSOR)] = 0,
    follow: bool = False,
) -> StreamingResponse:
    # The job's group, not its view: a 1,000-target job's view is 1,000 rows.
    job = await _store(request).read(job_ops.job_group, user["user_id"], job_id)
    return _sse(request, job["group_id"], since, job_id, follow)


def _sse(
    request: Request,
    group_id: str,
    cursor: int,
    job_id: str | None,
    follow: bool,
    types: tuple[str, ...] = (),
) -> StreamingResponse:
    store: Store = request.app.state.store
    bus = request.app.state.bus
    cred = auth.credential(request)
    quiet = request.app.state.settings.events_keepalive

    if follow:  # lasts until the client goes: cut when the server stops (hub.py)
        request.scope[CUT_ON_STOP] = True

    async def stream() -> AsyncIterator[bytes]:
        nonlocal cursor
        with bus.subscribe(group_id) as wake:
            while True:
                wake.clear()
                batch = await store.read(
                    _events_if_authorized, cred, group_id, cursor, job_id, 1000, types
                )
                if batch is None:
                    # The token was revoked (or the dashboard session ended) while the
                    # stream was open: nothing more is sent, and the answer is cut
                    # short, so that a client resuming from here is told why (401).
                    yield b": unauthorized: unknown or revoked master token\n\n"
                    raise _CredentialRevoked
                if batch:
                    # One chunk per batch, not per event: each chunk is a trip through
                    # the ASGI send chain and a TLS record (a 1,000-target job has
                    # thousands of events; SSE readers split lines, not chunks).
                    cursor = batch[-1][0]
                    yield "".join(f"id: {c}\ndata: {text}\n\n" for c, _, text in batch).encode()
                if batch and len(batch) >= 1000:
                    continue
                if not follow:
                    return
                if batch and batch[-1][1] == "group.deleted":
                    return
                try:
                    await asyncio.wait_for(wake.wait(), quiet)
                except ServerStopping:
                    # Cut, not ended: the follower resumes from its cursor, here once
                    # restarted or at another replica (its connection is closed too).
                    raise _StreamCut from None
                except asyncio.TimeoutError:
                    if await store.read(ev_ops.group_deleted, group_id):
                        return
                    yield b": keepalive\n\n"

    return _EventStream(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
    )


def _events_if_authorized(
    tx: Tx,
    cred: tuple[str, str] | None,
    group_id: str,
    cursor: int,
    job_id: str | None,
    limit: int,
    types: tuple[str, ...],
) -> list[tuple[int, str, str]] | None:
    """The next events of a stream, or None once its credential is no longer live: a
    revoked token's open stream sees nothing that happened after the revocation."""
    if not auth.still_valid(tx, cred):
        return None
    return ev_ops.events_json_after(tx, group_id, cursor, job_id, limit, types)


class _StreamCut(Exception):
    """Ends an event stream without its last chunk: the client sees it break."""


class _CredentialRevoked(_StreamCut):
    """Ends an event stream whose token was revoked while it was open."""


class _EventStream(StreamingResponse):
    """An event stream that is cut (no last chunk) when its credential is revoked: the
    client sees a broken stream, resumes, and gets the 401 that says why."""

    scope: Scope | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        await super().__call__(scope, receive, send)

    async def stream_response(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        try:
            async for chunk in self.body_iterator:
                if not isinstance(chunk, bytes | memoryview):
                    chunk = chunk.encode(self.charset)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except _CredentialRevoked:
            log.info("event stream ended: its master token was revoked")
            await _cut(self.scope)
            return
        except _StreamCut:  # the server stops
            return
        except CrcError as exc:
            # The database failed midway (an outage): the answer has started, so no
            # error can be sent; it is cut, as when the server stops, and the client
            # resumes from its last cursor (then 503 until the database is back).
            if self.scope is not None:  # set by __call__, before the answer began
                self.scope["app"].state.stream_cuts.cut(exc.message)
            await _cut(self.scope)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class StreamCutLog:
    """The log of event streams cut by database failures: an outage cuts every open
    stream at once, so the first cut is one line, and those that follow within
    ``every`` seconds one line more, with their count, once that time is up (not a
    line per stream: a thousand followers would write a thousand). One per app
    (``app.state.stream_cuts``), on the app's event loop."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self.logged_at: float | None = None  # the loop's time of the last line
        self.more = 0  # cuts not logged yet
        self.last = ""  # the reason of the latest of them
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def cut(self, message: str) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # another event loop (a server started again)
            self._loop, self._timer, self.logged_at, self.more = loop, None, None, 0
        now = loop.time()
        if self._timer is None and (self.logged_at is None or now - self.logged_at >= self.every):
            log.warning("event stream cut: %s", message)
            self.logged_at = now
            return
        self.more += 1
        self.last = message
        if self._timer is None:
            due = (now if self.logged_at is None else self.logged_at) + self.every
            self._timer = loop.call_at(due, self._summary)

    def _summary(self) -> None:
        self._timer = None
        if self.more:
            log.warning(
                "event streams cut: %d more in the last %g s (each resumes from its cursor): %s",
                self.more,
                self.every,
                self.last,
            )
            self.more = 0
            self.logged_at = asyncio.get_running_loop().time()


async def _cut(scope: Scope | None) -> None:
    """Close the connection that carries ``scope``'s response now (what was sent is
    written first, for a second at most) and wait until the server has taken it as lost,
    as the streams cut when the server stops (runner.py): a response that then ends
    unfinished does so on a connection uvicorn knows is gone, which it does not log as
    an error ("ASGI callable returned without completing response"). The connection is
    the server's (httpguard.py puts it in the scope); without one, nothing is done."""
    protocol = getattr((scope or {}).get(SCOPE_KEY), "protocol", None)
    transport: Any = getattr(protocol, "transport", None)  # asyncio's or uvloop's
    if transport is None or transport.is_closing():
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 1
    while transport.get_write_buffer_size() and loop.time() < deadline:
        await asyncio.sleep(0.01)
    transport.abort()
    deadline = loop.time() + 1
    while not getattr(getattr(protocol, "cycle", None), "disconnected", True):
        if loop.time() > deadline:
            break
        await asyncio.sleep(0.01)


@router.get("/audit", tags=["master"])
async def audit(
    user: Master,
    request: Request,
    group: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    action: Annotated[str | None, Query(max_length=2000)] = None,
) -> dict[str, Any]:
    """Your append-only audit record (group creation, jobs, cancels, enrollments...),
    its latest ``limit`` records. ``action`` (a comma list, e.g. ``kv.set,job.``) keeps
    only the records of those actions, a name ending in a dot standing for every action
    it starts (``kv.``)."""
    actions = ev_ops.audit_actions(action)
    records = await _store(request).read(
        ev_ops.audit_records, user["user_id"], group, limit, actions
    )
    return {"records": records}


@router.post("/agent/enroll", tags=["agent"])
async def agent_enroll(body: Enroll, request: Request) -> dict[str, Any]:
    """Exchange a single-use enrollment key for a machine credential. Failed attempts
    are limited per source address (then 429 for a minute)."""
    peer = request.client.host if request.client else None
    state = request.app.state
    if getattr(state, "enroll_failures", None) is None:
        state.enroll_failures = FailureWindow(state.settings.enroll_failures_per_minute)
    failures: FailureWindow = state.enroll_failures
    wait = failures.retry_after(peer or "?")
    if wait:
        raise RateLimited(
            f"too many failed enrollments from this address: try again in {wait:.0f} s",
            retry_after=round(wait + 0.5),
        )
    try:
        return await _store(request).write(enroll, body.key, peer, body.nonce)
    except KeyRejected as exc:
        failures.failed(peer or "?")
        # The key id only: the secret part is never logged.
        log.warning("enrollment refused from %s, key id %s: %s", peer, key_id_of(body.key), exc)
        raise


@router.get("/agent/whoami", tags=["agent"])
async def agent_whoami(m: Machine) -> dict[str, Any]:
    return {"machine": m["name"], "group": m["group_name"], "kind": "machine"}


@router.get("/agent/roster", tags=["agent"])
async def agent_roster(m: Machine, request: Request) -> dict[str, Any]:
    """The machine's own group: every peer's name, labels, state and addresses."""
    peers = await _store(request).read(roster_ops.roster, m["group_id"])
    return {"group": m["group_name"], "machine": m["name"], "machines": peers}
