"""The dashboard's pages: server-rendered HTML (Jinja2, autoescaped), one page per view.

Pages read through ``views.py`` with the caller's user, like the API. Changes (start or
cancel a job) are not made here: the page's script calls the /v1 API with the session
cookie and the CSRF token (sessions.py). Only logging in and out are form posts.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
import typing
import urllib.parse
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import jinja2
import pydantic
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from ...errors import CrcError, InvalidInput, NotFound, Unauthorized
from ...protocol.names import check_name
from ...protocol.tokens import parse_secret
from .. import api
from ..ops import events as ev_ops
from ..ops import groups as group_ops
from ..ratelimit import FailureWindow
from ..store.base import Store
from ..validation import validation_error
from . import CSP, sessions, views

__all__ = ["PREFIX", "error_page", "router", "wants_page"]

PREFIX = "/dashboard"
HERE = Path(__file__).parent
STATIC = HERE / "static"
#: The login form's double-submit token (against login CSRF: a page of another site, or
#: of a sibling subdomain, which is "same-site" for SameSite, logging the browser in as
#: the attacker). ``__Host-`` as the session (sessions.COOKIE): Secure, Path=/, no
#: Domain, so nothing but this origin can plant a value it knows (a subdomain or a
#: plain-HTTP page of the same host could, for a cookie without the prefix).
LOGIN_COOKIE = "__Host-crc_login"
#: Its earlier name (Path=/dashboard/login): a form rendered then finds no token
#: now, is answered "the form expired" and logs in at the next try; deleted when seen.
OLD_LOGIN_COOKIE = "crc_login"
MAX_LOGIN_FORM = 4096

log = logging.getLogger(__name__)
router = APIRouter(prefix=PREFIX, tags=["dashboard"], include_in_schema=False)
_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


# -- helpers ------------------------------------------------------------------------------


def _static_files() -> dict[str, tuple[bytes, str]]:
    """Every asset (name -> (content, etag)), read once: the set is fixed per release."""
    out = {}
    for path in sorted(STATIC.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            out[path.relative_to(STATIC).as_posix()] = (data, hashlib.sha256(data).hexdigest())
    return out


_STATIC = _static_files()
_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
}


def static_url(name: str) -> str:
    return f"{PREFIX}/static/{name}?v={_STATIC[name][1][:12]}"


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    return _duration(time.time() - ts)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


_env.globals.update(static=static_url, when=_when, ago=_ago, duration=_duration, now=time.time)


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


STREAM_SOCKET = "/v1/streams/{stream}"


def features(request: Request) -> dict[str, Any]:
    """What this server offers the pages beyond the API they always use, found in its
    own routes: the machines table shows a *Terminal* button (to this dashboard's
    terminal page) when the server has the streams of `crc shell` and `crc forward`
    (the WebSocket ``/v1/streams/{stream}``, mounted on the app itself). Absent it,
    nothing is shown."""
    found = getattr(request.app.state, "dashboard_features", None)
    if found is None:
        paths = {str(getattr(r, "path", "")) for r in request.app.routes}
        streams = "/v1/streams/" if STREAM_SOCKET in paths else None
        found = {"shell": streams, "forward": streams}
        request.app.state.dashboard_features = found
    return dict(found)


def _render(
    request: Request,
    template: str,
    user: dict[str, Any] | None,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    cookie = request.cookies.get(sessions.COOKIE) if user else None
    html = _env.get_template(template).render(
        user=user,
        csrf=sessions.csrf_for(cookie) if cookie else "",
        features=features(request),
        path=request.url.path,
        url=str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""),
        **context,
    )
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


async def _user(request: Request) -> dict[str, Any] | None:
    """The session's user, None without a live session (pages then send to login)."""
    try:
        user = await sessions.session_from_cookie(request)
    except Unauthorized:
        return None
    return dict(user) if user is not None else None


