"""The agent: enroll once, then hold one outbound WebSocket to the server for ever.

Reconnects use exponential backoff with full jitter (AWS architecture blog, "Exponential
Backoff And Jitter"), so a thousand agents cut off by a server restart do not return in
one wave. Everything the agent sends is first written to its outbox (state.py) and
replayed after each reconnect until the server acknowledges it.

What arrives is decoded by the catalogue (``protocol/frames.py``, ``protocol/messages.py``)
and handled by one method per frame and per message type; the delivery rules (dedupe,
gaps, resync, poison messages) are ``protocol/delivery.py``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import sqlite3
import ssl
from typing import TYPE_CHECKING, Any, TypeVar

from .. import __version__, keepalive
from ..errors import CrcError, InvalidInput, KeyRejected, Unavailable
from ..protocol.delivery import Receipt, Verdict
from ..protocol.frames import (
    FEATURE_ACK,
    FEATURE_FOLD,
    FEATURES,
    Ack,
    ErrorFrame,
    Hello,
    Msg,
    Welcome,
    read_frame,
    write_frame,
)
from ..protocol.frames import Revoked as RevokedFrame
from ..protocol.limits import (
    AGENT_PING_SECONDS,
    HEARTBEAT_SECONDS,
    MAX_FRAME_BYTES,
    MAX_OUTPUT_CHUNK_BYTES,
    MAX_OUTPUT_KEPT_BYTES,
)
from ..protocol.messages import (
    JOB_ID,
    JOB_KINDS,
    MAX_FOLDED_CHUNKS,
    Envelope,
    Facts,
    FileGet,
    FilePut,
    HostsSync,
    JobCancel,
    JobOutput,
    JobResult,
    JobRun,
    JobStarted,
    MessageFailed,
    Progress,
    SystemReady,
    UserMessage,
    decode_message,
)
from ..protocol.streams import StreamOpen, StreamRequest
from ..protocol.wire import Dispatcher, Frame, Message, Side
from ..tlspin import check_base_url, check_pin_applies, client_context, normalize_fingerprint
from .deferred import proxy_option
from .http import call_json
from .platform import Platform, current
from .runner import run_job
from .state import AgentState, Credential
from .threads import in_daemon_thread

if TYPE_CHECKING:
    from collections.abc import Callable

    from .streams import StreamServer

__all__ = ["Agent", "Revoked", "TryLater", "enroll", "parse_retry_after", "retry_delay"]

log = logging.getLogger("crc.agent")
_T = TypeVar("_T")

STORE_RETRY_SECONDS = 5.0  # at most, between attempts to store a message on a full disk
FOLD_SECONDS = 0.2  # a job that ends this soon after it started is reported in one message
FOLD_MAX_BYTES = 32 << 10  # ... with at most this much output
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
OPEN_TIMEOUT = 60.0  # seconds for TCP, TLS and the WebSocket upgrade
RETRY_AFTER_MAX = 300  # seconds: a server's Retry-After beyond this is taken as this
FACTS_SECONDS = 30.0


class TryLater(Unavailable):
    """The server turned the connection away for now and said when to come back
    (``Retry-After``, seconds)."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


_JITTER = random.Random()  # noqa: S311 -- backoff jitter, not cryptography


