"""Live connections of this server process: agent writers and event-stream wake-ups.

Event streams read a group's new events when the bus wakes them after a commit. While
commits keep coming (a job's results), the bus wakes a group's followers at most once
per ``WAKE_INTERVAL`` seconds: the first commit after a quiet spell wakes them at once,
later ones within the interval are folded into one wake-up at its end. So a stream
reads at most once per interval, and no commit is left unread: every commit is
followed by a wake-up, now or at the end of the interval.

Fan-out: every agent connection has its own queue and writer task, so a job for a
thousand machines never waits for the slowest socket. A writer only sends what the
store has committed; when offers arrive out of order (two jobs committed concurrently)
it re-reads the outbox from the last sequence number it sent.

Stopping (SIGTERM): ``EventBus.stop`` wakes every waiter, and a wait on the bus then
raises ``ServerStopping`` (503): a long poll (a kv wait) is answered at once (an agent
asks again, here once restarted or at another replica; a master's wait ends). An event stream is cut
instead (``CUT_ON_STOP``: the server closes its connection, ``runner.py``), which its
follower takes as a break to resume from, where a stream that ended would mean its group
was deleted. Without this, uvicorn waits for such responses, then cancels them with a
traceback each.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from ..errors import Unavailable
from .store.base import ALL_GROUPS

if TYPE_CHECKING:
    from .streams import StreamBroker

__all__ = [
    "CUT_ON_STOP",
    "MAX_QUEUED_FRAMES",
    "WAKE_INTERVAL",
    "AgentLink",
    "EventBus",
    "Hub",
    "ServerStopping",
]

#: The ASGI scope key an endpoint sets (true) on a response that lasts until its client
#: goes (an event stream): the server closes that connection when it stops.
CUT_ON_STOP = "crc.cut_on_stop"

#: Seconds: a group's event followers are woken at most once per interval (see above).
WAKE_INTERVAL = 0.015

#: Frames queued for an agent's writer beyond which ``send_control_now`` waits until the
#: writer has sent them: an agent that sends and never reads (an error frame for each
#: bad frame it sends) is read no faster than it reads, so what it costs stays bounded.
MAX_QUEUED_FRAMES = 256

Reload = Callable[[str, int], Awaitable[list[tuple[int, str]]]]


class AgentLink:
    """One connected agent: frames to send, in sequence order, by one writer task."""

    def __init__(
        self,
        machine_id: str,
        send: Callable[[str], Awaitable[None]],
        close: Callable[[int, str], Awaitable[None]],
        reload: Reload,
        sent_upto: int,
    ) -> None:
        self.machine_id = machine_id
        self._send = send
        self.close = close
        self._reload = reload
        self.sent_upto = sent_upto
        self._frames: list[str] = []
        self._need_reload = True  # first thing: replay what the agent has not processed
        self._wake = asyncio.Event()
        self._wake.set()
        self._sending = False  # a task is sending (one at a time on the socket)
        self._drained = asyncio.Event()  # set when the writer has sent what it took
        self.closed = False

    def offer(self, seq: int, frame: str) -> None:
        if seq <= self.sent_upto:
            return
        if seq == self.sent_upto + 1 and not self._need_reload:
            self._frames.append(frame)
            self.sent_upto = seq
        else:
            self._need_reload = True
        self._wake.set()

    def reload(self) -> None:
        """Re-read the outbox: another replica queued messages for this machine."""
        self._need_reload = True
        self._wake.set()

    def send_control(self, frame: str) -> None:
        """A frame outside the numbered stream (acks)."""
        self._frames.append(frame)
        self._wake.set()

    async def send_control_now(self, frame: str, bounded: bool = False) -> None:
        """``send_control`` from the caller's task when nothing else is waiting to be
        sent (an ack after each message the agent sends: the writer task need not be
        woken for it); queued behind what is. ``bounded`` (the answer to a frame that
        broke the protocol): the caller (the connection's reader) waits while more than
        ``MAX_QUEUED_FRAMES`` are queued, backpressure on an agent that sends and does
        not read. Acks never wait: an honest agent's reader may itself be waiting to
        send one while the server's writer waits for it to read."""
        if self._sending or self._frames or self._need_reload or self.closed:
            self.send_control(frame)
            while bounded and len(self._frames) > MAX_QUEUED_FRAMES and not self.closed:
                self._drained.clear()
                await self._drained.wait()
            return
        self._sending = True
        try:
            await self._send(frame)
        finally:
            self._sending = False
        if self._frames or self._need_reload:  # offered meanwhile: the writer's turn
            self._wake.set()

    async def run_writer(self) -> None:
        try:
            await self._run_writer()
        finally:
            self.closed = True
            self._drained.set()  # a reader waiting for it goes on (and sees it closed)

    async def _run_writer(self) -> None:
        while not self.closed:
            await self._wake.wait()
            self._wake.clear()
            if self._sending:  # send_control_now is sending; it wakes this task after
                continue
            self._sending = True
            try:
                await self._write()
            except Unavailable as exc:
                # The outbox could not be read (the database is down): the connection
                # ends, and the agent's next hello says where to resume.
                self.closed = True
                with contextlib.suppress(Exception):
                    await self.close(1013, exc.message[:120])
                return
            finally:
                self._sending = False

    async def _write(self) -> None:
        if self._need_reload:
            self._need_reload = False
            rows = await self._reload(self.machine_id, self.sent_upto)
            for seq, frame in rows:
                if seq == self.sent_upto + 1:
                    self._frames.append(frame)
                    self.sent_upto = seq
            if len(rows) >= 500:
                self._need_reload = True
                self._wake.set()
        frames, self._frames = self._frames, []
        for frame in frames:
            await self._send(frame)
        self._drained.set()


class Hub:
    def __init__(self) -> None:
        self.links: dict[str, AgentLink] = {}
        #: The shells and forwards open on this replica (set with the stream routes):
        #: ``revoke`` ends those of the machines it revokes.
        self.streams: StreamBroker | None = None

    def watched(self) -> list[str]:
        """The machines this replica must hear of once revoked: those connected to it,
        and those with a stream open on it (maybe connected to another replica)."""
        ids = set(self.links)
        if self.streams is not None:
            ids |= self.streams.machine_ids()
        return list(ids)

    def attach(self, link: AgentLink) -> AgentLink | None:
        """Register ``link``; return a previous link of the same machine to close."""
        old = self.links.get(link.machine_id)
        self.links[link.machine_id] = link
        return old

    def detach(self, link: AgentLink) -> None:
        if self.links.get(link.machine_id) is link:
            del self.links[link.machine_id]

    def reload_threadsafe(self, loop: asyncio.AbstractEventLoop, machines: set[str]) -> None:
        loop.call_soon_threadsafe(self.reload, machines)

    def reload(self, machines: set[str]) -> None:
        links = (
            self.links.values()
            if ALL_GROUPS in machines
            else (self.links[m] for m in machines if m in self.links)
        )
        for link in list(links):
            link.reload()

    def deliver(self, deliveries: list[tuple[str, int, str]]) -> None:
        for machine_id, seq, frame in deliveries:
            link = self.links.get(machine_id)
            if link is not None:
                link.offer(seq, frame)

    async def revoke(self, machine_ids: list[str], reason: str, uninstall: bool = False) -> None:
        """End their open streams (each master told why), tell the connected ones
        (``uninstall``: and have them remove their service), then close them."""
        from ..protocol.frames import Revoked, write_frame

        if self.streams is not None:
            self.streams.end_machines(machine_ids, reason)

        frame = write_frame(Revoked(reason=reason, uninstall=True if uninstall else None))
        for mid in machine_ids:
            link = self.links.get(mid)
            if link is not None:
                link.send_control(frame)
                await asyncio.sleep(0)
                with contextlib.suppress(Exception):
                    await link.close(4403, reason)


class ServerStopping(Unavailable):
    """The server is stopping: a request waiting on the bus ends now; ask again."""


class _Wake(asyncio.Event):
    """A follower's wake-up: an ``asyncio.Event`` whose ``wait`` raises
    ``ServerStopping`` once its bus stops (at once if it has)."""

    def __init__(self, bus: EventBus) -> None:
        super().__init__()
        self._bus = bus

    async def wait(self) -> Literal[True]:
        if not self._bus.stopping:
            await super().wait()
        if self._bus.stopping:
            raise ServerStopping("the server is stopping: try again")
        return True


class EventBus:
    """Wakes event-stream followers of a group after commits that added events, at most
    once per ``interval`` per group (the rest are deferred to the interval's end)."""

    def __init__(self, interval: float = WAKE_INTERVAL) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.interval = interval
        self._woken: dict[str, float] = {}  # group -> loop time of its last wake-up
        self._due: dict[str, asyncio.TimerHandle] = {}  # group -> its deferred wake-up
        self._lock = threading.Lock()
        self._incoming: set[str] = set()  # from backend threads, not yet handed over
        #: Wake-ups run and notifications folded into a deferred one (for tests).
        self.wakeups = 0
        self.deferred = 0
        self.stopping = False

    def stop(self) -> None:
        """The server stops: every wait on the bus, now or later, raises
        ``ServerStopping``."""
        self.stopping = True
        for waiters in self._waiters.values():
            for ev in waiters:
                ev.set()

    def notify_threadsafe(self, groups: set[str]) -> None:
        """From a backend thread: one hop to the loop for however many commits come
        before it runs."""
        if self.loop is None:
            return
        with self._lock:
            pending = bool(self._incoming)
            self._incoming |= groups
        if not pending:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody follows
                self.loop.call_soon_threadsafe(self._take_incoming)

    def _take_incoming(self) -> None:
        with self._lock:
            groups, self._incoming = self._incoming, set()
        self.notify(groups)

    def notify(self, groups: set[str]) -> None:
        if ALL_GROUPS in groups:
            groups = set(self._waiters)
        loop = self.loop or asyncio.get_running_loop()
        now = loop.time()
        for g in groups:
            if g not in self._waiters:
                continue
            if g in self._due:  # a wake-up is already due: it will read this commit too
                self.deferred += 1
                continue
            at = self._woken.get(g, -self.interval) + self.interval
            if at <= now:
                self._wake(g)
            else:
                self.deferred += 1
                self._due[g] = loop.call_at(at, self._wake, g)

    def _wake(self, group_id: str) -> None:
        self._due.pop(group_id, None)
        waiters = self._waiters.get(group_id)
        if not waiters:
            return
        self._woken[group_id] = (self.loop or asyncio.get_running_loop()).time()
        self.wakeups += 1
        for ev in waiters:
            ev.set()

    @contextlib.contextmanager
    def subscribe(self, group_id: str) -> Any:
        ev = _Wake(self)
        self._waiters.setdefault(group_id, set()).add(ev)
        try:
            yield ev
        finally:
            waiters = self._waiters.get(group_id)
            if waiters is not None:
                waiters.discard(ev)
                if not waiters:
                    del self._waiters[group_id]
                    self._woken.pop(group_id, None)
                    due = self._due.pop(group_id, None)
                    if due is not None:
                        due.cancel()