def _to_login(request: Request) -> Response:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    target = f"{PREFIX}/login?" + urllib.parse.urlencode({"next": here})
    if request.headers.get("hx-request"):  # a panel refresh: the whole page goes to login
        return Response(status_code=401, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


async def _page(
    request: Request,
    template: str,
    load: Callable[[dict[str, Any]], Any],
    **context: Any,
) -> Response:
    """Render ``template`` for the logged-in user with what ``load(user)`` (awaitable)
    returns as ``data``. What it raises (a missing group or job, or another user's: 404;
    a bad filter: 400) is answered by the server's error handler (app.py): an HTML page
    for a browser (``wants_page``), the API's JSON error for any other client."""
    user = await _user(request)
    if user is None:
        return _to_login(request)
    data = await load(user)
    return _render(request, template, user, data=data, **context)


#: The error page's heading per status (others: "Something went wrong").
_HEADINGS = {
    400: "Bad request",
    401: "Not logged in",
    403: "Not allowed",
    404: "Not here",
    405: "Not here",
    413: "Too large",
    429: "Too many requests",
}


def wants_page(request: Request) -> bool:
    """Whether an error answering ``request`` is an HTML page: a dashboard address asked
    for by a browser (``Accept: text/html``). The pages' scripts, which ask without it,
    and every /v1 client get the API's JSON error."""
    path = request.url.path
    if path != PREFIX and not path.startswith(f"{PREFIX}/"):
        return False
    return "text/html" in request.headers.get("accept", "")


async def error_page(
    request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    """An error as an HTML page with a link back to the groups (for ``wants_page``)."""
    try:
        user = await _user(request)
    except CrcError:
        user = None
    resp = _render(
        request,
        "error.html",
        user,
        status,
        message=message,
        code=code,
        heading=_HEADINGS.get(status, "Something went wrong"),
    )
    resp.headers.update(headers or {})
    return resp


def _safe_next(value: str | None) -> str:
    if value and value.startswith(f"{PREFIX}/") and not value.startswith("//"):
        return value
    return f"{PREFIX}/"


def _login_failures(request: Request) -> FailureWindow:
    """Failed logins per source address (``login_failures_per_minute``). A master token
    cannot be guessed; the limit keeps anything hammering the form from costing a
    database transaction and a log line per try."""
    state = request.app.state
    if getattr(state, "login_failures", None) is None:
        state.login_failures = FailureWindow(state.settings.login_failures_per_minute)
    failures: FailureWindow = state.login_failures
    return failures


def _refused_token(presented: str) -> str:
    """What a refused login presented, for logs: the public id of a master token (never
    its secret part), or that it was none."""
    token = parse_secret(presented, "m")
    if token is None or not token.id.isalnum() or len(token.id) > 32:
        return "not a master token"
    return f"id {token.id} is no live master token"


def _login_form(
    request: Request,
    error: str | None,
    status: int,
    next_: str | None,
    headers: dict[str, str] | None = None,
) -> Response:
    form_token = sessions.new_form_token()
    resp = _render(
        request,
        "login.html",
        None,
        status,
        error=error,
        form_token=form_token,
        next=_safe_next(next_),
    )
    resp.headers.update(headers or {})
    # Secure even over plain HTTP on loopback (`--insecure`), as the session cookie.
    resp.set_cookie(
        LOGIN_COOKIE,
        form_token,
        max_age=3600,
        httponly=True,
        secure=True,
        samesite="strict",
        path="/",
    )
    if OLD_LOGIN_COOKIE in request.cookies:
        resp.delete_cookie(OLD_LOGIN_COOKIE, path=f"{PREFIX}/login")
    return resp


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_LOGIN_FORM:
        raise InvalidInput("form too large")
    try:
        fields = urllib.parse.parse_qs(body.decode(), max_num_fields=10, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput("malformed form") from None
    return {k: v[0] for k, v in fields.items() if v}


# -- pages --------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
async def home(request: Request) -> Response:
    """Your groups: machines ready of all, TTL."""

    async def load(user: dict[str, Any]) -> Any:
        return await _store(request).read(group_ops.list_groups, user["user_id"])

    return await _page(request, "groups.html", load)


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next: str | None = None) -> Response:
    """The login form: paste a master token once."""
    return _login_form(request, None, 200, next)


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    """Exchange a master token (form field ``token``) for a session cookie. Failed
    logins are limited per source address (then 429 for up to a minute)."""
    peer = request.client.host if request.client else None
    failures = _login_failures(request)
    try:
        form = await _form(request)
    except InvalidInput as exc:
        return _login_form(request, exc.message, 400, None)
    # Checked and counted at once (no await between), once the form is in: logins
    # arriving together from one address are tried up to the limit, not each because
    # none had failed yet; and one slow to send its form holds no place meanwhile.
    wait = failures.begin(peer or "?")
    if wait:
        # Told to come back later: the connection is not kept open meanwhile.
        retry = round(wait + 0.5)
        return _login_form(
            request,
            f"too many failed logins from this address: try again in {retry} s",
            429,
            form.get("next"),
            {"Retry-After": str(retry), "Connection": "close"},
        )
    failed = False
    try:
        expected = request.cookies.get(LOGIN_COOKIE, "")
        given = form.get("form_token", "")
        if not expected or not hmac.compare_digest(expected.encode(), given.encode()):
            return _login_form(
                request, "the form expired: paste the token again", 403, form.get("next")
            )
        token = form.get("token", "").strip()
        replacing = request.cookies.get(sessions.COOKIE)  # this browser's session until now
        try:
            opened = await _store(request).write(sessions.open_session, token, peer, replacing)
        except Unauthorized:
            failed = True
            log.warning("dashboard login refused from %s: %s", peer, _refused_token(token))
            return _login_form(
                request,
                "unknown or revoked master token (paste the crcm_… token `crc server "
                "add-user` printed)",
                401,
                form.get("next"),
            )
    finally:
        failures.end(peer or "?", failed)
    resp = RedirectResponse(_safe_next(form.get("next")), status_code=303)
    # Secure and Path=/ with no Domain, as the __Host- prefix demands (sessions.COOKIE),
    # over plain HTTP on loopback too (`--insecure`).
    resp.set_cookie(
        sessions.COOKIE,
        opened["cookie"],
        max_age=sessions.SESSION_SECONDS,
        httponly=True,
        secure=True,
        samesite="strict",
        path="/",
    )
    resp.delete_cookie(LOGIN_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return resp


@router.post("/logout")
async def logout(request: Request) -> Response:
    """End the session (form field ``csrf``); the cookie is worthless afterwards."""
    try:
        form = await _form(request)
        user = await sessions.session_from_cookie(request, form_csrf=form.get("csrf"))
    except Unauthorized:
        user = None  # no live session: nothing to end
    except CrcError as exc:
        # Most often a page rendered for an earlier session of this browser (logged out
        # and in again in another tab): its CSRF token is stale. The error page is
        # rendered for the live session, so its own Log out works.
        message = exc.message
        if exc.code == "csrf":
            message = "this page was out of date (a newer session of this browser): log out here"
        try:  # the live session, found without the CSRF check that just failed
            live = await _store(request).read(
                sessions.authenticate_session, request.cookies.get(sessions.COOKIE, "")
            )
        except Unauthorized:
            live = None
        return _render(request, "error.html", live, exc.http_status, message=message, code=exc.code)
    if user is not None:
        await _store(request).write(sessions.end_session, request.cookies[sessions.COOKIE])
    resp = RedirectResponse(f"{PREFIX}/login", status_code=303)
    # Without Secure a browser ignores a __Host- cookie, a deletion included.
    resp.delete_cookie(sessions.COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return resp


@router.get("/groups/{group}", response_class=HTMLResponse)
async def group_machines(request: Request, group: str) -> Response:
    """A group's machines, live: state, progress, OS, addresses, time in state, TTL."""

    async def load(user: dict[str, Any]) -> Any:
        return await _store(request).read(views.group_page, user["user_id"], group)

    return await _page(request, "machines.html", load, tab="machines", group=group)


@router.get("/groups/{group}/rows")
async def group_rows(
    request: Request, group: str, names: Annotated[str, Query(max_length=20000)] = ""
) -> Response:
    """Some machines of the group as the machines table shows them (JSON)."""
    user = await _user(request)
    if user is None:
        raise Unauthorized("log in to the dashboard first")
    wanted = [n for n in names.split(",") if n][:200]
    rows = await _store(request).read(views.machine_rows, user["user_id"], group, wanted)
    return JSONResponse({"machines": rows}, headers={"Cache-Control": "no-store"})


def _tab(name: str, template: str, loader: Callable[..., Any]) -> Callable[..., Any]:
    async def tab(request: Request, group: str) -> Response:
        async def load(user: dict[str, Any]) -> Any:
            store = _store(request)
            head = await store.read(ev_ops.group_cursor, user["user_id"], group)
            return {
                "cursor": head["cursor"],
                "items": await store.read(loader, user["user_id"], group),
            }

        return await _page(request, template, load, tab=name, group=group)

    return tab


router.add_api_route(
    "/groups/{group}/jobs",
    _tab("jobs", "jobs.html", views.job_list),
    methods=["GET"],
    response_class=HTMLResponse,
    summary="A group's jobs",
    description="The group's latest jobs with their targets' statuses; start a command.",
)
router.add_api_route(
    "/groups/{group}/files",
    _tab("files", "files.html", views.file_jobs),
    methods=["GET"],
    response_class=HTMLResponse,
    summary="A group's file transfers",
)
router.add_api_route(
    "/groups/{group}/messages",
    _tab("messages", "messages.html", views.message_list),
    methods=["GET"],
    response_class=HTMLResponse,
    summary="A group's data messages",
)
router.add_api_route(
    "/groups/{group}/kv",
    _tab("kv", "kv.html", views.kv_page),
    methods=["GET"],
    response_class=HTMLResponse,
    summary="A group's key/value store",
)


@router.get("/groups/{group}/run", response_class=HTMLResponse)
async def group_run(request: Request, group: str) -> Response:
    """The scenario run (`crc up`): the step graph with states, attempts and timings."""

    async def load(user: dict[str, Any]) -> Any:
        return await _store(request).read(views.group_page, user["user_id"], group)

    return await _page(request, "run.html", load, tab="run", group=group)


@router.get("/groups/{group}/audit", response_class=HTMLResponse)
async def group_audit(request: Request, group: str) -> Response:
    """Who did what in the group (the audit record)."""

    async def load(user: dict[str, Any]) -> Any:
        store = _store(request)
        head = await store.read(ev_ops.group_cursor, user["user_id"], group)
        records = await store.read(ev_ops.audit_records, user["user_id"], group, 500)
        return {"cursor": head["cursor"], "items": list(reversed(records))}

    return await _page(request, "audit.html", load, tab="audit", group=group)


#: The API's own check of an events ``type`` filter (its ``GET /v1/groups/G/events``
#: parameter), so that the events page refuses what the API refuses, in its words.
_EVENT_TYPE: pydantic.TypeAdapter[str | None] = pydantic.TypeAdapter(
    typing.get_type_hints(api.group_events, include_extras=True)["type"]
)


def _check_event_filters(type_: str, machine: str) -> None:
    """InvalidInput (400) for a type the API refuses or a machine that is no machine
    name (the API's checks); an empty filter is none."""
    if type_:
        try:
            _EVENT_TYPE.validate_python(type_)
        except pydantic.ValidationError as exc:
            errors = [{**e, "loc": ("query", "type")} for e in exc.errors()]
            raise validation_error(errors) from None
    if machine:
        check_name(machine, "machine")


@router.get("/groups/{group}/events", response_class=HTMLResponse)
async def group_events(
    request: Request,
    group: str,
    type: Annotated[str, Query(max_length=64)] = "",
    machine: Annotated[str, Query(max_length=63)] = "",
    job: Annotated[str, Query(max_length=64)] = "",
) -> Response:
    """The group's events, newest first, filtered by type (or prefix), machine, job. A
    filter the API would refuse, or a job that is not one of the group's, is a 400."""

    async def load(user: dict[str, Any]) -> Any:
        _check_event_filters(type, machine)
        store = _store(request)
        head = await store.read(ev_ops.group_cursor, user["user_id"], group)
        found = await store.read(views.event_list, user["user_id"], group, type, machine, job)
        return {"cursor": head["cursor"], **found}

    return await _page(
        request,
        "events.html",
        load,
        tab="events",
        group=group,
        filters={"type": type, "machine": machine, "job": job},
        types=views.EVENT_TYPES,
    )


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
async def job(request: Request, job_id: str) -> Response:
    """A job: each target's status and exit code, and its output, live; cancel."""

    async def load(user: dict[str, Any]) -> Any:
        return await _store(request).read(views.job_page, user["user_id"], job_id)

    return await _page(request, "job.html", load)


@router.get("/groups/{group}/machines/{machine}/terminal", response_class=HTMLResponse)
async def terminal(request: Request, group: str, machine: str) -> Response:
    """A terminal on the machine in the page (`crc shell`'s stream, xterm.js), and the
    `crc forward` command for its ports."""

    async def load(user: dict[str, Any]) -> Any:
        return await _store(request).read(views.terminal_page, user["user_id"], group, machine)

    # xterm.js writes its measured sizes and colours into <style> elements it creates:
    # this page's policy admits those (and only those: the nonce is fresh per response and
    # known only to the page's own script, which sets it on xterm's style elements).
    nonce = secrets.token_urlsafe(18)
    resp = await _page(request, "terminal.html", load, group=group, nonce=nonce)
    if isinstance(resp, HTMLResponse) and resp.status_code == 200:
        resp.headers["content-security-policy"] = CSP.replace(
            "style-src 'self'", f"style-src 'self' 'nonce-{nonce}'"
        )
    return resp


@router.get("/static/{name:path}")
async def static(request: Request, name: str) -> Response:
    """The dashboard's scripts and styles (no secret in them: served to anyone)."""
    found = _STATIC.get(name)
    if found is None:
        raise NotFound(f"no dashboard asset {name[:100]!r}")
    data, etag = found
    headers = {"ETag": f'"{etag}"', "Cache-Control": "public, max-age=86400"}
    if request.headers.get("if-none-match") == f'"{etag}"':
        return Response(status_code=304, headers=headers)
    media = _TYPES.get(Path(name).suffix, "application/octet-stream")
    return Response(data, media_type=media, headers=headers)
