"""The HTTP API's calls as data, shared by the sync ``Client`` and the ``AsyncClient``.

Each function here says what to send (method, path, query, JSON body) and what part of
the answer the SDK returns; the two clients only carry it out, so they cannot drift
apart. Event streams (Server-Sent Events) are parsed here too.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from ..errors import (
    InvalidInput,
    NotFound,
    RateLimited,
    TimedOut,
    Unavailable,
    error_from_answer,
    not_crc_server,
)
from ..protocol.jsoncheck import check_json
from ..protocol.names import (
    Target,
    check_kv_key,
    check_name,
    check_new_name,
    group_expired,
    kv_wait_timed_out,
    listed,
    parse_target,
    scenario_of,
)
from ..protocol.names import audit_actions as checked_audit_actions

__all__ = [
    "RESUME_SECONDS",
    "STREAM_SILENCE",
    "WAIT_MARGIN",
    "Call",
    "Resume",
    "StreamCall",
    "answer_of",
    "parse_sse_line",
]

# Jitter comes from a source of its own: a library must not move its user's global
# `random` state (a seeded simulation, a hypothesis run) from a background reader.
_JITTER = random.Random()  # noqa: S311 -- jitter, not cryptography
RESUME_SECONDS = 60.0  # how long a broken event stream is tried again, by default
# An event stream that says nothing at all (no event, no keepalive: the server sends one
# after each 5 s of silence by default) for this long, or the client's ``timeout`` if it
# is longer, is taken as broken: it is opened again (``Resume``), then ``Unavailable``.
STREAM_SILENCE = 120.0
# Added to a key/value wait's own seconds before its answer counts as late.
WAIT_MARGIN = 10.0
RETRY_AFTER_MAX = 300  # seconds: a server's Retry-After beyond this is taken as this
KV_RETRY_SECONDS = 1.0  # between key/value waits while the server cannot be reached


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    key: str | None = None  # the SDK returns answer[key] (None: the whole answer)
    needs: tuple[str, ...] = ()  # keys every answer of the API has (else: not CRC)
    items: tuple[str, ...] = ()  # answer[key] is a list of objects with these keys
    wait: float = 0.0  # seconds the server may hold the answer back (a key/value wait)

    def __post_init__(self) -> None:
        # A body JSON cannot carry (NaN, a key that is not a string, bytes, a set) is
        # refused here, as the server would refuse it, never a bare ValueError from the
        # encoder or a key silently turned into a string.
        check_json(self.json, what="request body")

    def result(self, answer: Any) -> Any:
        for key in (*self.needs, *(() if self.key is None else (self.key,))):
            if key not in answer:
                raise Unavailable(
                    f"the server's answer has no {key!r}: {_NOT_CRC}", code="not_crc_server"
                )
        value = answer if self.key is None else answer[self.key]
        if self.items:
            if not isinstance(value, list) or not all(
                isinstance(item, dict) and all(k in item for k in self.items) for item in value
            ):
                raise Unavailable(
                    f"the server's answer is not a list of {self.key or 'items'} with "
                    f"{', '.join(map(repr, self.items))}: {_NOT_CRC}",
                    code="not_crc_server",
                )
        return value


@dataclass
class StreamCall:
    """A ``GET`` answered with Server-Sent Events; ``params["since"]`` follows the last
    event read, so a broken stream resumes where it was (on another replica, too)."""

    path: str
    params: dict[str, Any] = field(default_factory=dict)
    keepalive: bool = False


@dataclass
class Resume:
    """When a broken event stream is opened again (the clients wait and switch replicas;
    the stream resumes from its cursor, so no event is lost or shown twice).

    After a break the next replica is tried at once; once each was tried, the client
    waits 0.25 s, then twice as long each round (at most 5 s, times ``jitter`` in
    0.5-1), and gives up when every replica failed at least once and ``window`` seconds
    have passed since the break. An event or keepalive read starts afresh (``progressed``).

    ``notify``, if given, is told in a sentence when the stream breaks (once per break)
    and when it is open again (``opened``: at once, not at the next event, which may be
    long in coming), so that a caller can say why it is quiet meanwhile. A break is said
    only once the first attempt to open the stream again failed too: one that opens at
    once (a replica switched) needs no word, and one the server ends with its refusal
    (a token revoked: the stream cut, then 401) is said by that refusal alone."""

    replicas: int
    window: float = RESUME_SECONDS
    broke_at: float | None = None
    failures: int = 0
    notify: Callable[[str], None] | None = None
    url: str = ""  # where the stream broke (for ``notify``)
    said_open: bool = False  # open again after this break ("resumed" said if it was)
    said_broke: bool = False  # the break said (at the first failed attempt to reopen)
    cause: str = ""  # why the stream broke (for ``notify``)

    def opened(self, url: str) -> None:
        """The stream is open again (its answer's headers came), at ``url``: said now.
        The count goes on until something is read (``progressed``): a server that
        answers and drops the stream at once is not tried forever."""
        if self.broke_at is None or self.said_open:
            return
        self.said_open = True
        if self.notify is not None and self.said_broke:  # an unsaid break: nothing to say
            where = "" if url == self.url else f" (it broke at {self.url})"
            self.notify(f"event stream from {url} resumed{where}")

    def progressed(self) -> None:
        """An event or a keepalive was read: a later break starts afresh."""
        self.broke_at, self.failures, self.said_open = None, 0, False

    def broke(self, now: float, jitter: float) -> float | None:
        """Seconds to wait before the next attempt (0: at once), or None: give up."""
        if self.broke_at is None:
            self.broke_at = now
        elif self.failures >= self.replicas and now - self.broke_at >= self.window:
            return None
        self.failures += 1
        if self.failures % self.replicas:
            return 0.0
        rounds = self.failures // self.replicas
        delay: float = min(5.0, 0.25 * 2.0 ** (rounds - 1)) * jitter
        return min(delay, max(0.0, self.broke_at + self.window - now))

    def _say_broke(self) -> None:
        self.said_broke = True
        if self.notify is not None:
            self.notify(
                f"event stream from {self.url} broke ({self.cause}): resuming it where it "
                f"was, for up to {self.window:g} s"
            )

    def next_wait(self, url: str, exc: BaseException) -> float:
        """``broke`` now, jittered; ``Unavailable`` (saying why) when it gives up."""
        if self.broke_at is None or self.said_open:  # a new break (perhaps of a reopening)
            reopened = self.broke_at is not None  # and broke before anything was read
            self.url, self.said_open, self.said_broke, self.cause = url, False, False, str(exc)
            if reopened:
                self._say_broke()
        elif not self.said_broke:  # opening it again failed too: the break is said now
            self._say_broke()
        wait = self.broke(time.monotonic(), _JITTER.uniform(0.5, 1.0))
        if wait is None:
            raise Unavailable(
                f"event stream from {url} broke and could not be resumed within "
                f"{self.window:g} s: {exc}"
            )
        return wait


KEEPALIVE = object()  # parse_sse_line's answer for a keepalive comment


def parse_sse_line(line: str) -> Any:
    """One line of the stream: an event (dict), KEEPALIVE, or None (nothing)."""
    if line.startswith("data: "):
        return json.loads(line[6:])
    if line.startswith(":"):
        return KEEPALIVE
    return None


def raise_for(
    url: str, status: int, content_type: str | None, text: bytes, retry_after: str | None = None
) -> None:
    """Raise the ``errors`` hierarchy's error for an HTTP error answer: the server's own
    error, or ``not a CloudRemoteControl server`` for an answer without the API's JSON
    error shape (a web server's 404 page, a proxy's error page). A 429's ``Retry-After``
    (delta-seconds) is kept in the error's ``details["retry_after"]``."""
    exc = error_from_answer(url, status, content_type, text)
    if isinstance(exc, RateLimited) and retry_after is not None:
        value = retry_after.strip()
        if value.isascii() and value.isdigit() and len(value) <= 6:  # not "²"
            exc.details["retry_after"] = min(int(value), RETRY_AFTER_MAX)
    raise exc


def why_unreachable(url: str, exc: BaseException | str) -> str:
    """Why ``url`` could not be reached, without the ``cannot reach URL:`` before it, in
    one wording however it was found: an ``Unavailable``'s own reason (a certificate
    fetch), or for another error (the HTTP library's) the operating system's reason when
    it gave one (``[Errno 111] Connection refused``, as a certificate fetch says it, not
    ``All connection attempts failed``), else the error's text, else its kind."""
    if isinstance(exc, str | Unavailable):
        text = exc if isinstance(exc, str) else exc.message
        prefix = f"cannot reach {url}: "
        return text[len(prefix) :] if text.startswith(prefix) else text
    seen: BaseException | None = exc
    while seen is not None:
        number = getattr(seen, "errno", None)
        if isinstance(number, int) and number > 0:
            return f"[Errno {number}] {os.strerror(number)}"
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__


def none_reachable(tried: dict[str, str]) -> Unavailable:
    """Every replica failed (``tried``: each URL and why): all are named, not only the
    last one tried; a reason they share is said once."""
    reasons = set(tried.values())
    why = reasons.pop() if len(reasons) == 1 else "; ".join(f"{u}: {r}" for u, r in tried.items())
    return Unavailable(f"cannot reach any of {', '.join(tried)}: {why}")


class Unreached:
    """The replicas one connection or request could not reach, and why (each in
    ``why_unreachable``'s wording), kept by both clients while they try the next one."""

    def __init__(self) -> None:
        self.why: dict[str, str] = {}

    def add(self, url: str, exc: BaseException | str) -> None:
        self.why[url] = why_unreachable(url, exc)

    def error(self, last: Exception) -> Exception:
        """What to raise once the last URL failed too: ``none_reachable`` naming each
        when several were tried, else ``last`` (the one URL's own error)."""
        return none_reachable(self.why) if len(self.why) > 1 else last


def next_urls(urls: list[str], index: int, tried: Iterable[str] = ()) -> list[int]:
    """Where a client goes when ``urls[index]`` fails: the indexes of the other URLs, in
    turn from the next one, leaving out the one it leaves and those ``tried`` already
    (it never goes back to a URL that just failed while another is left to try)."""
    skip = set(tried) | {urls[index]}
    n = len(urls)
    return [i for i in ((index + k) % n for k in range(1, n)) if urls[i] not in skip]


#: A request cut before its answer on a connection that was open (its replica died with
#: it): sent again to the next replica only when it reads and changes nothing.
RESENDABLE = frozenset({"GET", "HEAD"})


def client_closed() -> InvalidInput:
    """What a client says when it is used after ``close()`` (or its ``with`` / ``async
    with`` block): it does not open its connections again behind its user's back."""
    return InvalidInput(
        "this client is closed (by close() or the end of its `with` block): "
        "make a new one to go on",
        code="client_closed",
    )


def unanswered(url: str, method: str) -> Unavailable:
    """A request the server took but did not answer within the client's ``timeout``:
    one that changes something may have been done (it is not sent again)."""
    done = (
        ""
        if method.upper() in RESENDABLE
        else ": what was asked may have been done; look before asking again"
    )
    return Unavailable(f"{url} did not answer in time{done}")


def check_client_timeout(value: object) -> float:
    """A client's ``timeout``: seconds, a finite number above 0 (each request's connect,
    read and write; an event stream's silence, a key/value wait's own, are added)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidInput(
            f"invalid timeout {value!r}: seconds, a finite number above 0", field="timeout"
        )
    return float(value)


def kv_timed_out(key: str, wait: float, newer_than: int) -> TimedOut:
    """A key/value wait that ended without a newer version, as the server says it."""
    return TimedOut(kv_wait_timed_out(key, wait, newer_than))


def kv_wait_delay(exc: Unavailable, deadline: float) -> float | None:
    """How long to sleep before a key/value wait asks again, or None: raise ``exc``.
    Refused with 429: the server's ``Retry-After`` (1 s if it gave none) plus up to a
    quarter more at random. The server could not be reached or was stopping (it
    restarts; ``unavailable``): 1 s, as the agent's ``kv wait``. Anything else (the URL
    is no CRC server's), or a delay that passes ``deadline`` (``time.monotonic()``):
    None, the caller's time being up."""
    if isinstance(exc, RateLimited):
        after = exc.details.get("retry_after")
        base = float(after) if isinstance(after, (int, float)) and after >= 0 else 1.0
        delay = base + _JITTER.uniform(0, max(1.0, base / 4))
    elif exc.code == "unavailable":
        delay = KV_RETRY_SECONDS
    else:
        return None
    if time.monotonic() + delay >= deadline:
        return None
    return delay


def kv_wait_left(key: str, wait: float, deadline: float, newer_than: int) -> float:
    """The time left of a key/value wait asked again (``kv_wait_delay`` slept), or its
    ``TimedOut`` when a sleep that overran left none (the server refuses a negative
    wait: the caller would get a usage error instead)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise kv_timed_out(key, wait, newer_than)
    return left


_NOT_CRC = "is the URL that of a CloudRemoteControl server?"


def answer_of(url: str, status: int, content_type: str | None, body: bytes) -> Any:
    """A success answer's JSON object. Every answer of the API is one: anything else
    (a web server's page, a proxy's login form) means the URL is not a CloudRemoteControl
    server's, which is said as such (Unavailable) rather than as a JSON parser's error."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise not_crc_server(url, status, content_type)
    return answer


def _seg(name: str) -> str:
    """A path segment (job id, stream id) as sent: quoted, and never one that could
    change which endpoint is called. A '/' is refused even quoted (the server decodes
    %2F before routing), and so are '.' and '..' (a client resolves them away, RFC 3986
    5.2.4); the server checks the rest."""
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise InvalidInput(f"invalid id {name!r}")
    return quote(name, safe="")


def _group(name: str) -> str:
    """A group's path segment: a name the server could have created (protocol/names.py),
    so it can never reach another endpoint ('lab/kv/k', 'g/teardown')."""
    return check_name(name, "group")


def _machine(name: str) -> str:
    return check_name(name, "machine")


def _number(value: float | None, what: str) -> float | None:
    """A number of seconds sent as JSON: None, or a finite number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(f"invalid {what} {value!r}: give a finite number of seconds", field=what)
    return value


def group_gone(group: str, view: dict[str, Any] | None) -> NotFound | None:
    """The error of a wait on ``group`` whose machines were revoked or whose events
    ended: it was deleted (``view`` None: the server knows it no more) or has expired
    (its TTL), as the server says of commands to it; else None."""
    if view is None:
        return NotFound(f"group {group!r} was deleted while waiting", field="group")
    if view.get("expired"):
        return group_expired(group, scenario_of(view.get("settings") or {}))
    return None


# -- the calls ----------------------------------------------------------------------------


def whoami() -> Call:
    return Call("GET", "/whoami", needs=("user",))


def create_group(
    name: str,
    machines: Iterable[str | dict[str, Any]],
    key_ttl: float | None,
    ttl: float | None,
    settings: dict[str, Any] | None,
) -> Call:
    ms = [m if isinstance(m, dict) else {"name": m} for m in listed(machines, "machines")]
    for m in ms:  # the server's rule, checked before anything is sent
        check_new_name(m.get("name"), "machine")
    body = {
        "name": check_new_name(name, "group"),
        "machines": ms,
        "key_ttl": _number(key_ttl, "key_ttl"),
        "ttl": _number(ttl, "ttl"),
    }
    return Call(
        "POST",
        "/groups",
        json={**body, "settings": settings or {}},
        needs=("machines",),
    )


def list_groups() -> Call:
    return Call("GET", "/groups", key="groups", items=("group", "machines", "ready", "created"))


def group(name: str) -> Call:
    return Call("GET", f"/groups/{_group(name)}", needs=("machines",))


def machine_key(group: str, machine: str, key_ttl: float | None) -> Call:
    return Call(
        "POST",
        f"/groups/{_group(group)}/machines/{_machine(machine)}/key",
        json={"key_ttl": _number(key_ttl, "key_ttl")},
        needs=("key", "key_expires"),
    )


def delete_group(name: str) -> Call:
    return Call("DELETE", f"/groups/{_group(name)}")


def arm_teardown(group: str, provider: str, api_key: str) -> Call:
    return Call(
        "PUT",
        f"/groups/{_group(group)}/teardown",
        json={"provider": provider, "api_key": api_key},
    )


def disarm_teardown(group: str) -> Call:
    return Call("DELETE", f"/groups/{_group(group)}/teardown")


def start_run(group: str, run: dict[str, Any]) -> Call:
    return Call("PUT", f"/groups/{_group(group)}/run", json=run)


def report_run(group: str, report: dict[str, Any]) -> Call:
    return Call("POST", f"/groups/{_group(group)}/run/report", json=report)


def run_state(group: str) -> Call:
    return Call("GET", f"/groups/{_group(group)}/run")


def health() -> Call:
    return Call("GET", "/health")


def start_job(
    group: str,
    to: str,
    argv: list[str] | None,
    command: str | None,
    shell: str | None,
    env: dict[str, str] | None,
    cwd: str | None,
    timeout: float | None,
    rollout: dict[str, Any] | None = None,
) -> Call:
    """``rollout``: rate control (``max_concurrency``, ``max_errors``, ``batch_wait``,
    ``canary``, ``deliver_within``); only the keys set are sent."""
    body = {"to": to, "argv": argv, "command": command, "shell": shell, "env": env or {}}
    rules = {k: v for k, v in (rollout or {}).items() if v is not None}
    for k in ("batch_wait", "deliver_within"):
        if k in rules:
            rules[k] = _number(rules[k], k)
    return Call(
        "POST",
        f"/groups/{_group(group)}/jobs",
        json={**body, "cwd": cwd, "timeout": _number(timeout, "timeout"), **rules},
    )


def list_jobs(group: str, limit: int) -> Call:
    return Call("GET", f"/groups/{_group(group)}/jobs", params={"limit": limit}, key="jobs")


def job(job_id: str) -> Call:
    return Call("GET", f"/jobs/{_seg(job_id)}")


def cancel_job(job_id: str) -> Call:
    return Call("POST", f"/jobs/{_seg(job_id)}/cancel")


def send_message(group: str, to: str, type: str, body: dict[str, Any] | None) -> Call:
    check_json(body, what="message body", field="body")  # NaN: what the agent says of it
    if body is None:  # no body: an empty one
        body = {}
    elif not isinstance(body, dict):  # 0, false, "" and [] too: never taken for {}
        raise InvalidInput("message body must be a JSON object")
    return Call(
        "POST",
        f"/groups/{_group(group)}/messages",
        json={"to": to, "type": type, "body": body},
    )


def hosts_sync(group: str, to: str, ip: str) -> Call:
    return Call("POST", f"/groups/{_group(group)}/hosts-sync", json={"to": to, "ip": ip})


def audit(group: str | None, limit: int, actions: Iterable[str] = ()) -> Call:
    """The latest ``limit`` audit records (of ``group``); with ``actions``, only those
    whose action is one of them or, for one ending in ``.`` (``kv.``), starts with it."""
    params: dict[str, Any] = {"limit": limit}
    if group is not None:  # "" is no group's name, not "every group"
        params["group"] = _group(group)
    wanted = audit_actions(actions)
    if wanted:
        params["action"] = ",".join(wanted)
    return Call("GET", "/audit", params=params, key="records")


def audit_actions(values: Iterable[str]) -> list[str]:
    """The actions of ``--action`` options (each one or a comma list), checked
    (``protocol.names.audit_actions``, as the server checks them) and without repeats;
    InvalidInput for a string given for the list, which would be taken one character at
    a time."""
    parts: list[str] = []
    for value in listed(values, "actions"):
        if not isinstance(value, str):
            raise InvalidInput(
                f"invalid action: a string, not {type(value).__name__}", field="action"
            )
        parts += value.split(",")
    return checked_audit_actions(parts)


def shown_audit(records: list[dict[str, Any]], wanted: list[str]) -> list[dict[str, Any]]:
    """``records`` whose action is one of ``wanted`` (``audit_actions``) or starts with
    one that ends in a dot; all of them without any. A server older than the ``action``
    parameter ignores it and answers every action."""
    if not wanted:
        return records
    return [
        r
        for r in records
        if any(
            r.get("action") == a or (a.endswith(".") and str(r.get("action")).startswith(a))
            for a in wanted
        )
    ]


def kv_set(group: str, key: str, value: Any) -> Call:
    check_json(value, what="kv value", field="value")
    path = f"/groups/{_group(group)}/kv/{quote(check_kv_key(key), safe='/')}"
    return Call("PUT", path, json={"value": value})


def kv_get(group: str, key: str, wait: float, newer_than: int) -> Call:
    from ..protocol.limits import MAX_KV_WAIT_SECONDS

    seconds = _number(wait, "wait")
    if seconds is not None and not 0 <= seconds <= MAX_KV_WAIT_SECONDS:
        raise InvalidInput(
            f"invalid wait {wait!r}: from 0 to {MAX_KV_WAIT_SECONDS:g} seconds (one wait "
            "holds a connection to the server; wait again for longer)",
            field="wait",
        )
    return Call(
        "GET",
        f"/groups/{_group(group)}/kv/{quote(check_kv_key(key), safe='/')}",
        params={"wait": seconds, "newer_than": newer_than},
        wait=seconds or 0.0,
    )


def kv_list(group: str) -> Call:
    return Call("GET", f"/groups/{_group(group)}/kv", key="keys")


def check_push(to: str, remote: str, mode: str | None, owner: str | None) -> Target:
    """What the server would refuse in a push that can be told before its file is
    uploaded: the target's form, and the remote path, mode and owner (by the message the
    agent gets); returns the target, for ``check_targets``."""
    from ..protocol.messages import FilePut

    target = parse_target(to)
    body = {"job_id": "job", "sha256": "0" * 64, "size": 0, "path": remote}
    FilePut.from_body(body | {"mode": mode, "owner": owner})
    return target


def check_targets(target: Target, group: str, roster: dict[str, Any]) -> None:
    """NotFound, in the server's words, when ``target`` names no machine of ``roster``
    (the group, as ``GET /v1/groups/G`` gives it) that a job can go to."""
    if roster.get("expired"):
        raise group_expired(group, scenario_of(roster.get("settings") or {}))
    machines = {
        str(m.get("name")): m.get("labels") or {}
        for m in roster.get("machines") or ()
        if isinstance(m, dict) and m.get("state") != "revoked"
    }
    target.choose(group, machines)


def push(
    group: str,
    to: str,
    sha: str,
    remote: str,
    mode: str | None,
    owner: str | None,
    new_mode: str | None = None,
    name: str | None = None,
) -> Call:
    """``new_mode`` and ``name`` (``client.push_fields``) are sent only when set: a
    server older than them refuses them."""
    body = {"to": to, "sha256": sha, "path": remote, "mode": mode, "owner": owner}
    body |= {k: v for k, v in (("new_mode", new_mode), ("name", name)) if v is not None}
    return Call("POST", f"/groups/{_group(group)}/files", json=body)


def start_pull(group: str, machine: str, remote: str) -> Call:
    return Call("POST", f"/groups/{_group(group)}/pulls", json={"machine": machine, "path": remote})


def pulled_file(job_id: str) -> Call:
    return Call("GET", f"/jobs/{_seg(job_id)}/file")


def event_cursor(group: str) -> Call:
    return Call("GET", f"/groups/{_group(group)}/cursor", key="cursor")


def events(
    group: str,
    since: int | None,
    follow: bool,
    keepalive: bool,
    types: Iterable[str] = (),
) -> StreamCall:
    params: dict[str, Any] = {"follow": follow}
    if since is not None:
        params["since"] = since
    types = tuple(listed(types, "types"))
    if types:
        params["type"] = ",".join(types)
    return StreamCall(f"/groups/{_group(group)}/events", params, keepalive)


def job_events(job_id: str, since: int, follow: bool) -> StreamCall:
    return StreamCall(f"/jobs/{_seg(job_id)}/events", {"since": since, "follow": follow})


def open_stream(group: str, body: dict[str, Any]) -> Call:
    """Ask for a shell or forward stream (then dial ``/v1/streams/{id}``)."""
    return Call("POST", f"/groups/{_group(group)}/streams", json=body)


def list_sessions(group: str, limit: int, probes: bool = False) -> Call:
    """The latest ``limit`` ended sessions; forward probes only with ``probes`` (the
    server leaves them out, and does not count them, unless ``probes=true``)."""
    params: dict[str, Any] = {"limit": limit}
    if probes:
        params["probes"] = "true"
    return Call("GET", f"/groups/{_group(group)}/sessions", params=params, key="sessions")


def shown_sessions(rows: list[dict[str, Any]], probes: bool) -> list[dict[str, Any]]:
    """``rows`` without forward probes unless ``probes``: a server older than the
    ``probes`` parameter ignores it and lists them."""
    return rows if probes else [r for r in rows if not r.get("probe")]


def recording(stream: str) -> Call:
    return Call("GET", f"/sessions/{_seg(stream)}/recording")
