"""The asyncio SDK: ``AsyncClient`` has the methods of ``Client`` (master/client.py),
as coroutines and async iterators, over ``httpx.AsyncClient``.

    from cloudremotecontrol import AsyncClient
    async with AsyncClient.from_profile() as crc:
        await crc.wait_ready("lab", timeout=600)
        async for event in crc.events("lab", follow=True):
            ...

What to send comes from ``calls.py`` and the waits' rules from ``waits.py``, shared
with the sync client; a test checks that both clients have the same methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import os
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Sequence,
)
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

import httpx

from ..errors import CrcError, InvalidInput, NotFound, TimedOut, Unavailable
from ..protocol.fields import check_push_path
from ..tlspin import client_context, is_untrusted, untrusted_error
from . import calls
from .calls import (
    KEEPALIVE,
    RESUME_SECONDS,
    Call,
    Resume,
    StreamCall,
    answer_of,
    parse_sse_line,
    raise_for,
)
from .client import (
    ExactReader,
    LocalPath,
    Names,
    check_download_target,
    check_resume_for,
    check_upload_source,
    clean_token,
    file_digest,
    http_timeout,
    late_error,
    local_path,
    look_timeout,
    older_server,
    open_regular,
    pull_partial,
    push_fields,
    set_download_mode,
    split_urls,
    write_error,
    written_path,
)
from .profile import Profile, load_profile
from .types import Event, JobResult, Message, RunResult, is_final, job_accepted, run_result
from .waits import FLOOR_TYPES, MessageWait, ReadyWait, check_timeout

if TYPE_CHECKING:
    from .streams import AsyncStream, Opener

__all__ = ["AsyncClient"]

#: Called with each event; what it returns is ignored, unless it is awaitable (an
#: ``async def`` handler): then it is awaited.
EventHandler = Callable[[Event], object]
T = TypeVar("T")


async def _maybe_await(value: object) -> None:
    if inspect.isawaitable(value):
        await value


async def _until(deadline: float, work: Awaitable[T], timed_out: Callable[[], Exception]) -> T:
    """``work``'s result, or ``timed_out()`` raised at ``deadline`` (``time.monotonic``)
    whether or not anything arrives meanwhile: a quiet event stream says nothing for
    seconds (the server's keepalive), a wait must not end that late. A ``TimeoutError``
    of the work's own is raised as it is: which one it was is told by whether the work
    finished, not by the clock (asyncio wakes up to a clock tick early)."""
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()))
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})  # a cancellation of the caller's goes on through
            if not task.cancelled():
                task.exception()  # retrieved: what it raised while ending is not news
    if not done:
        raise timed_out()
    return task.result()


class _Halt:
    """What ``AsyncClient.halt()`` sets for one stream being read: ``halted``, and its
    wait to reconnect (if it is waiting) woken up."""

    def __init__(self) -> None:
        self.halted = False
        self.waker: asyncio.Event | None = None  # bound to the loop of the stream's wait

    def set(self) -> None:
        self.halted = True
        if self.waker is not None:
            self.waker.set()


async def _closed_with_its_loop(http: httpx.AsyncClient) -> AsyncGenerator[None, None]:
    """Held suspended while ``http`` is in use, so that the event loop it runs on closes
    it: ``asyncio.run`` (and ``asyncio.Runner``) finalize the async generators still
    suspended before closing their loop. A client used in one ``asyncio.run`` and then
    in another has its first connections closed by the first loop, not left open for the
    garbage collector (``ResourceWarning: unclosed transport``)."""
    try:
        yield
    finally:
        await http.aclose()


class AsyncClient:
    """``Client`` for asyncio: same constructor, same methods (``await`` them; the
    streams are async iterators). Use ``async with``, or ``await close()``."""

    def __init__(
        self,
        url: str,
        token: str,
        fingerprint: str | None = None,
        cert_pem: str | None = None,
        timeout: float = 30.0,
        resume_for: float = RESUME_SECONDS,
    ) -> None:
        self.urls = split_urls(url)
        self.fingerprint = fingerprint
        self._token, self.cert_pem = clean_token(token), cert_pem
        self._timeout = calls.check_client_timeout(timeout)
        self.resume_for = check_resume_for(resume_for)
        #: Told in a sentence when an event stream breaks and when it is read again
        #: (the CLI says so on stderr): it may resume quietly for ``resume_for`` s.
        self.on_stream_break: Callable[[str], None] | None = None
        self._index = 0
        self._http: httpx.AsyncClient | None = None
        #: The event loop ``_http`` was opened on: its connections work on no other.
        self._http_loop: asyncio.AbstractEventLoop | None = None
        #: Closes ``_http`` when its loop ends (``_closed_with_its_loop``).
        self._http_closer: AsyncGenerator[None, None] | None = None
        # halt(): each stream being read has a _Halt, set by halt(); a stream begun
        # after it is read as usual (``_halts`` counts the halts).
        self._halts = 0
        self._halting: set[_Halt] = set()
        self._closed = False

    @property
    def url(self) -> str:
        """The server URL in use (one of ``urls``)."""
        return self.urls[self._index]

    @classmethod
    def from_profile(cls, profile: Profile | None = None) -> AsyncClient:
        """The client of the `crc login` profile (``CRC_URL``, ``CRC_TOKEN`` and
        ``CRC_FINGERPRINT`` override it; one set but empty is ``InvalidInput``)."""
        p = profile or load_profile()
        return cls(p.url, p.token, p.fingerprint, p.cert_pem)

    async def __aenter__(self) -> AsyncClient:
        await self._client()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection; any later use of this client raises InvalidInput
        (code ``client_closed``), ``async with`` too: it is not opened again. Closing
        again does nothing."""
        self._closed = True
        await self._drop_http()

    async def _drop_http(self) -> None:
        closer, self._http, self._http_closer = self._http_closer, None, None
        if closer is not None and self._http_loop is asyncio.get_running_loop():
            await closer.aclose()  # closes the connections
        # Opened on another event loop (an earlier ``asyncio.run``): that loop closed
        # them as it ended; they cannot be closed from this one.

    def halt(self) -> None:
        """End this client's event streams being read (``events``, ``job_events``, and
        the follow of ``follow_job``, ``run`` and ``run_wait``) at their next event,
        keepalive or reconnection attempt: those in progress when it is called, and
        only those (a stream or call begun later works as usual). Call it on the
        client's event loop; from another thread,
        ``loop.call_soon_threadsafe(client.halt)``."""
        self._halts += 1
        for halt in list(self._halting):
            halt.set()

    # -- plumbing -----------------------------------------------------------------------
    async def _open(self, url: str) -> httpx.AsyncClient:
        # Checking the pin may fetch the server's certificate: a blocking handshake.
        ctx, self.cert_pem = await asyncio.to_thread(
            client_context, url, self.fingerprint, self.cert_pem, self._timeout
        )
        return httpx.AsyncClient(
            base_url=url + "/v1",
            verify=ctx if ctx is not None else False,
            headers={"Authorization": f"Bearer {self._token}"},
            timeout=http_timeout(self._timeout),
            trust_env=False,
        )

    async def _client(self) -> httpx.AsyncClient:
        if self._closed:
            raise calls.client_closed()
        loop = asyncio.get_running_loop()
        if self._http is not None and self._http_loop is not loop:
            # Used in a new event loop (a second ``asyncio.run``): the connections of
            # the old one cannot serve it; new ones are made on this loop.
            await self._drop_http()
        if self._http is None:
            unreached = calls.Unreached()
            for attempt in range(len(self.urls)):
                try:
                    await self._use(await self._open(self.url))
                    break
                except Unavailable as exc:
                    unreached.add(self.url, exc)
                    if attempt == len(self.urls) - 1:
                        raise unreached.error(exc) from None
                    self._index = (self._index + 1) % len(self.urls)
        assert self._http is not None
        return self._http

    async def _use(self, http: httpx.AsyncClient) -> None:
        """Make ``http`` the client in use, closed by this loop if it ends first."""
        self._http, self._http_loop = http, asyncio.get_running_loop()
        self._http_closer = _closed_with_its_loop(http)
        await anext(self._http_closer)

    async def _failover(self, unreached: calls.Unreached | None = None) -> bool:
        """As ``Client._failover``: to the next replica whose client opens, never back
        to the one it leaves nor to one in ``unreached``; False when none is left."""
        if self._closed:
            raise calls.client_closed()
        tried = calls.Unreached() if unreached is None else unreached
        for i in calls.next_urls(self.urls, self._index, tried.why):
            try:
                http = await self._open(self.urls[i])
            except Unavailable as exc:
                tried.add(self.urls[i], exc)
                continue
            await self._drop_http()
            self._index = i
            await self._use(http)
            return True
        return False

    def _unreachable(self, exc: httpx.HTTPError) -> Exception:
        if is_untrusted(exc):
            return untrusted_error(self.url, exc)
        return Unavailable(f"cannot reach {self.url}: {exc}")

    async def _request(
        self, method: str, path: str, resend: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """As ``Client._request``."""
        unreached = calls.Unreached()
        while True:
            http = await self._client()
            try:
                return await http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # Nothing reached the server: safe to send to another replica (as Client).
                if is_untrusted(exc):
                    raise self._unreachable(exc) from None
                cut: httpx.HTTPError = exc
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                if not resend and method.upper() not in calls.RESENDABLE:
                    raise self._unreachable(exc) from None  # it may have been done
                cut = exc  # cut by its replica's end, safe to send again: to the next
            except httpx.ReadTimeout:
                raise calls.unanswered(self.url, method) from None
            except httpx.HTTPError as exc:
                raise self._unreachable(exc) from None
            unreached.add(self.url, cut)
            if not await self._failover(unreached):
                raise unreached.error(self._unreachable(cut)) from None

    async def _call(self, method: str, path: str, resend: bool = False, **kwargs: Any) -> Any:
        resp = await self._request(method, path, resend, **kwargs)
        if resp.status_code >= 400:
            raise_for(
                self.url,
                resp.status_code,
                resp.headers.get("content-type"),
                resp.content,
                resp.headers.get("retry-after"),
            )
        return answer_of(self.url, resp.status_code, resp.headers.get("content-type"), resp.content)

    async def _do(self, call: Call, deadline: float | None = None) -> Any:
        """As ``Client._do``: within ``deadline`` if given (a wait's first calls: timed
        out by httpx, which closes its connection, not cancelled in its handshake)."""
        timeout = http_timeout(self._timeout, call.wait)
        if deadline is not None:
            timeout = look_timeout(self._timeout, deadline)
        answer = await self._call(
            call.method, call.path, params=call.params, json=call.json, timeout=timeout
        )
        return call.result(answer)

    def _stream(self, call: StreamCall, since: int | None = None) -> AsyncGenerator[Any, None]:
        """As ``Client._stream``: ``since`` is ``_halts`` when the call began."""
        return self._halted_stream(call, self._halts if since is None else since)

    async def _halted_stream(self, call: StreamCall, since: int) -> AsyncGenerator[Any, None]:
        if self._halts != since:  # halted before it was read: not opened at all
            return
        halt = _Halt()
        self._halting.add(halt)
        try:
            resume = Resume(len(self.urls), self.resume_for, notify=self.on_stream_break)
            while True:
                try:
                    async for item in self._stream_once(call, resume, halt):
                        if halt.halted:
                            return
                        resume.progressed()
                        yield item
                    return
                except (httpx.TransportError, Unavailable) as exc:
                    if isinstance(exc, Unavailable) and exc.code == "not_crc_server":
                        raise  # the wrong URL (a web server's 404 page): no wait changes it
                    if self._closed:  # closed while it was read: no restart to wait out
                        raise calls.client_closed() from None
                    if isinstance(exc, httpx.TransportError) and is_untrusted(exc):
                        raise self._unreachable(exc) from None
                    if await self._halted_within(halt, resume.next_wait(self.url, exc)):
                        return
                    try:
                        await self._failover()
                    except Unavailable:
                        pass  # the next attempt fails too, and counts
                except httpx.HTTPError as exc:
                    raise Unavailable(f"event stream from {self.url} broke: {exc}") from None
        finally:
            self._halting.discard(halt)

    async def _halted_within(self, halt: _Halt, seconds: float) -> bool:
        """Sleep ``seconds`` unless ``halt()`` comes first; whether it came."""
        if halt.halted:
            return True
        halt.waker = asyncio.Event()  # bound to the running loop, whichever it is
        try:
            await asyncio.wait_for(halt.waker.wait(), seconds)
        except asyncio.TimeoutError:
            return False
        finally:
            halt.waker = None
        return True

    async def _stream_once(
        self, call: StreamCall, resume: Resume | None = None, halt: _Halt | None = None
    ) -> AsyncIterator[Any]:
        http = await self._client()
        timeout = http_timeout(self._timeout, stream=bool(call.params.get("follow")))
        async with http.stream("GET", call.path, params=call.params, timeout=timeout) as resp:
            if resp.status_code >= 400:
                raise_for(
                    self.url, resp.status_code, resp.headers.get("content-type"), await resp.aread()
                )
            if resume is not None:  # open again after a break: said now
                resume.opened(self.url)
            async for line in resp.aiter_lines():
                item = parse_sse_line(line)
                if item is KEEPALIVE:
                    if resume is not None:  # the stream is alive: a later break starts afresh
                        resume.progressed()
                    if call.keepalive:
                        yield None
                    elif halt is not None and halt.halted:  # quiet stream: end it now
                        return
                elif item is not None:
                    call.params["since"] = item["cursor"]
                    yield Event.from_dict(item)

    # -- groups -------------------------------------------------------------------------
    async def whoami(self) -> dict[str, Any]:
        return dict(await self._do(calls.whoami()))

    async def create_group(
        self,
        name: str,
        machines: Collection[str | dict[str, Any]],
        key_ttl: float | None = None,
        ttl: float | None = None,
        settings: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return dict(await self._do(calls.create_group(name, machines, key_ttl, ttl, settings)))

    async def list_groups(self) -> list[dict[str, Any]]:
        return list(await self._do(calls.list_groups()))

    async def group(self, name: str) -> dict[str, Any]:
        return dict(await self._do(calls.group(name)))

    async def machine_key(
        self, group: str, machine: str, key_ttl: float | None = None
    ) -> dict[str, Any]:
        return dict(await self._do(calls.machine_key(group, machine, key_ttl)))

    async def delete_group(self, name: str) -> dict[str, Any]:
        return dict(await self._do(calls.delete_group(name)))

    async def arm_teardown(self, group: str, provider: str, api_key: str) -> dict[str, Any]:
        return dict(await self._do(calls.arm_teardown(group, provider, api_key)))

    async def disarm_teardown(self, group: str) -> dict[str, Any]:
        return dict(await self._do(calls.disarm_teardown(group)))

    async def start_run(self, group: str, run: dict[str, Any]) -> dict[str, Any]:
        return dict(await self._do(calls.start_run(group, run)))

    async def report_run(self, group: str, report: dict[str, Any]) -> dict[str, Any]:
        return dict(await self._do(calls.report_run(group, report)))

    async def run_state(self, group: str) -> dict[str, Any]:
        return dict(await self._do(calls.run_state(group)))

    async def health(self) -> dict[str, Any]:
        return dict(await self._do(calls.health()))

    async def _gone(self, group: str) -> NotFound | None:
        """As ``Client._gone``."""
        try:
            view = await self.group(group)
        except NotFound:
            return calls.group_gone(group, None)
        except CrcError:
            return None
        return calls.group_gone(group, view)

    async def _stream_ended(self, group: str) -> CrcError:
        """As ``Client._stream_ended``."""
        gone = await self._gone(group)
        return gone or Unavailable(f"the event stream of {group} ended (group deleted?)")

    async def wait_ready(
        self,
        group: str,
        timeout: float = 900.0,
        machines: Names | None = None,
        on_event: EventHandler | None = None,
    ) -> dict[str, Any]:
        # Checked before the try: its InvalidInput would have the group looked up.
        timeout = check_timeout(timeout)
        try:
            return await self._wait_ready(group, timeout, machines, on_event)
        except InvalidInput:  # a machine revoked: by the deletion of its group?
            gone = await self._gone(group)
            if gone is None:
                raise
            raise gone from None

    async def _wait_ready(
        self,
        group: str,
        timeout: float,
        machines: Names | None,
        on_event: EventHandler | None,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        try:  # within the deadline, a server that does not answer too
            cursor = int(await self._do(calls.event_cursor(group), deadline))
            wait = ReadyWait(await self._do(calls.group(group), deadline), machines)
        except Unavailable as exc:
            raise late_error(exc, deadline, timeout) from None

        async def follow() -> None:
            stream = self.events(group, since=cursor, follow=True)
            async with contextlib.aclosing(stream):
                async for ev in stream:
                    if wait.feed(ev) and on_event is not None:
                        await _maybe_await(on_event(ev))
                    if wait.done:
                        return
            raise await self._stream_ended(group)

        if not wait.done:
            await _until(deadline, follow(), lambda: wait.timeout_error(timeout))
        return await self.group(group)

    # -- jobs ---------------------------------------------------------------------------
    async def start_job(
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
        max_concurrency: int | str | None = None,
        max_errors: int | str | None = None,
        batch_wait: float | None = None,
        canary: int | None = None,
        deliver_within: float | None = None,
    ) -> dict[str, Any]:
        rollout = {
            "max_concurrency": max_concurrency,
            "max_errors": max_errors,
            "batch_wait": batch_wait,
            "canary": canary,
            "deliver_within": deliver_within,
        }
        call = calls.start_job(group, to, argv, command, shell, env, cwd, timeout, rollout)
        return dict(await self._do(call))

    async def list_jobs(self, group: str, limit: int = 50) -> list[dict[str, Any]]:
        return list(await self._do(calls.list_jobs(group, limit)))

    async def job(self, job_id: str) -> dict[str, Any]:
        return dict(await self._do(calls.job(job_id)))

    async def job_results(self, job_id: str) -> dict[str, JobResult]:
        out = {}
        for t in (await self.job(job_id))["targets"]:
            r = JobResult.from_dict({**t, "job_id": job_id})
            if is_final(r.status):
                out[r.machine] = r
        return out

    async def cancel_job(self, job_id: str) -> dict[str, Any]:
        return dict(await self._do(calls.cancel_job(job_id)))

    def job_events(
        self, job_id: str, since: int = 0, follow: bool = True
    ) -> AsyncGenerator[Any, None]:
        return self._stream(calls.job_events(job_id, since, follow))

    def follow_job(
        self, job_id: str, targets: list[str], since: int = 0
    ) -> AsyncGenerator[Event, None]:
        return self._follow_job(job_id, targets, since, self._halts)

    async def _follow_job(
        self, job_id: str, targets: list[str], since: int, halts: int
    ) -> AsyncGenerator[Event, None]:
        left = set(targets)
        if not left:
            return
        stream = self._stream(calls.job_events(job_id, since, True), halts)
        async with contextlib.aclosing(stream):
            async for event in stream:
                yield event
                if event.result is not None:
                    left.discard(event.result.machine)
                    if not left:
                        return

    async def run(self, group: str, to: str, **job: Any) -> AsyncIterator[Event]:
        halts = self._halts  # a halt() from now on ends the follow
        started = await self.start_job(group, to, **job)
        yield job_accepted(started)
        stream = self._follow_job(started["job_id"], started["targets"], 0, halts)
        async with contextlib.aclosing(stream):
            async for event in stream:
                yield event

    async def run_wait(
        self, group: str, to: str, *, on_event: EventHandler | None = None, **job: Any
    ) -> RunResult:
        halts = self._halts  # a halt() while the job is started ends the follow too
        started = await self.start_job(group, to, **job)
        results: dict[str, JobResult] = {}
        stream = self._follow_job(started["job_id"], started["targets"], 0, halts)
        try:
            async with contextlib.aclosing(stream):
                async for ev in stream:
                    if on_event is not None:
                        await _maybe_await(on_event(ev))
                    if ev.result is not None:
                        results[ev.result.machine] = ev.result
        except asyncio.CancelledError:  # Ctrl-C, wait_for's timeout: the job too
            with contextlib.suppress(CrcError):
                await asyncio.shield(self.cancel_job(started["job_id"]))
            raise
        return run_result(started["job_id"], started["targets"], results)

    async def hosts_sync(self, group: str, to: str = "all", ip: str = "auto") -> dict[str, Any]:
        return dict(await self._do(calls.hosts_sync(group, to, ip)))

    # -- messages and events ------------------------------------------------------------
    async def send_message(
        self, group: str, to: str, type: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return dict(await self._do(calls.send_message(group, to, type, body)))

    @overload
    def events(
        self,
        group: str,
        since: int | None = None,
        follow: bool = False,
        keepalive: Literal[False] = False,
        types: Names = (),
    ) -> AsyncGenerator[Event, None]: ...
    @overload
    def events(
        self,
        group: str,
        since: int | None,
        follow: bool,
        keepalive: Literal[True],
        types: Names = (),
    ) -> AsyncGenerator[Event | None, None]: ...
    @overload
    def events(
        self,
        group: str,
        since: int | None = None,
        follow: bool = False,
        *,
        keepalive: Literal[True],
        types: Names = (),
    ) -> AsyncGenerator[Event | None, None]: ...
    @overload
    def events(
        self,
        group: str,
        since: int | None = None,
        follow: bool = False,
        keepalive: bool = False,
        types: Names = (),
    ) -> AsyncGenerator[Event | None, None]: ...
    def events(
        self,
        group: str,
        since: int | None = None,
        follow: bool = False,
        keepalive: bool = False,
        types: Names = (),
    ) -> AsyncGenerator[Event | None, None]:
        return self._stream(calls.events(group, since, follow, keepalive, types))

    async def event_cursor(self, group: str) -> int:
        return int(await self._do(calls.event_cursor(group)))

    async def wait_message(
        self,
        group: str,
        type: str,
        sender: str | None = None,
        since: int | None = None,
        timeout: float = 600.0,
    ) -> Message:
        found = await self.wait_messages(group, type, [sender] if sender else None, since, timeout)
        return next(iter(found.values()))

    async def wait_messages(
        self,
        group: str,
        type: str,
        senders: Names | None = None,
        since: int | None = None,
        timeout: float = 600.0,
        on_message: Callable[[Message], object] | None = None,
    ) -> dict[str, Message]:
        timeout = check_timeout(timeout)
        deadline = time.monotonic() + timeout
        wait = MessageWait(type, senders, since)
        try:  # within the deadline, a server that does not answer too
            if wait.senders is not None:
                wait.check_senders(await self._do(calls.group(group), deadline))
            if wait.needs_floors:
                now = int(await self._do(calls.event_cursor(group), deadline))
                floors = self.events(group, since=0, types=FLOOR_TYPES)
                async with contextlib.aclosing(floors):
                    async for ev in floors:
                        if ev["cursor"] > now:
                            break
                        wait.floor(ev)
        except Unavailable as exc:
            if time.monotonic() < deadline or exc.code == "not_crc_server":
                raise
            raise wait.timeout_error(timeout) from None

        async def follow() -> dict[str, Message]:
            stream = self.events(group, since=wait.start, follow=True, types=("message",))
            async with contextlib.aclosing(stream):
                async for ev in stream:
                    msg = wait.feed(ev)
                    if msg is not None and on_message is not None:
                        await _maybe_await(on_message(msg))
                    if wait.done:
                        return wait.found
            raise await self._stream_ended(group)

        return await _until(deadline, follow(), lambda: wait.timeout_error(timeout))

    # -- shells and forwards (master/streams.py) ----------------------------------------
    async def _stream_opener(self) -> Opener:
        from .streams import Opener

        await self._client()
        ctx, self.cert_pem = await asyncio.to_thread(
            client_context, self.url, self.fingerprint, self.cert_pem, self._timeout
        )
        return Opener(self._do, self.url, self._token, ctx)

    async def shell(
        self,
        group: str,
        machine: str,
        argv: Sequence[str] | None = None,
        shell: str | None = None,
        cols: int = 80,
        rows: int = 24,
        term: str | None = "xterm-256color",
        record: bool | None = None,
    ) -> AsyncStream:
        """A terminal on ``machine``: an :class:`AsyncStream` (``send``, ``recv`` gives
        bytes or a control message, ``resize``, ``exit_code``, ``close``)."""
        from .streams import open_stream, shell_body

        body = shell_body(machine, argv, shell, cols, rows, term, record)
        return await open_stream(await self._stream_opener(), group, body)

    @contextlib.asynccontextmanager
    async def forward(
        self,
        group: str,
        machine: str,
        remote_port: int,
        remote_host: str = "127.0.0.1",
        local_port: int = 0,
        local_addr: str = "127.0.0.1",
    ) -> AsyncIterator[int]:
        """``async with client.forward("lab", "web", 80) as port``: the bound local
        port; each connection to it reaches ``remote_host``:``remote_port`` from the
        machine. One connection is made first, so a closed remote port fails here."""
        from .streams import forward_spec, open_forward, serve_forward

        spec = forward_spec(remote_port, remote_host, local_port, local_addr)
        opener = await self._stream_opener()
        probe = await open_forward(opener, group, machine, spec, probe=True)
        await probe.close()
        server = await serve_forward(opener, group, machine, spec)
        try:
            yield server.port
        finally:
            await server.aclose()

    async def sessions(
        self, group: str, limit: int = 100, probes: bool = False
    ) -> list[dict[str, Any]]:
        rows = list(await self._do(calls.list_sessions(group, limit, probes)))
        return calls.shown_sessions(rows, probes)

    async def recording(self, stream: str) -> str:
        return str((await self._do(calls.recording(stream)))["cast"])

    async def audit(
        self, group: str | None = None, limit: int = 1000, actions: Iterable[str] = ()
    ) -> list[dict[str, Any]]:
        wanted = calls.audit_actions(actions)
        records = list(await self._do(calls.audit(group, limit, wanted)))
        return calls.shown_audit(records, wanted)

    # -- key/value store -----------------------------------------------------------------
    async def kv_set(self, group: str, key: str, value: Any) -> dict[str, Any]:
        return dict(await self._do(calls.kv_set(group, key, value)))

    async def kv_get(
        self, group: str, key: str, wait: float = 0, newer_than: int = 0
    ) -> dict[str, Any]:
        """As ``Client.kv_get`` (a wait turned away with 429 is asked again after its
        ``Retry-After``, one cut by a server restart every second, within ``wait``)."""
        call = first = calls.kv_get(group, key, wait, newer_than)
        deadline = time.monotonic() + wait if wait and wait > 0 else None
        while True:
            try:
                return dict(await self._do(call))
            except TimedOut:
                if call is first:
                    raise
                # Asked again for the time left: the caller gave ``wait``.
                raise calls.kv_timed_out(key, wait, newer_than) from None
            except Unavailable as exc:  # turned away (429), or the server restarts
                delay = None if deadline is None else calls.kv_wait_delay(exc, deadline)
                if delay is None or deadline is None:
                    raise
            await asyncio.sleep(delay)
            call = calls.kv_get(
                group, key, calls.kv_wait_left(key, wait, deadline, newer_than), newer_than
            )

    async def kv_list(self, group: str) -> list[dict[str, Any]]:
        return list(await self._do(calls.kv_list(group)))

    # -- files --------------------------------------------------------------------------
    async def upload(self, local: LocalPath) -> dict[str, Any]:
        path = local_path(local)
        sha, size = await asyncio.to_thread(file_digest, path)
        head = await self._request("HEAD", f"/blobs/{sha}")
        if head.status_code == 200:
            return {"sha256": sha, "size": size, "uploaded": False}

        class Chunks:
            async def __aiter__(self) -> AsyncIterator[bytes]:  # from the start each time
                # Exactly the ``size`` bytes hashed (a file growing meanwhile: its start).
                exact = ExactReader(path, sha, size)
                with await asyncio.to_thread(open_regular, path) as fh:
                    while chunk := await asyncio.to_thread(exact.read, fh):
                        yield chunk

        out = await self._call(
            "PUT",
            f"/blobs/{sha}",
            resend=True,  # stored under its hash: the same PUT again stores the same
            content=Chunks(),
            headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
        )
        return {**out, "uploaded": True}

    async def push(
        self,
        group: str,
        to: str,
        local: LocalPath,
        remote: str,
        mode: str | None = None,
        owner: str | None = None,
    ) -> dict[str, Any]:
        """As ``Client.push``."""
        local = local_path(local)
        await asyncio.to_thread(check_upload_source, local)
        remote, new_mode, name = push_fields(local, remote)
        target = calls.check_push(to, remote, mode, owner)
        calls.check_targets(target, group, await self.group(group))
        blob = await self.upload(local)
        sha = blob["sha256"]
        try:
            return dict(
                await self._do(calls.push(group, to, sha, remote, mode, owner, new_mode, name))
            )
        except InvalidInput as exc:
            if not older_server(exc):
                raise
        return dict(await self._do(calls.push(group, to, sha, remote, mode, owner)))

    async def start_pull(self, group: str, machine: str, remote: str) -> dict[str, Any]:
        """As ``Client.start_pull``."""
        check_push_path(remote)
        return dict(await self._do(calls.start_pull(group, machine, remote)))

    async def download_pulled(self, job_id: str, local: LocalPath) -> dict[str, Any]:
        """As ``Client.download_pulled``."""
        local = local_path(local)
        check_download_target(local)
        info = dict(await self._do(calls.pulled_file(job_id)))
        target = written_path(local)  # a link is followed: its file is replaced
        directory = os.path.dirname(target)
        try:
            fd, tmp = await asyncio.to_thread(pull_partial, directory)
        except OSError as exc:
            raise write_error(local, exc) from None
        digest = hashlib.sha256()
        http = await self._client()
        try:
            with os.fdopen(fd, "wb") as fh:
                async with http.stream("GET", f"/blobs/{info['sha256']}") as resp:
                    if resp.status_code >= 400:
                        raise_for(
                            self.url,
                            resp.status_code,
                            resp.headers.get("content-type"),
                            await resp.aread(),
                        )
                    async for chunk in resp.aiter_bytes(1 << 20):
                        digest.update(chunk)
                        await asyncio.to_thread(fh.write, chunk)
                set_download_mode(fh.fileno(), tmp, target, info.get("mode"))
            if digest.hexdigest() != info["sha256"]:
                raise Unavailable("downloaded content does not match its sha256: try again")
            os.replace(tmp, target)
        except httpx.HTTPError as exc:
            raise Unavailable(f"download failed: {exc}") from None
        except OSError as exc:
            raise write_error(local, exc) from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return info
