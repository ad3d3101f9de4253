"""The agent: enroll once, then hold one outbound WebSocket to the server for ever.

Reconnects use exponential backoff with full jitter (AWS architecture blog, "Exponential
Backoff And Jitter"), so a thousand agents cut off by a server restart do not return in
one wave. Everything the agent sends is first written to its outbox (state.py) and
replayed after each reconnect until the server acknowledges it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
from typing import Any

from .. import __version__
from ..errors import CrcError, InvalidInput, KeyRejected, Unavailable
from ..protocol.delivery import Inbox, Receipt
from ..protocol.limits import HEARTBEAT_SECONDS, MAX_FRAME_BYTES
from ..protocol.messages import Envelope, JobRun, decode_frame, encode_frame
from ..tlspin import client_context
from .http import call_json
from .platform import Platform, current
from .runner import run_job
from .state import AgentState, Credential

__all__ = ["Agent", "Revoked", "enroll"]

log = logging.getLogger("crc.agent")
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
FACTS_SECONDS = 30.0


class Revoked(CrcError):
    """The server revoked this machine; ``uninstall``: its group asked the agent to
    remove its service too (``uninstall_on_delete``)."""

    code = "revoked"
    exit_code = 0

    def __init__(self, message: str, uninstall: bool = False) -> None:
        super().__init__(message)
        self.uninstall = uninstall


def _ws_url(url: str) -> str:
    base = url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    return base + "/v1/agent/connect"


def split_urls(url: str) -> list[str]:
    """``https://a:8443,https://b:8443`` -> both: replicas of one server, tried in turn."""
    urls = [u.strip() for u in url.split(",") if u.strip()]
    if not urls:
        raise InvalidInput("no server URL given")
    return urls


def enroll(state: AgentState, url: str, key: str, fingerprint: str | None) -> Credential:
    """Exchange ``key`` for a credential and keep it in the state dir (0600). ``url`` may
    list several replicas (comma-separated): each is tried until one answers."""
    urls = split_urls(url)
    for i, one in enumerate(urls):
        try:
            cred = _enroll_once(one, key, fingerprint)
        except Unavailable:
            if i == len(urls) - 1:
                raise
            continue
        cred.url = url
        state.save_credential(cred)
        return cred
    raise Unavailable("no server URL given")  # unreachable: split_urls refuses empty lists


def _enroll_once(url: str, key: str, fingerprint: str | None) -> Credential:
    ctx, pem = client_context(url, fingerprint)
    data = call_json(url.rstrip("/") + "/v1/agent/enroll", ctx, method="POST", body={"key": key})
    return Credential(
        url=url,
        credential=data["credential"],
        machine=data["machine"],
        group=data["group"],
        fingerprint=fingerprint,
        cert_pem=pem,
    )


