"""The HTTP API's calls as data, shared by the sync ``Client`` and the ``AsyncClient``.

Each function here says what to send (method, path, query, JSON body) and what part of
the answer the SDK returns; the two clients only carry it out, so they cannot drift
apart. Event streams (Server-Sent Events) are parsed here too.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from ..errors import InvalidInput, Unavailable, error_from_payload

__all__ = ["RESUME_SECONDS", "Call", "Resume", "StreamCall", "parse_sse_line"]

# Jitter comes from a source of its own: a library must not move its user's global
# `random` state (a seeded simulation, a hypothesis run) from a background reader.
_JITTER = random.Random()  # noqa: S311 -- jitter, not cryptography
RESUME_SECONDS = 60.0  # how long a broken event stream is tried again, by default


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    key: str | None = None  # the SDK returns answer[key] (None: the whole answer)

    def result(self, answer: Any) -> Any:
        return answer[self.key] if self.key is not None else answer


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
    have passed since the break. An event read starts afresh (``progressed``)."""

    replicas: int
    window: float = RESUME_SECONDS
    broke_at: float | None = None
    failures: int = 0

    def progressed(self) -> None:
        self.broke_at, self.failures = None, 0

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

    def next_wait(self, url: str, exc: BaseException) -> float:
        """``broke`` now, jittered; ``Unavailable`` (saying why) when it gives up."""
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


def raise_for(status: int, text: bytes) -> None:
    """Raise the ``errors`` hierarchy's error for an HTTP error answer."""
    try:
        payload = json.loads(text) if text else None
    except ValueError:
        payload = None
    raise error_from_payload(status, payload)


def _seg(name: str) -> str:
    """A path segment (group, machine, job id) as sent: quoted, so a name can never
    change which endpoint is called; the server checks the name itself."""
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"invalid name {name!r}")
    return quote(name, safe="")


# -- the calls ----------------------------------------------------------------------------


def whoami() -> Call:
    return Call("GET", "/whoami")


def create_group(
    name: str,
    machines: list[str] | list[dict[str, Any]],
    key_ttl: float | None,
    ttl: float | None,
    settings: dict[str, Any] | None,
) -> Call:
    ms = [m if isinstance(m, dict) else {"name": m} for m in machines]
    body = {"name": name, "machines": ms, "key_ttl": key_ttl, "ttl": ttl}
    return Call("POST", "/groups", json={**body, "settings": settings or {}})


def list_groups() -> Call:
    return Call("GET", "/groups", key="groups")


def group(name: str) -> Call:
    return Call("GET", f"/groups/{_seg(name)}")


def machine_key(group: str, machine: str, key_ttl: float | None) -> Call:
    return Call(
        "POST", f"/groups/{_seg(group)}/machines/{_seg(machine)}/key", json={"key_ttl": key_ttl}
    )


def delete_group(name: str) -> Call:
    return Call("DELETE", f"/groups/{_seg(name)}")


def arm_teardown(group: str, provider: str, api_key: str) -> Call:
    return Call(
        "PUT",
        f"/groups/{_seg(group)}/teardown",
        json={"provider": provider, "api_key": api_key},
    )


def disarm_teardown(group: str) -> Call:
    return Call("DELETE", f"/groups/{_seg(group)}/teardown")


def start_run(group: str, run: dict[str, Any]) -> Call:
    return Call("PUT", f"/groups/{_seg(group)}/run", json=run)


def report_run(group: str, report: dict[str, Any]) -> Call:
    return Call("POST", f"/groups/{_seg(group)}/run/report", json=report)


def run_state(group: str) -> Call:
    return Call("GET", f"/groups/{_seg(group)}/run")


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
    return Call(
        "POST",
        f"/groups/{_seg(group)}/jobs",
        json={**body, "cwd": cwd, "timeout": timeout, **rules},
    )


def list_jobs(group: str, limit: int) -> Call:
    return Call("GET", f"/groups/{_seg(group)}/jobs", params={"limit": limit}, key="jobs")


def job(job_id: str) -> Call:
    return Call("GET", f"/jobs/{_seg(job_id)}")


def cancel_job(job_id: str) -> Call:
    return Call("POST", f"/jobs/{_seg(job_id)}/cancel")


def send_message(group: str, to: str, type: str, body: dict[str, Any] | None) -> Call:
    return Call(
        "POST", f"/groups/{_seg(group)}/messages", json={"to": to, "type": type, "body": body or {}}
    )


def hosts_sync(group: str, to: str, ip: str) -> Call:
    return Call("POST", f"/groups/{_seg(group)}/hosts-sync", json={"to": to, "ip": ip})


def audit(group: str | None, limit: int) -> Call:
    params: dict[str, Any] = {"limit": limit}
    if group:
        params["group"] = group
    return Call("GET", "/audit", params=params, key="records")


def kv_set(group: str, key: str, value: Any) -> Call:
    return Call("PUT", f"/groups/{_seg(group)}/kv/{quote(key, safe='/')}", json={"value": value})


def kv_get(group: str, key: str, wait: float, newer_than: int) -> Call:
    return Call(
        "GET",
        f"/groups/{_seg(group)}/kv/{quote(key, safe='/')}",
        params={"wait": wait, "newer_than": newer_than},
    )


def kv_list(group: str) -> Call:
    return Call("GET", f"/groups/{_seg(group)}/kv", key="keys")


def push(group: str, to: str, sha: str, remote: str, mode: str | None, owner: str | None) -> Call:
    return Call(
        "POST",
        f"/groups/{_seg(group)}/files",
        json={"to": to, "sha256": sha, "path": remote, "mode": mode, "owner": owner},
    )


def start_pull(group: str, machine: str, remote: str) -> Call:
    return Call("POST", f"/groups/{_seg(group)}/pulls", json={"machine": machine, "path": remote})


def pulled_file(job_id: str) -> Call:
    return Call("GET", f"/jobs/{_seg(job_id)}/file")


def event_cursor(group: str) -> Call:
    return Call("GET", f"/groups/{_seg(group)}/cursor", key="cursor")


def events(
    group: str,
    since: int | None,
    follow: bool,
    keepalive: bool,
    types: tuple[str, ...] = (),
) -> StreamCall:
    params: dict[str, Any] = {"follow": follow}
    if since is not None:
        params["since"] = since
    if types:
        params["type"] = ",".join(types)
    return StreamCall(f"/groups/{_seg(group)}/events", params, keepalive)


def job_events(job_id: str, since: int, follow: bool) -> StreamCall:
    return StreamCall(f"/jobs/{_seg(job_id)}/events", {"since": since, "follow": follow})


def open_stream(group: str, body: dict[str, Any]) -> Call:
    """Ask for a shell or forward stream (then dial ``/v1/streams/{id}``)."""
    return Call("POST", f"/groups/{_seg(group)}/streams", json=body)


def list_sessions(group: str, limit: int) -> Call:
    return Call("GET", f"/groups/{_seg(group)}/sessions", params={"limit": limit}, key="sessions")


def recording(stream: str) -> Call:
    return Call("GET", f"/sessions/{_seg(stream)}/recording")