def parse_retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` header's delay in seconds (``delta-seconds`` only; an HTTP date
    or anything else is ignored: None), at most ``RETRY_AFTER_MAX``."""
    text = (value or "").strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 6:  # "²" is a digit, no int
        return None
    return float(min(int(text), RETRY_AFTER_MAX))


def retry_delay(retry_after: float) -> float:
    """How long to wait when told ``Retry-After``: at least that, plus up to a quarter of
    it more (one second at least), at random."""
    return retry_after + _JITTER.uniform(0, max(1.0, retry_after / 4))


class Revoked(CrcError):
    """The server revoked this machine; ``uninstall``: its group asked the agent to
    remove its service too (``uninstall_on_delete``)."""

    code = "revoked"
    exit_code = 0

    def __init__(self, message: str, uninstall: bool = False) -> None:
        super().__init__(message)
        self.uninstall = uninstall


SAID_CHARS = 200  # of a server's reason in a log line


def _server_said(frame: ErrorFrame) -> str:
    """The reason an ``error`` frame gives (or its error's message, or code), as one
    bounded log line: the server's text is not trusted to be short or printable."""
    said: object = frame.reason or frame.error.get("message") or frame.error.get("code")
    text = said if isinstance(said, str) and said.strip() else "no reason given"
    shown = "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
        for c in text[:SAID_CHARS]
    )
    return shown + ("…" if len(text) > SAID_CHARS else "")


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
    for one in urls:  # refused here, before the nonce, is refused with nothing kept
        check_base_url(one)  # the server's address: a path would take the key elsewhere
        check_pin_applies(one, fingerprint)
    if fingerprint:
        normalize_fingerprint(fingerprint)
    # Kept before the key is presented: if this process dies before it saves the
    # credential, or the answer is lost, the next attempt with the same key and nonce
    # gets a new credential instead of "key already used".
    nonce = state.enroll_nonce()
    for i, one in enumerate(urls):
        try:
            cred, off = _enroll_once(one, key, fingerprint, nonce)
        except Unavailable:
            if i == len(urls) - 1:
                raise
            continue
        cred.url = url
        cred.streams_off = off  # the group's opt-outs, enforced by this agent for good
        state.save_credential(cred)
        return cred
    raise Unavailable("no server URL given")  # unreachable: split_urls refuses empty lists


def _enroll_once(
    url: str, key: str, fingerprint: str | None, nonce: str
) -> tuple[Credential, list[str]]:
    ctx, pem = client_context(url, fingerprint)
    endpoint = "/v1/agent/enroll"
    try:
        data = call_json(url, endpoint, ctx, method="POST", body={"key": key, "nonce": nonce})
    except InvalidInput as exc:
        if not exc.message.startswith("invalid nonce"):
            raise
        # A server older than the nonce refuses the field: enroll as before.
        data = call_json(url, endpoint, ctx, method="POST", body={"key": key})
    if not all(
        isinstance(data.get(k), str) and data[k] for k in ("credential", "machine", "group")
    ):
        raise Unavailable(
            f"{url} is not a CloudRemoteControl server: its answer to the enrollment "
            "carries no credential; check the URL",
            code="not_crc_server",
        )
    off = data.get("streams_off")
    off = [k for k in ("shell", "forward") if isinstance(off, list) and k in off]
    return Credential(
        url=url,
        credential=data["credential"],
        machine=data["machine"],
        group=data["group"],
        fingerprint=fingerprint,
        cert_pem=pem,
    ), off


class Agent:
    def __init__(
        self,
        state: AgentState,
        cred: Credential,
        platform: Platform | None = None,
        gate_ready: bool = False,
        follow_logs: tuple[str, ...] = (),
        facts_interval: float = FACTS_SECONDS,
        fold_seconds: float = FOLD_SECONDS,
    ) -> None:
        self.follow_logs = follow_logs
        self.facts_interval = facts_interval
        #: How long a job may run and still be reported in one message (``job.fold``).
        self.fold_seconds = fold_seconds
        self.urls = split_urls(cred.url)
        self._url_index = 0
        self.state = state
        self.cred = cred
        self.platform = platform or current()
        self.gate_ready = gate_ready
        self.inbox = state.inbox
        self._ws: Any = None
        #: What the server said it applies in its welcome (``job.fold``...).
        self.server_features: frozenset[str] = frozenset()
        self._ack_pending: int | None = None  # msg.ack: processed, not yet acknowledged
        self._ack_timer: asyncio.Task[None] | None = None
        self._jobs: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.connected = asyncio.Event()
        self._send_lock = asyncio.Lock()
        # Hosts syncs write one file: one at a time, in the order they arrived (the
        # server's order), so the newest roster is the one left in the file.
        self._hosts_lock = asyncio.Lock()
        self.message_arrived = asyncio.Event()
        self._handing_out: set[int] = set()  # user messages sent to a waiting script
        self.stopping = asyncio.Event()
        # Built when the first shell or forward opens: an idle agent never loads its
        # stream code (agent/streams.py, relay.py).
        self._stream_server: StreamServer | None = None
        # One handler per frame and per message type the server sends (the catalogue
        # refuses to start the agent if one is missing).
        self._frames: Dispatcher[Any] = Dispatcher(
            Side.AGENT,
            Frame,
            {
                Welcome: self._on_welcome,
                Msg: self._on_msg,
                Ack: self._on_ack,
                RevokedFrame: self._on_revoked,
                ErrorFrame: self._on_error,
                StreamOpen: self._on_stream_open,
            },
        )
        self._messages: Dispatcher[Any] = Dispatcher(
            Side.AGENT,
            Message,
            {
                JobRun: self._on_job_run,
                JobCancel: self._on_job_cancel,
                HostsSync: self._on_hosts_sync,
                FilePut: self._on_file_job,
                FileGet: self._on_file_job,
                UserMessage: self._on_user_message,
                StreamRequest: self._on_stream_request,
            },
        )

    # -- sending ------------------------------------------------------------------------
    async def send(
        self,
        message: Message,
        to: str = "master",
        correlation_id: str | None = None,
        job_done: str | None = None,
        job_process: tuple[str, str | None] | None = None,
    ) -> int:
        """Persist a message, then send it if connected (else it goes after reconnect);
        return its number. ``job_done`` / ``job_process`` are recorded in the same
        transaction (AgentState)."""
        seq = await self._send(message, to, correlation_id, job_done, job_process, None)
        assert seq is not None
        return seq

    async def send_once(self, message: Message, request_id: str | None, to: str = "master") -> bool:
        """``send`` for a control request (``crc agent emit``, ``progress``): with
        ``request_id``, the request is recorded in the message's transaction, and one
        already recorded sends nothing (False): it was sent by this agent or one before
        it that went away before it answered (agent/control.py)."""
        if request_id is None:
            await self.send(message, to)
            return True
        return await self._send(message, to, None, None, None, request_id) is not None

    async def _send(
        self,
        message: Message,
        to: str,
        correlation_id: str | None,
        job_done: str | None,
        job_process: tuple[str, str | None] | None,
        request_id: str | None,
    ) -> int | None:
        env = Envelope.of(message, self.cred.group, self.cred.machine, to, correlation_id)
        # One lock keeps frames on the wire in sequence order whatever task sends them
        # (and makes looking up a request id and recording it one step).
        async with self._send_lock:
            if request_id is not None and self.state.request_reply(request_id) is not None:
                return None
            seq, frame = await self._store(env, job_done, job_process, request_id)
            if self._ack_pending is not None and self._ws is not None:
                # msg.ack: the deferred ack rides on this message (kept without it: a
                # replay after a reconnect needs none, the hello says what was processed).
                frame = write_frame(Msg(seq=seq, msg=env.to_dict(), ack=self._ack_pending))
                self._ack_pending = None
            await self._transmit(frame)
        return seq

    async def _store(
        self,
        env: Envelope,
        job_done: str | None,
        job_process: tuple[str, str | None] | None,
        request_id: str | None = None,
    ) -> tuple[int, str]:
        """``AgentState.enqueue``, through ``until_written``."""
        return await self.until_written(
            lambda: self.state.enqueue(
                env, job_done=job_done, job_process=job_process, request_id=request_id
            )
        )

    async def until_written(self, write: Callable[[], _T], what: str = "a message") -> _T:
        """``write`` (a write to the state database), tried again until it works when the
        state directory's disk is full (or the database cannot be written for a while):
        the message waits, and so does what sends it (a job's output backs up into its
        pipes), rather than be lost - a job's result with it, which left the job running
        for ever. ``what`` names the record in the log."""
        delay = 0.25
        failed = False
        while True:
            try:
                written = write()
            except sqlite3.OperationalError as exc:
                if not failed:
                    log.warning(
                        "cannot store %s in %s (%s): waiting until it can be written",
                        what,
                        self.state.dir,
                        exc,
                    )
                failed = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, STORE_RETRY_SECONDS)
                continue
            if failed:
                log.info("the state database in %s can be written again", self.state.dir)
            return written

    async def emit(
        self, type: object, body: object, to: str = "master", request_id: str | None = None
    ) -> None:
        """Send a user message (``user.NAME``) from a script on the machine: checked here
        as the server will (a body nested too deep or too large is refused now).
        ``request_id``: see ``send_once``."""
        await self.send_once(UserMessage.make(type, body), request_id, to=to)

    async def _transmit(self, frame: str) -> None:
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.send(frame)

    async def _job_ended(
        self, job_id: str, status: str, exit_code: int | None, reason: str | None
    ) -> None:
        """Report how a job ended and record it done in the same transaction."""
        await self.send(_job_result(job_id, status, exit_code, reason), job_done=job_id)

    async def _output(self, job_id: str, stream: str, text: str) -> None:
        """Send a job's output in chunks the catalogue accepts (``job.output``)."""
        step = MAX_OUTPUT_CHUNK_BYTES // 4  # characters: at most 4 bytes each in UTF-8
        for i in range(0, len(text), step):
            await self.send(JobOutput(job_id, stream, text[i : i + step]))

    # -- lifecycle ----------------------------------------------------------------------
    async def run(self) -> None:
        """Run until revoked (raises Revoked) or cancelled."""
        for job_id, proc in self.state.interrupted_jobs():
            reason = (
                "the agent stopped (crash, kill or reboot) while the job was running; not re-run"
            )
            # A scan of the machine's processes: off the event loop.
            killed = await asyncio.to_thread(self.platform.kill_leftovers, proc) if proc else 0
            if killed:
                reason += f"; {killed} process(es) it left running were killed"
                log.warning(
                    "job %s: killed %d process(es) left running by the previous agent",
                    job_id,
                    killed,
                )
            await self._job_ended(job_id, "lost", None, reason)
        # Facts before SystemReady: a machine that reads ``ready`` has its facts known.
        await self._send_facts()
        if not self.gate_ready and self.state.get("ready") != "1":
            await self.say_ready()
        self._spawn(self._refresh_facts())
        for path in self.follow_logs:
            self._spawn(self._follow(path))
        attempt = 0
        try:
            while True:
                delay: float | None = None
                try:
                    await self._session()
                    attempt = 0
                except Revoked:
                    raise
                except TryLater as exc:
                    # The server is up and busy, and said when: that, plus jitter, so
                    # the agents it turned away together do not return together.
                    delay = retry_delay(exc.retry_after)
                    log.warning(
                        "connection to %s failed: %s; retrying in %.1f s", self.url, exc, delay
                    )
                except (OSError, CrcError, asyncio.TimeoutError, ssl.SSLError) as exc:
                    log.warning("connection to %s failed: %s", self.url, exc)
                    self._next_url()
                except Exception as exc:  # noqa: BLE001 -- websockets raises many kinds
                    log.warning("connection to %s lost: %s", self.url, exc)
                    self._next_url()
                self.connected.clear()
                if delay is None:
                    attempt += 1
                    delay = _JITTER.uniform(0, min(BACKOFF_MAX, BACKOFF_MIN * 2**attempt))
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
            await self.send(Progress(text=text, percent=None, source=path))

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

        facts = Facts.from_body(await asyncio.to_thread(collect_facts, __version__))
        for problem in facts.rejected:
            log.warning("fact not reported: %s", problem)
        body = facts.to_body()
        old = self.state.get("facts")
        if facts_changed(json.loads(old) if old else None, body):
            self.state.put("facts", json.dumps(body))
            await self.send(facts)

    def hello(self) -> Hello:
        """The first frame of a connection: where this agent resumes, both ways."""
        return Hello(
            ack=self.inbox.processed,
            resume_from=self.state.resume_from(),
            agent_version=__version__,
            ready=self._ready_delivered(),
            features=FEATURES,
        )

    def welcomed(self, welcome: Welcome) -> list[str]:
        """Apply the server's welcome (its ack, where it resumes); return the frames to
        send again, in order."""
        with self.state.transaction():
            resync = self.state.outbox.peer_acked(welcome.ack)
            lost = self.inbox.resume(welcome.resume_from)
        if resync is not None:
            log.warning(
                "the server acknowledged %d but this agent sent only up to %d (its database "
                "was restored?): %d message(s) renumbered after it",
                resync.peer_ack,
                resync.last,
                resync.renumbered,
            )
        if lost:
            log.warning(
                "%d message(s) from the server were acknowledged by an older state of this "
                "agent and are not sent again (its state directory was restored?)",
                lost,
            )
        return [frame for _, frame in self.state.frames_after(welcome.ack)]

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
                **proxy_option(),
                # As long as the server lets a connection wait for its TLS handshake
                # (server/handshakes.py): a server that restarted takes the whole
                # fleet's handshakes in turn, and one given up and tried again costs
                # it the wait again (the server drops the one given up, unhandshaken).
                open_timeout=OPEN_TIMEOUT,
                # TCP keepalive notices a vanished server (keepalive.py); the pings are
                # for one whose kernel answers and whose process does not.
                ping_interval=AGENT_PING_SECONDS,
                ping_timeout=HEARTBEAT_SECONDS,
                user_agent_header=f"crc-agent/{__version__}",
            ) as ws:
                keepalive.enable(ws.transport.get_extra_info("socket"))
                hello = self.hello()
                await ws.send(write_frame(hello))
                first = read_frame(await asyncio.wait_for(ws.recv(), 20))
                if isinstance(first, RevokedFrame):
                    raise Revoked(first.reason)
                if isinstance(first, ErrorFrame):  # refused, and why (a database outage)
                    raise Unavailable(f"the server answered 'error': {_server_said(first)}")
                if not isinstance(first, Welcome):
                    raise InvalidInput(f"unexpected first frame {first.TYPE!r}")
                self.server_features = frozenset(first.features or ())
                self._ack_pending = None  # the hello said what was processed
                async with self._send_lock:
                    for frame in self.welcomed(first):
                        await ws.send(frame)
                    self._ws = ws
                if not hello.ready and self._ready_delivered():
                    # The server had the system.ready, but this agent stopped before its
                    # ack came: the welcome acknowledged it, so it is not sent again and
                    # the hello said "not ready". Said again, the machine is ready now
                    # rather than at the next connection.
                    await self.say_ready()
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
            status = exc.response.status_code
            message = f"server refused the connection: HTTP {status}"
            retry_after = parse_retry_after(exc.response.headers.get("Retry-After"))
            if status in (429, 503) and retry_after is not None:
                raise TryLater(message, retry_after) from None
            raise Unavailable(message) from None

    # -- receiving: one handler per frame ----------------------------------------------
    async def _on_frame(self, ws: Any, text: str | bytes) -> None:
        try:
            frame = read_frame(text)
            handler = self._frames[frame]
        except CrcError as exc:
            log.warning("ignoring a malformed frame: %s", exc.message)
            return
        await handler(ws, frame)

    async def _on_welcome(self, ws: Any, frame: Welcome) -> None:
        log.warning("ignoring a second welcome frame")

    async def _on_ack(self, ws: Any, frame: Ack) -> None:
        try:
            self.state.acked(frame.seq)
        except CrcError as exc:
            log.warning("ignoring an ack: %s", exc.message)

    async def _on_revoked(self, ws: Any, frame: RevokedFrame) -> None:
        raise Revoked(frame.reason, uninstall=frame.uninstall is True)

    async def _on_error(self, ws: Any, frame: ErrorFrame) -> None:
        log.warning("server reported: %s", frame.error)

    async def _on_stream_open(self, ws: Any, frame: StreamOpen) -> None:
        self._streams().open(frame)  # agent/streams.py: its own WebSocket

    async def _on_msg(self, ws: Any, frame: Msg) -> None:
        """One numbered message: the delivery core's rules (dedupe, gaps, poison), then
        the message's handler. A message that cannot be used is given up (a dead letter)
        and the stream goes on; one whose handling fails is tried again after a
        reconnect, and given up after ``MAX_ATTEMPTS`` (crashes included)."""
        seq = frame.seq
        receipt = self.inbox.receive(seq)
        if receipt is Receipt.DUPLICATE:
            await self._ack_now(ws, seq)
            return
        if receipt is Receipt.GAP:
            raise Unavailable(f"message gap at {seq}: reconnecting to resume")
        if receipt is Receipt.DEAD:
            attempts = self.inbox.max_attempts
            await self._give_up(ws, seq, frame.msg, f"failed {attempts} times", attempts)
            return
        self.inbox.begin(seq)
        try:
            env = Envelope.from_dict(frame.msg)
            message = decode_message(env, Side.AGENT)
        except CrcError as exc:
            await self._give_up(ws, seq, frame.msg, exc.message, 1)
            return
        try:
            await self._messages[message](ws, seq, message, env)
        except (Revoked, asyncio.CancelledError):
            raise
        except Exception as exc:  # any failure of a handler: retry, then give up
            verdict = self.inbox.failed(seq)
            if verdict is Verdict.DONE:
                log.warning("message %d was processed, then failed: %r", seq, exc)
                raise
            if verdict is Verdict.DEAD:
                attempts = self.inbox.max_attempts
                reason = f"failed {attempts} times, last: {exc!r}"
                await self._give_up(ws, seq, frame.msg, reason, attempts)
                return
            raise Unavailable(
                f"message {seq} failed ({exc!r}): retrying after a reconnect"
            ) from None

    async def _give_up(
        self, ws: Any, seq: int, raw: dict[str, Any], reason: str, attempts: int
    ) -> None:
        """Message ``seq`` is processed with no effect, kept as a dead letter, reported
        to the server (``message.failed``; a job it carried ends ``failed``), and acked."""
        kind = raw.get("type")
        kind = kind[:256] if isinstance(kind, str) and kind else "?"
        message_id = raw.get("id") if isinstance(raw.get("id"), str) else None
        reports: list[Message] = [
            MessageFailed(seq=seq, type=kind, reason=reason[:500], id=message_id, attempts=attempts)
        ]
        job_id = _job_id_of(raw) if kind in JOB_KINDS else None
        if job_id is not None:
            why = f"the machine could not use this job: {reason}"[:500]
            reports.append(_job_result(job_id, "failed", None, why))
        envs = [
            Envelope.of(r, self.cred.group, self.cred.machine, "master", job_id) for r in reports
        ]
        log.warning("giving up message %d (%s): %s", seq, kind, reason)
        async with self._send_lock:
            frames = self.state.dead_letter(
                seq, kind, message_id, reason, attempts, envs, job_id=job_id
            )
            for frame in frames:
                await self._transmit(frame)
        await self._ack_now(ws, seq)

    async def _ack_now(self, ws: Any, seq: int) -> None:
        """An ``ack`` frame for ``seq`` at once; acks are cumulative, so a deferred one it
        covers is not sent after it (it would release nothing, and cost a frame)."""
        if self._ack_pending is not None and self._ack_pending <= seq:
            self._ack_pending = None
        await ws.send(write_frame(Ack(seq=seq)))

    async def _processed(
        self,
        ws: Any,
        seq: int,
        start_job: str | None = None,
        message: Envelope | None = None,
    ) -> bool:
        """Record message ``seq`` processed (see ``AgentState.mark_processed``) and ack it;
        False for a job seen before (do not run it again)."""
        fresh = self.state.mark_processed(seq, start_job=start_job, message=message)
        if FEATURE_ACK in self.server_features:
            self._defer_ack(seq)
        else:
            await ws.send(write_frame(Ack(seq=seq)))
        return fresh

    def _defer_ack(self, seq: int) -> None:
        """``msg.ack``: the next message sent carries the ack (a job's result, say); if
        none goes within ``fold_seconds``, an ``ack`` frame does."""
        self._ack_pending = max(seq, self._ack_pending or 0)
        if self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().create_task(self._ack_later())
            self._tasks.add(self._ack_timer)
            self._ack_timer.add_done_callback(self._tasks.discard)

    async def _ack_later(self) -> None:
        try:
            await asyncio.sleep(self.fold_seconds)
            async with self._send_lock:
                pending, self._ack_pending = self._ack_pending, None
                ws = self._ws
                if pending is not None and ws is not None:
                    with contextlib.suppress(Exception):
                        await ws.send(write_frame(Ack(seq=pending)))
        finally:
            self._ack_timer = None

    # -- receiving: one handler per message type ---------------------------------------
    async def _on_job_run(self, ws: Any, seq: int, job: JobRun, env: Envelope) -> None:
        if await self._processed(ws, seq, start_job=job.job_id):
            # Registered now, not when the task first runs: a job.cancel read in the
            # same batch as the job.run must find it.
            self._jobs[job.job_id] = asyncio.Event()
            self._spawn(self._run_job(job))

    async def _on_job_cancel(self, ws: Any, seq: int, cancel: JobCancel, env: Envelope) -> None:
        await self._processed(ws, seq)
        if cancel.job_id in self._jobs:
            self._jobs[cancel.job_id].set()
        else:
            self.state.forget_job(cancel.job_id)

    async def _on_hosts_sync(self, ws: Any, seq: int, sync: HostsSync, env: Envelope) -> None:
        if await self._processed(ws, seq, start_job=sync.job_id):
            self._spawn(self._hosts_sync(sync))

    async def _on_file_job(self, ws: Any, seq: int, job: FilePut | FileGet, env: Envelope) -> None:
        if await self._processed(ws, seq, start_job=job.job_id):
            # Cancellable: a read or write of a file on a hung mount may never return.
            self._jobs[job.job_id] = asyncio.Event()
            self._spawn(self._file_job(job))

    async def _on_user_message(
        self, ws: Any, seq: int, message: UserMessage, env: Envelope
    ) -> None:
        await self._processed(ws, seq, message=env)
        self.message_arrived.set()
        self.message_arrived = asyncio.Event()

    async def _on_stream_request(
        self, ws: Any, seq: int, request: StreamRequest, env: Envelope
    ) -> None:
        if await self._processed(ws, seq):
            self._streams().open(request.to_open(), request.url)  # via another replica

    def _streams(self) -> StreamServer:
        if self._stream_server is None:
            from .streams import StreamServer

            self._stream_server = StreamServer(self)
        return self._stream_server

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- jobs ---------------------------------------------------------------------------
    async def _run_job(self, job: JobRun) -> None:
        cancel = self._jobs.setdefault(job.job_id, asyncio.Event())
        report = _Report(self, job.job_id, FEATURE_FOLD in self.server_features)
        try:
            outcome = await run_job(
                job,
                self.platform,
                report.output,
                report.started,
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
        await report.ended(outcome.status, outcome.exit_code, outcome.reason)

    async def _hosts_sync(self, sync: HostsSync) -> None:
        # Taken before the first await: tasks start in arrival order, and the lock
        # queues its waiters first come, first served.
        async with self._hosts_lock:
            await self._hosts_sync_locked(sync)

    async def _hosts_sync_locked(self, sync: HostsSync) -> None:
        from .hosts_file import failure, sync_hosts

        await self.send(JobStarted(sync.job_id))
        by_ip: dict[str, list[str]] = {}
        for ip, name in sync.entries:
            by_ip.setdefault(ip, []).extend([name, f"{name}.{sync.group}"])
        entries = sorted(by_ip.items(), key=lambda e: e[1][0])
        path = self.platform.hosts_path()
        try:
            # The hosts writer checks every line again, whatever the server sent.
            changed = await asyncio.to_thread(sync_hosts, path, entries, sync.group)
        except OSError as exc:  # named as the hosts file, never its temporary file
            await self._job_ended(sync.job_id, "failed", 1, failure(path, exc))
            return
        except ValueError as exc:
            await self._job_ended(sync.job_id, "failed", 1, f"hosts file: {exc}")
            return
        lines = "".join(f"{ip} {' '.join(names)}\n" for ip, names in entries)
        await self._output(
            sync.job_id, "stdout", f"{path} {'updated' if changed else 'unchanged'}\n{lines}"
        )
        await self._job_ended(sync.job_id, "succeeded", 0, None)

    async def _file_job(self, job: FilePut | FileGet) -> None:
        try:
            await self.send(JobStarted(job.job_id))
            await self._transfer(job)
        finally:
            self._jobs.pop(job.job_id, None)  # its cancel (_on_file_job), however it ends

    async def _transfer(self, job: FilePut | FileGet) -> None:
        """Run a push's download or a pull's upload, and report how it ended."""
        import functools

        from .files import fetch_blob, upload_file

        def where() -> tuple[str, ssl.SSLContext | None]:
            """The server this agent is connected to now (it moves to the next of its
            URLs when one stops answering): a transfer cut by that goes on there."""
            url = self.url
            return url, client_context(url, self.cred.fingerprint, self.cred.cert_pem)[0]

        credential = self.cred.credential
        summary: str | None  # None: the transfer was cancelled
        try:
            if isinstance(job, FilePut):
                summary = await self._cancellable(
                    job.job_id,
                    functools.partial(fetch_blob, new_mode=job.new_mode, name=job.name),
                    where,
                    credential,
                    job.sha256,
                    job.size,
                    job.path,
                    job.mode,
                    job.owner,
                )
            else:
                summary = await self._cancellable(
                    job.job_id, upload_file, where, credential, job.job_id, job.path
                )
        except Exception as exc:  # noqa: BLE001 -- every failure ends the job, reported
            # Anything unforeseen too: a transfer that ends without a result leaves the
            # user's crc push or pull waiting for it.
            if isinstance(exc, CrcError):
                reason = exc.message
            elif isinstance(exc, (OSError, ValueError)):
                reason = str(exc)
            else:
                reason = f"transfer failed: {type(exc).__name__}: {exc}"
            await self._job_ended(job.job_id, "failed", 1, reason)
            return
        if summary is None:
            await self._job_ended(job.job_id, "cancelled", None, "cancelled by the master")
            return
        await self._output(job.job_id, "stdout", summary + "\n")
        await self._job_ended(job.job_id, "succeeded", 0, None)

    async def _cancellable(
        self, job_id: str, transfer_fn: Callable[..., str], *args: Any
    ) -> str | None:
        """``transfer_fn(*args, time.sleep, stopped)`` (a push's ``fetch_blob`` or a
        pull's ``upload_file``: its summary), or None once the master cancelled job
        ``job_id``. A file whose reads or writes wait for ever (a hung network mount, a
        kernel file that answers when it has something) holds the thread that reaches
        it, never the event loop: a thread of its own, a daemon, not one of the loop's
        executor that other work needs and that the agent's exit waits for. A cancel
        stops the transfer at its next read, write or attempt (a push's partial file
        removed, its destination left as it was); a call that never returns holds its
        thread (the server takes no upload for a pull that ended)."""
        import threading
        import time

        cancel = self._jobs.setdefault(job_id, asyncio.Event())
        if cancel.is_set():  # cancelled as it was starting: nothing read or written
            return None
        stop = threading.Event()
        transfer = in_daemon_thread(transfer_fn, *args, time.sleep, stop.is_set)
        cancelled = asyncio.ensure_future(cancel.wait())
        try:
            await asyncio.wait((transfer, cancelled), return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancelled.cancel()
            if not transfer.done():  # cancelled, or the agent is stopping
                if cancel.is_set():
                    # The master's cancel: the transfer stops at its next read, write
                    # or attempt. The agent stopping is no cancel: a push keeps its
                    # partial file, to resume (the daemon thread ends with the process).
                    stop.set()
                transfer.cancel()  # a call that never returns: its thread is let be
        if transfer.cancelled():
            return None
        return transfer.result()

    async def roster(self, timeout: float = 30) -> dict[str, Any]:
        """The group's roster, fetched from the server with this machine's credential."""
        return await asyncio.to_thread(self._get, "/v1/agent/roster", "GET", None, timeout)

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
            self.url,
            path,
            ctx,
            method=method,
            body=body,
            credential=self.cred.credential,
            timeout=timeout,
        )

    async def wait_message(
        self, type: str, sender: str | None, timeout: float
    ) -> tuple[int, dict[str, Any]]:
        """The oldest user message of ``type`` (from ``sender``) not being handed out,
        as ``(number, envelope)``, reserved for the caller: it then calls
        ``message_taken`` once the waiting script has it, or ``message_released`` (the
        script is gone: the message goes to the next waiter)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            arrived = self.message_arrived
            found = self.state.peek_message(type, sender, self._handing_out)
            if found is not None:
                self._handing_out.add(found[0])
                return found
            left = deadline - loop.time()
            if left <= 0:
                raise Unavailable(f"no {type} message within {timeout:g} s", code="timeout")
            try:
                await asyncio.wait_for(arrived.wait(), left)
            except asyncio.TimeoutError:
                pass

    def message_taken(self, n: int) -> None:
        """The waiting script has message ``n``: it is consumed. If the state database
        cannot be written now (a full disk), the message stays reserved, handed to no
        other waiter, until its consumption is written."""
        try:
            self.state.consume_message(n)
        except sqlite3.OperationalError:
            self._spawn(self._consume_later(n))
            return
        self._handing_out.discard(n)

    async def _consume_later(self, n: int) -> None:
        try:
            await self.until_written(
                lambda: self.state.consume_message(n), "a message's 'taken' mark"
            )
        finally:  # written, or never will be by this agent (it stops): not reserved
            self._handing_out.discard(n)

    def message_released(self, n: int) -> None:
        self._handing_out.discard(n)
        self.message_arrived.set()  # another waiter may take it
        self.message_arrived = asyncio.Event()

    # -- local commands (from scripts on the machine) ------------------------------------
    async def say_ready(self) -> None:
        """Send ``system.ready``; the state records the machine ready with it."""
        await self.send(SystemReady())

    def _ready_delivered(self) -> bool:
        """Ready, and the server has the ``system.ready`` saying so: only then does the
        hello say ``ready``. One still waiting in the outbox goes after what was sent
        before it (the facts), so the machine is not shown ready before they are known."""
        if self.state.get("ready") != "1":
            return False
        seq = self.state.get("ready_seq")
        return seq is None or int(seq) < self.state.resume_from()


class _Report:
    """How one job is reported. Without ``fold``: a ``job.started`` once its process
    runs, then ``job.output`` chunks, then the ``job.result``. With ``fold`` (the server
    applies ``job.fold``), a job that ends within ``Agent.fold_seconds`` with at most
    ``FOLD_MAX_BYTES`` of output is one ``job.result`` carrying its output; past either
    bound the start notice and the output held so far go out, and the rest streams as
    without. The process is recorded at once either way (crash recovery kills it).

    Output past what the server keeps (``MAX_OUTPUT_KEPT_BYTES``, both streams) is
    read and dropped here: the first chunk across the limit still goes, so that the
    server marks the output truncated. A job writing gigabytes would otherwise fill the
    outbox, and the machine's disk while the server cannot be reached, with what the
    server throws away."""

    def __init__(self, agent: Agent, job_id: str, fold: bool) -> None:
        self.agent, self.job_id = agent, job_id
        self.streaming = not fold
        self.held: list[tuple[str, str]] = []
        self.held_bytes = 0
        self.sent_bytes = 0  # output taken so far (held or sent), UTF-8 bytes
        self.lock = asyncio.Lock()
        self.timer: asyncio.Task[None] | None = None
        self.process_started = False

    async def started(self, pid: int) -> None:
        self.process_started = True
        process = (self.job_id, self.agent.platform.process_identity(pid))
        if self.streaming:
            await self.agent.send(JobStarted(self.job_id), job_process=process)
            return
        await self.agent.until_written(
            lambda: self.agent.state.record_job_process(*process), "a job's process"
        )
        self.timer = asyncio.get_running_loop().create_task(self._window())

    async def _window(self) -> None:
        await asyncio.sleep(self.agent.fold_seconds)
        async with self.lock:
            await self._stream()

    async def _stream(self) -> None:
        """Leave folding (the lock held): the start notice, then what was held."""
        if self.streaming:
            return
        self.streaming = True
        await self.agent.send(JobStarted(self.job_id))
        for stream, data in self.held:
            await self.agent.send(JobOutput(self.job_id, stream, data))
        self.held.clear()

    async def output(self, stream: str, data: str) -> None:
        if self.sent_bytes > MAX_OUTPUT_KEPT_BYTES:
            return  # the server keeps no more of it (its marker says so)
        self.sent_bytes += len(data.encode())
        async with self.lock:
            if self.streaming:
                await self.agent.send(JobOutput(self.job_id, stream, data))
                return
            self.held.append((stream, data))
            self.held_bytes += len(data.encode())
            if self.held_bytes > FOLD_MAX_BYTES or len(self.held) >= MAX_FOLDED_CHUNKS:
                await self._stream()

    async def ended(self, status: str, exit_code: int | None, reason: str | None) -> None:
        async with self.lock:
            if self.timer is not None:  # asleep or waiting for the lock: never mid-send
                self.timer.cancel()
            if self.streaming:
                await self.agent._job_ended(self.job_id, status, exit_code, reason)
                return
            result = dataclasses.replace(
                _job_result(self.job_id, status, exit_code, reason),
                started=True if self.process_started else None,
                output=tuple(self.held) if self.held else None,
            )
            await self.agent.send(result, job_done=self.job_id)


def _job_result(job_id: str, status: str, exit_code: int | None, reason: str | None) -> JobResult:
    """The one place a ``job.result`` is made (sent by ``Agent._job_ended``, or queued
    with a dead letter for a job the agent could not use)."""
    return JobResult(job_id=job_id, status=status, exit_code=exit_code, reason=reason)


def _job_id_of(raw: dict[str, Any]) -> str | None:
    """The job id a message carries (its body's, else its correlation id), if usable."""
    body = raw.get("body")
    for candidate in (
        body.get("job_id") if isinstance(body, dict) else None,
        raw.get("correlation_id"),
    ):
        try:
            return JOB_ID.check(candidate, "job_id")
        except CrcError:
            continue
    return None


def load_or_enroll(
    state: AgentState, url: str | None, key: str | None, fingerprint: str | None
) -> Credential:
    cred = state.load_credential()
    if cred is not None:
        return cred
    for option, value in (("--url", url), ("--key", key)):
        if value is not None and not value.strip():  # given, but empty (an unset variable)
            raise InvalidInput(
                f"{option} is empty: give the server's URL (https://HOST:PORT) and the "
                "single-use key from `crc group create`"
            )
    if not url or not key:
        raise KeyRejected(
            "this machine is not enrolled yet: give --url and --key (the "
            "single-use key from `crc group create`)"
        )
    return enroll(state, url, key, fingerprint)
