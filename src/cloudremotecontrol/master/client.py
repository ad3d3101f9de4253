"""The Python SDK: a thin, typed client of the HTTP API.

    from cloudremotecontrol.master.client import Client
    with Client.from_profile() as crc:
        crc.create_group("lab", ["a", "b"])
        for event in crc.run("lab", "all", argv=["uname", "-a"]):
            ...

Errors are the ``cloudremotecontrol.errors`` hierarchy (same codes as the HTTP API).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from ..errors import InvalidInput, Unavailable, error_from_payload
from ..protocol.states import JobStatus
from ..tlspin import client_context
from .profile import Profile, load_profile

__all__ = ["Client"]


class Client:
    """``url`` may list several replicas of one server, comma-separated: a request that
    cannot connect is sent to the next one, and event streams resume there from their
    last cursor."""

    def __init__(
        self,
        url: str,
        token: str,
        fingerprint: str | None = None,
        cert_pem: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.urls = [u.strip().rstrip("/") for u in url.split(",") if u.strip()]
        if not self.urls:
            raise InvalidInput("no server URL given")
        self._token, self._fingerprint, self.cert_pem = token, fingerprint, cert_pem
        self._timeout = timeout
        self._index = 0
        self._http = self._connect_any()

    @property
    def url(self) -> str:
        return self.urls[self._index]

    def _open(self, url: str) -> httpx.Client:
        ctx, self.cert_pem = client_context(url, self._fingerprint, self.cert_pem)
        return httpx.Client(
            base_url=url + "/v1",
            verify=ctx if ctx is not None else False,
            headers={"Authorization": f"Bearer {self._token}"},
            timeout=httpx.Timeout(self._timeout, read=None),
            trust_env=False,
        )

    def _connect_any(self) -> httpx.Client:
        for attempt in range(len(self.urls)):
            try:
                return self._open(self.url)
            except Unavailable:
                if attempt == len(self.urls) - 1:
                    raise
                self._index = (self._index + 1) % len(self.urls)
        raise Unavailable("no server URL given")

    def _failover(self) -> bool:
        """Switch to the next replica; False when there is only one."""
        if len(self.urls) == 1:
            return False
        self._http.close()
        self._index = (self._index + 1) % len(self.urls)
        self._http = self._connect_any()
        return True

    @classmethod
    def from_profile(cls, profile: Profile | None = None) -> Client:
        p = profile or load_profile()
        return cls(p.url, p.token, p.fingerprint, p.cert_pem)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- plumbing -----------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        for attempt in range(len(self.urls)):
            try:
                resp = self._http.request(method, path, **kwargs)
                break
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # Nothing reached the server: safe to send to another replica.
                if attempt == len(self.urls) - 1 or not self._failover():
                    raise Unavailable(f"cannot reach {self.url}: {exc}") from None
            except httpx.HTTPError as exc:
                raise Unavailable(f"cannot reach {self.url}: {exc}") from None
        if resp.status_code >= 400:
            try:
                payload = resp.json()
            except ValueError:
                payload = None
            raise error_from_payload(resp.status_code, payload)
        return resp.json()

    def _stream(self, path: str, params: dict[str, Any], keepalive: bool = False) -> Iterator[Any]:
        failures = 0
        while True:
            try:
                yield from self._stream_once(path, params, keepalive)
                return
            except httpx.TransportError as exc:
                # Resume on another replica from the last event seen (SSE id = cursor).
                failures += 1
                if failures > len(self.urls) or not self._failover():
                    raise Unavailable(f"event stream from {self.url} broke: {exc}") from None
            except httpx.HTTPError as exc:
                raise Unavailable(f"event stream from {self.url} broke: {exc}") from None

    def _stream_once(self, path: str, params: dict[str, Any], keepalive: bool) -> Iterator[Any]:
        with self._http.stream("GET", path, params=params) as resp:
            if resp.status_code >= 400:
                resp.read()
                try:
                    payload = resp.json()
                except ValueError:
                    payload = None
                raise error_from_payload(resp.status_code, payload)
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                    params["since"] = event["cursor"]
                    yield event
                elif keepalive and line.startswith(":"):
                    yield None

    # -- API ----------------------------------------------------------------------------
    def whoami(self) -> dict[str, Any]:
        return self._call("GET", "/whoami")

    def create_group(
        self,
        name: str,
        machines: list[str] | list[dict[str, Any]],
        key_ttl: float | None = None,
        ttl: float | None = None,
        settings: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        ms = [m if isinstance(m, dict) else {"name": m} for m in machines]
        return self._call(
            "POST",
            "/groups",
            json={
                "name": name,
                "machines": ms,
                "key_ttl": key_ttl,
                "ttl": ttl,
                "settings": settings or {},
            },
        )

    def list_groups(self) -> list[dict[str, Any]]:
        return self._call("GET", "/groups")["groups"]

    def group(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/groups/{name}")

    def machine_key(self, group: str, machine: str, key_ttl: float | None = None) -> dict[str, Any]:
        """A fresh single-use key for a machine not enrolled yet (its old key stops
        working); Conflict once it has enrolled."""
        return self._call(
            "POST", f"/groups/{group}/machines/{machine}/key", json={"key_ttl": key_ttl}
        )

    def delete_group(self, name: str) -> dict[str, Any]:
        return self._call("DELETE", f"/groups/{name}")

    def arm_teardown(self, group: str, provider: str, api_key: str) -> dict[str, Any]:
        """Hand the server ``provider``'s API key so that it destroys the group's
        machines there when the group's TTL passes (stored encrypted, never shown)."""
        return self._call(
            "PUT", f"/groups/{group}/teardown", json={"provider": provider, "api_key": api_key}
        )

    def disarm_teardown(self, group: str) -> dict[str, Any]:
        """Take the provider key back: the TTL then only revokes the group."""
        return self._call("DELETE", f"/groups/{group}/teardown")

    def start_run(self, group: str, run: dict[str, Any]) -> dict[str, Any]:
        """Report a scenario run's step graph (``crc up`` does): ``{"run_id",
        "scenario", "steps": [{"name", "kind", "to", "needs", "retries"}]}``."""
        return dict(self._call("PUT", f"/groups/{group}/run", json=run))

    def report_run(self, group: str, report: dict[str, Any]) -> dict[str, Any]:
        """One change of the run: ``{"type": "phase"|"step"|"end", "run_id", ...}``."""
        return dict(self._call("POST", f"/groups/{group}/run/report", json=report))

    def run_state(self, group: str) -> dict[str, Any]:
        """The group's scenario run as reported: steps with states, attempts, timings."""
        return dict(self._call("GET", f"/groups/{group}/run"))

    def health(self) -> dict[str, Any]:
        """``{"ok", "version"}``, and ``"dashboard"`` (its path) when the server has one."""
        return dict(self._call("GET", "/health"))

    def start_job(
        self,
        group: str,
        to: str,
        *,
        argv: list[str] | None = None,
        command: str | None = None,
        shell: str | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        return self._call(
            "POST",
            f"/groups/{group}/jobs",
            json={
                "to": to,
                "argv": argv,
                "command": command,
                "shell": shell,
                "env": env or {},
                "cwd": cwd,
                "timeout": timeout,
            },
        )

    def send_message(
        self, group: str, to: str, type: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Queue data message ``type`` (``user.NAME``) for machines."""
        return self._call(
            "POST", f"/groups/{group}/messages", json={"to": to, "type": type, "body": body or {}}
        )

    def hosts_sync(self, group: str, to: str = "all", ip: str = "auto") -> dict[str, Any]:
        """Start the job that writes the group's machines into hosts files."""
        return self._call("POST", f"/groups/{group}/hosts-sync", json={"to": to, "ip": ip})

    def audit(self, group: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if group:
            params["group"] = group
        return self._call("GET", "/audit", params=params)["records"]

    # -- key/value store -----------------------------------------------------------------
    def kv_set(self, group: str, key: str, value: Any) -> dict[str, Any]:
        return self._call("PUT", f"/groups/{group}/kv/{key}", json={"value": value})

    def kv_get(self, group: str, key: str, wait: float = 0, newer_than: int = 0) -> dict[str, Any]:
        """The key's value; with ``wait``, block until it exists with a newer version."""
        return self._call(
            "GET", f"/groups/{group}/kv/{key}", params={"wait": wait, "newer_than": newer_than}
        )

    def kv_list(self, group: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/groups/{group}/kv")["keys"]

    # -- files --------------------------------------------------------------------------
    def upload(self, local: str) -> dict[str, Any]:
        """Upload a file's content once (skipped if the server has it for you already)."""
        import hashlib

        digest = hashlib.sha256()
        size = 0
        try:
            with open(local, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
        except OSError as exc:
            raise InvalidInput(f"cannot read {local}: {exc.strerror}") from None
        sha = digest.hexdigest()
        try:
            head = self._http.head(f"/blobs/{sha}")
        except httpx.HTTPError as exc:
            raise Unavailable(f"cannot reach {self.url}: {exc}") from None
        if head.status_code == 200:
            return {"sha256": sha, "size": size, "uploaded": False}

        def chunks() -> Iterator[bytes]:
            with open(local, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    yield chunk

        out = self._call(
            "PUT",
            f"/blobs/{sha}",
            content=chunks(),
            headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
        )
        return {**out, "uploaded": True}

    def push(
        self,
        group: str,
        to: str,
        local: str,
        remote: str,
        mode: str | None = None,
        owner: str | None = None,
    ) -> dict[str, Any]:
        """Upload ``local`` and start the job writing it to ``remote`` on the targets."""
        blob = self.upload(local)
        return self._call(
            "POST",
            f"/groups/{group}/files",
            json={"to": to, "sha256": blob["sha256"], "path": remote, "mode": mode, "owner": owner},
        )

    def start_pull(self, group: str, machine: str, remote: str) -> dict[str, Any]:
        return self._call(
            "POST", f"/groups/{group}/pulls", json={"machine": machine, "path": remote}
        )

    def download_pulled(self, job_id: str, local: str) -> dict[str, Any]:
        """Save the file a finished pull job brought back to ``local`` (verified, atomic)."""
        import hashlib
        import os
        import tempfile

        info = self._call("GET", f"/jobs/{job_id}/file")
        directory = os.path.dirname(os.path.abspath(local))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".crc-pull-")
        digest = hashlib.sha256()
        try:
            with (
                os.fdopen(fd, "wb") as fh,
                self._http.stream("GET", f"/blobs/{info['sha256']}") as resp,
            ):
                if resp.status_code >= 400:
                    resp.read()
                    raise error_from_payload(resp.status_code, resp.json())
                for chunk in resp.iter_bytes(1 << 20):
                    digest.update(chunk)
                    fh.write(chunk)
            if digest.hexdigest() != info["sha256"]:
                raise Unavailable("downloaded content does not match its sha256: try again")
            os.replace(tmp, local)
        except httpx.HTTPError as exc:
            raise Unavailable(f"download failed: {exc}") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return info

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/jobs/{job_id}")

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/jobs/{job_id}/cancel")

    def events(
        self, group: str, since: int | None = None, follow: bool = False, keepalive: bool = False
    ) -> Iterator[Any]:
        """Events after cursor ``since``; with ``keepalive`` also ``None`` every few
        seconds of silence, so a follower can check its own deadline."""
        params: dict[str, Any] = {"follow": follow}
        if since is not None:
            params["since"] = since
        return self._stream(f"/groups/{group}/events", params, keepalive)

    def event_cursor(self, group: str) -> int:
        """The cursor of the group's latest event (follow from there)."""
        return int(self._call("GET", f"/groups/{group}/cursor")["cursor"])

    def job_events(
        self, job_id: str, since: int = 0, follow: bool = True
    ) -> Iterator[dict[str, Any]]:
        return self._stream(f"/jobs/{job_id}/events", {"since": since, "follow": follow})

    def follow_job(self, job_id: str, targets: list[str]) -> Iterator[dict[str, Any]]:
        """Events of a job until every target reached a final status."""
        left = set(targets)
        if not left:
            return
        for event in self.job_events(job_id, follow=True):
            yield event
            if event["type"] == "job.status" and JobStatus(event["data"]["status"]).terminal:
                left.discard(event["machine"])
                if not left:
                    return

    def run(self, group: str, to: str, **job: Any) -> Iterator[dict[str, Any]]:
        """Start a job and yield its events until every target finished."""
        started = self.start_job(group, to, **job)
        yield {"type": "job.accepted", **started}
        yield from self.follow_job(started["job_id"], started["targets"])


def worst_exit_code(results: dict[str, dict[str, Any]]) -> int:
    """``crc run``'s exit code: the worst of its targets (see docs/reference/cli.md)."""
    worst = 0
    for r in results.values():
        status = r["status"]
        if status == "succeeded":
            code = 0
        elif status == "failed":
            code = r.get("exit_code") or 1
        elif status == "timed_out":
            code = 124
        elif status == "cancelled":
            code = 130
        else:  # lost, or anything unexpected
            code = 125
        worst = max(worst, code)
    return worst