class Agent:
    def __init__(
        self,
        state: AgentState,
        cred: Credential,
        platform: Platform | None = None,
        gate_ready: bool = False,
        follow_logs: tuple[str, ...] = (),
        facts_interval: float = FACTS_SECONDS,
    ) -> None:
        self.follow_logs = follow_logs
        self.facts_interval = facts_interval
        self.urls = split_urls(cred.url)
        self._url_index = 0
        self.state = state
        self.cred = cred
        self.platform = platform or current()
        self.gate_ready = gate_ready
        self.inbox = Inbox(state.processed)
        self._ws: Any = None
        self._jobs: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.connected = asyncio.Event()
        self._send_lock = asyncio.Lock()
        # Hosts syncs write one file: one at a time, in the order they arrived (the
        # server's order), so the newest roster is the one left in the file.
        self._hosts_lock = asyncio.Lock()
        self.message_arrived = asyncio.Event()
        self.stopping = asyncio.Event()

    # -- sending ------------------------------------------------------------------------
    async def emit(
        self,
        type: str,
        body: dict[str, Any],
        to: str = "master",
        correlation_id: str | None = None,
        job_done: str | None = None,
        job_process: tuple[str, str | None] | None = None,
    ) -> None:
        """Persist a message, then send it if connected (else it goes after reconnect).
        ``job_done`` / ``job_process`` are recorded in the same transaction (AgentState)."""
        env = Envelope.make(self.cred.group, self.cred.machine, to, type, body, correlation_id)
        # One lock keeps frames on the wire in sequence order whatever task emits them.
        async with self._send_lock:
            _, frame = self.state.enqueue(env, job_done=job_done, job_process=job_process)
            ws = self._ws
            if ws is not None:
                with contextlib.suppress(Exception):
                    await ws.send(frame)

    # -- lifecycle ----------------------------------------------------------------------
    async def run(self) -> None:
        """Run until revoked (raises Revoked) or cancelled."""
        for job_id, proc in self.state.interrupted_jobs():
            reason = (
                "the agent stopped (crash, kill or reboot) while the job was running; not re-run"
            )
            killed = self.platform.kill_leftovers(proc) if proc else 0
            if killed:
                reason += f"; {killed} process(es) it left running were killed"
                log.warning(
                    "job %s: killed %d process(es) left running by the previous agent",
                    job_id,
                    killed,
                )
            await self.emit(
                "job.result",
                {"job_id": job_id, "status": "lost", "exit_code": None, "reason": reason},
                job_done=job_id,
            )
        if not self.gate_ready and self.state.get("ready") != "1":
            self.state.put("ready", "1")
            await self.emit("system.ready", {})
        await self._send_facts()
        self._spawn(self._refresh_facts())
        for path in self.follow_logs:
            self._spawn(self._follow(path))
        attempt = 0
        try:
            while True:
                try:
                    await self._session()
                    attempt = 0
                except Revoked:
                    raise
                except (OSError, CrcError, asyncio.TimeoutError, ssl.SSLError) as exc:
                    log.warning("connection to %s failed: %s", self.url, exc)
                    self._next_url()
                except Exception as exc:  # noqa: BLE001 -- websockets raises many kinds
                    log.warning("connection to %s lost: %s", self.url, exc)
                    self._next_url()
                self.connected.clear()
                attempt += 1
                delay = random.uniform(0, min(BACKOFF_MAX, BACKOFF_MIN * 2**attempt))  # noqa: S311
                await asyncio.sleep(delay)
        finally:
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _follow(self, path: str) -> None:
        from .follow_log import follow_log

        key = f"log_offset:{path}"

        async def emit(text: str) -> None:
            await self.emit("progress", {"text": text, "percent": None, "source": path})

        await follow_log(
            path,
            emit,
            lambda: int(self.state.get(key, "0") or 0),
            lambda off: self.state.put(key, str(off)),
        )

    @property
    def url(self) -> str:
        """The server replica in use (the next one is tried after a failure)."""
        return self.urls[self._url_index]

    def _next_url(self) -> None:
        self._url_index = (self._url_index + 1) % len(self.urls)

    async def _refresh_facts(self) -> None:
        """Addresses change (DHCP, a VPC attached later): look again now and then; only a
        change is sent."""
        while True:
            await asyncio.sleep(self.facts_interval)
            old = self.state.get("facts")
            await self._send_facts()
            ws = self._ws
            if old is not None and self.state.get("facts") != old and ws is not None:
                # Our addresses changed: the connection may be bound to one that is gone
                # and would only be noticed after the ping timeout. Start a fresh one.
                log.info("facts changed: reconnecting")
                with contextlib.suppress(Exception):
                    await ws.close()

    async def _send_facts(self) -> None:
        from .facts import collect_facts, facts_changed

        facts = await asyncio.to_thread(collect_facts, __version__)
        old = self.state.get("facts")
        if facts_changed(json.loads(old) if old else None, facts):
            self.state.put("facts", json.dumps(facts))
            await self.emit("facts", facts)

    async def _session(self) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidStatus

        ctx, pem = client_context(self.url, self.cred.fingerprint, self.cred.cert_pem)
        if pem and pem != self.cred.cert_pem:
            self.cred.cert_pem = pem
            self.state.save_credential(self.cred)
        try:
            async with connect(
                _ws_url(self.url),
                ssl=ctx,
                additional_headers={"Authorization": f"Bearer {self.cred.credential}"},
                max_size=MAX_FRAME_BYTES,
                compression=None,
                open_timeout=20,
                ping_interval=HEARTBEAT_SECONDS,
                ping_timeout=HEARTBEAT_SECONDS,
                user_agent_header=f"crc-agent/{__version__}",
            ) as ws:
                await ws.send(
                    encode_frame(
                        {
                            "type": "hello",
                            "ack": self.inbox.processed,
                            "resume_from": self.state.resume_from(),
                            "agent_version": __version__,
                            "ready": self.state.get("ready") == "1",
                        }
                    )
                )
                welcome = decode_frame(await asyncio.wait_for(ws.recv(), 20))
                if welcome["type"] == "revoked":
                    raise Revoked(str(welcome.get("reason") or "machine revoked"))
                if welcome["type"] != "welcome":
                    raise InvalidInput(f"unexpected first frame {welcome['type']!r}")
                self.state.acked(welcome["ack"])
                async with self._send_lock:
                    for _, frame in self.state.frames_after(welcome["ack"]):
                        await ws.send(frame)
                    self._ws = ws
                self.connected.set()
                log.info("connected to %s as %s/%s", self.url, self.cred.group, self.cred.machine)
                try:
                    async for text in ws:
                        await self._on_frame(ws, text)
                finally:
                    self._ws = None
                    self.connected.clear()
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            if rcvd is not None and rcvd.code in (4401, 4403):
                raise Revoked(rcvd.reason or "machine revoked") from None
            raise Unavailable(f"connection closed: {exc}") from None
        except InvalidStatus as exc:
            raise Unavailable(
                f"server refused the connection: HTTP {exc.response.status_code}"
            ) from None

    async def _on_frame(self, ws: Any, text: str | bytes) -> None:
        try:
            frame = decode_frame(text)
        except CrcError as exc:
            log.warning("ignoring a malformed frame: %s", exc.message)
            return
        kind = frame["type"]
        if kind == "ack":
            self.state.acked(frame["seq"])
        elif kind == "revoked":
            raise Revoked(
                str(frame.get("reason") or "machine revoked"),
                uninstall=frame.get("uninstall") is True,
            )
        elif kind == "error":
            log.warning("server reported: %s", frame.get("error"))
        elif kind == "msg":
            await self._on_message(ws, frame["seq"], frame["msg"])

    async def _on_message(self, ws: Any, seq: int, raw: dict[str, Any]) -> None:
        receipt = self.inbox.receive(seq)
        if receipt == Receipt.DUPLICATE:
            await ws.send(encode_frame({"type": "ack", "seq": seq}))
            return
        if receipt == Receipt.GAP:
            raise Unavailable(f"message gap at {seq}: reconnecting to resume")
        try:
            env = Envelope.from_dict(raw)
        except CrcError as exc:
            log.warning("dropping malformed message %s: %s", seq, exc.message)
            self.state.mark_processed(seq)
            self.inbox.mark_processed(seq)
            await ws.send(encode_frame({"type": "ack", "seq": seq}))
            return
        start: JobRun | None = None
        error: str | None = None
        if env.type == "job.run":
            try:
                start = JobRun.from_body(env.body)
            except CrcError as exc:
                error = exc.message
        job_id = start.job_id if start else None
        if env.type in ("hosts.sync", "file.put", "file.get"):
            job_id = str(env.body.get("job_id") or "") or None
        fresh = self.state.mark_processed(
            seq, start_job=job_id, message=env if env.type.startswith("user.") else None
        )
        self.inbox.mark_processed(seq)
        await ws.send(encode_frame({"type": "ack", "seq": seq}))
        if env.type.startswith("user."):
            self.message_arrived.set()
            self.message_arrived = asyncio.Event()
        elif env.type == "hosts.sync" and job_id and fresh:
            self._spawn(self._hosts_sync(job_id, env.body))
        elif env.type in ("file.put", "file.get") and job_id and fresh:
            self._spawn(self._file_job(job_id, env.type, env.body))
        elif env.type == "job.run":
            if start is None:
                job_id = str(env.body.get("job_id") or env.correlation_id or "")
                await self.emit(
                    "job.result",
                    {"job_id": job_id, "status": "failed", "exit_code": None, "reason": error},
                )
            elif fresh:
                # Registered now, not when the task first runs: a job.cancel read in
                # the same batch as the job.run must find it.
                self._jobs[start.job_id] = asyncio.Event()
                self._spawn(self._run_job(start))
        elif env.type == "job.cancel":
            job_id = str(env.body.get("job_id") or "")
            if job_id in self._jobs:
                self._jobs[job_id].set()
            else:
                self.state.forget_job(job_id)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_job(self, job: JobRun) -> None:
        cancel = self._jobs.setdefault(job.job_id, asyncio.Event())

        async def output(stream: str, data: str) -> None:
            await self.emit("job.output", {"job_id": job.job_id, "stream": stream, "data": data})

        async def started(pid: int) -> None:
            await self.emit(
                "job.started",
                {"job_id": job.job_id},
                job_process=(job.job_id, self.platform.process_identity(pid)),
            )

        try:
            outcome = await run_job(
                job,
                self.platform,
                output,
                started,
                cancel,
                {
                    "CRC_MACHINE": self.cred.machine,
                    "CRC_GROUP": self.cred.group,
                    "CRC_JOB_ID": job.job_id,
                    # `crc agent emit/progress/kv` in the job find this agent.
                    "CRC_AGENT_STATE_DIR": str(self.state.dir),
                },
            )
        finally:
            self._jobs.pop(job.job_id, None)
        await self.emit(
            "job.result",
            {
                "job_id": job.job_id,
                "status": outcome.status,
                "exit_code": outcome.exit_code,
                "reason": outcome.reason,
            },
            job_done=job.job_id,
        )

    async def _hosts_sync(self, job_id: str, body: dict[str, Any]) -> None:
        # Taken before the first await: tasks start in arrival order, and the lock
        # queues its waiters first come, first served.
        async with self._hosts_lock:
            await self._hosts_sync_locked(job_id, body)

    async def _hosts_sync_locked(self, job_id: str, body: dict[str, Any]) -> None:
        from .hosts_file import sync_hosts

        await self.emit("job.started", {"job_id": job_id})
        try:
            group = str(body["group"])
            by_ip: dict[str, list[str]] = {}
            for ip, name in body["entries"]:
                by_ip.setdefault(str(ip), []).extend([str(name), f"{name}.{group}"])
            entries = sorted(by_ip.items(), key=lambda e: e[1][0])
            path = self.platform.hosts_path()
            changed = await asyncio.to_thread(sync_hosts, path, entries, group)
        except (OSError, KeyError, TypeError, ValueError) as exc:
            await self.emit(
                "job.result",
                {
                    "job_id": job_id,
                    "status": "failed",
                    "exit_code": 1,
                    "reason": f"hosts file: {exc}",
                },
                job_done=job_id,
            )
            return
        lines = "".join(f"{ip} {' '.join(names)}\n" for ip, names in entries)
        await self.emit(
            "job.output",
            {
                "job_id": job_id,
                "stream": "stdout",
                "data": f"{path} {'updated' if changed else 'unchanged'}\n{lines}",
            },
        )
        await self.emit(
            "job.result",
            {"job_id": job_id, "status": "succeeded", "exit_code": 0, "reason": None},
            job_done=job_id,
        )

    async def _file_job(self, job_id: str, kind: str, body: dict[str, Any]) -> None:
        from .files import fetch_blob, upload_file

        await self.emit("job.started", {"job_id": job_id})
        ctx, _ = client_context(self.url, self.cred.fingerprint, self.cred.cert_pem)
        try:
            if kind == "file.put":
                summary = await asyncio.to_thread(
                    fetch_blob,
                    self.url,
                    self.cred.credential,
                    ctx,
                    str(body["sha256"]),
                    int(body["size"]),
                    str(body["path"]),
                    body.get("mode"),
                    body.get("owner"),
                )
            else:
                summary = await asyncio.to_thread(
                    upload_file, self.url, self.cred.credential, ctx, job_id, str(body["path"])
                )
        except (CrcError, OSError, KeyError, TypeError, ValueError) as exc:
            reason = exc.message if isinstance(exc, CrcError) else str(exc)
            await self.emit(
                "job.result",
                {"job_id": job_id, "status": "failed", "exit_code": 1, "reason": reason},
                job_done=job_id,
            )
            return
        await self.emit(
            "job.output", {"job_id": job_id, "stream": "stdout", "data": summary + "\n"}
        )
        await self.emit(
            "job.result",
            {"job_id": job_id, "status": "succeeded", "exit_code": 0, "reason": None},
            job_done=job_id,
        )

    async def roster(self) -> dict[str, Any]:
        """The group's roster, fetched from the server with this machine's credential."""
        return await asyncio.to_thread(self._get, "/v1/agent/roster")

    async def http(
        self, method: str, path: str, body: Any = None, timeout: float = 30
    ) -> dict[str, Any]:
        """Call the server's agent API with this machine's credential."""
        return await asyncio.to_thread(self._get, path, method, body, timeout)

    def _get(
        self, path: str, method: str = "GET", body: Any = None, timeout: float = 30
    ) -> dict[str, Any]:
        ctx, _ = client_context(self.url, self.cred.fingerprint, self.cred.cert_pem)
        return call_json(
            self.url.rstrip("/") + path,
            ctx,
            method=method,
            body=body,
            credential=self.cred.credential,
            timeout=timeout,
        )

    async def wait_message(self, type: str, sender: str | None, timeout: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            arrived = self.message_arrived
            msg = self.state.take_message(type, sender)
            if msg is not None:
                return msg
            left = deadline - loop.time()
            if left <= 0:
                raise Unavailable(f"no {type} message within {timeout:g} s", code="timeout")
            try:
                await asyncio.wait_for(arrived.wait(), left)
            except asyncio.TimeoutError:
                pass

    # -- local commands (from scripts on the machine) ------------------------------------
    async def say_ready(self) -> None:
        if self.state.get("ready") != "1":
            self.state.put("ready", "1")
        await self.emit("system.ready", {})


def load_or_enroll(
    state: AgentState, url: str | None, key: str | None, fingerprint: str | None
) -> Credential:
    cred = state.load_credential()
    if cred is not None:
        return cred
    if not url or not key:
        raise KeyRejected(
            "this machine is not enrolled yet: give --url and --key (the "
            "single-use key from `crc group create`)"
        )
    return enroll(state, url, key, fingerprint)
