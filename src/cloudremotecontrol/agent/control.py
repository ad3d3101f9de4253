"""The local control channel: scripts on the machine talk to the running agent.

Linux: a Unix socket ``STATE_DIR/control.sock`` (mode 0600 in a 0700 directory, so only
root - the agent's user - can use it). Windows: a loopback TCP port plus a random token,
both in ``STATE_DIR\\control.json`` readable only by SYSTEM and Administrators.

One request per connection: a JSON line in, a JSON line out. A request that hands
something over (``wait-message``: the message is then never handed out again) and says
``"confirm": true`` is answered, then the client writes ``ack`` once it has the answer;
without that line (the client gone) the thing stays for the next request. A client that
goes away while its request waits (``WAITING_OPS``) cancels it.

An agent restarts (``systemctl restart``, an upgrade, a crash): ``call_through_restarts``
sends a request again until one answers, for a bounded time - but only when a second
send cannot do the thing twice. The client knows its request was never read when the
connection failed, when the agent's end refused the bytes (``EPIPE``) or, on Linux, when
the agent's end was closed with the request unread: the kernel then resets the
connection (``ECONNRESET``: ``unix_release_sock`` in ``net/unix/af_unix.c`` does so for
a socket with unread data or one never accepted). An agent gone after it read the request
(the connection just ends) may have acted on it: ``AgentLost``, sent again only for a
request that changes nothing (``IDEMPOTENT_OPS``), or for one the agent carries out
exactly once (below). A stopping agent answers the quick requests it has read before it
exits (``ControlServer.close``), so only a crash leaves one in doubt.

Exactly once (``ONCE_OPS``: emit, progress). ``call_through_restarts`` gives such a
request a random ``id``, the same each time it sends it. An agent that knows ids says so
before it does anything: its first line is ``{"once": ID}``; it then records the id in
the transaction that stores what the request does (the message in its outbox), and
answers a request whose id it has recorded with the answer it gave, doing nothing again
(``AgentState.record_request``; the last 10,000 ids of the last day are kept). So a
request whose agent said ``once`` and then went away is sent again with its id: the
next agent either has it recorded or knows it was never done. An older agent, which
ignores ids, never says ``once``: a request it may have carried out stays in doubt
(``AgentLost``, not sent again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CrcError, InvalidInput, Unauthorized, Unavailable, error_from_payload

log = logging.getLogger("crc.agent")

__all__ = [
    "AgentGone",
    "AgentLost",
    "ControlServer",
    "Handed",
    "NoAgent",
    "call",
    "call_through_restarts",
]


@dataclass
class Handed:
    """A handler's answer that hands something over: ``taken()`` once the client has
    the answer (it confirmed, or wrote nothing after an answer that went out, if it did
    not ask to confirm), ``released()`` otherwise."""

    reply: dict[str, Any]
    taken: Callable[[], None]
    released: Callable[[], None]


class AgentGone(Unavailable):
    """The agent was there (its socket or port exists) but is not answering now: it is
    stopping or restarting."""


class AgentLost(AgentGone):
    """The agent went away after it had read the request, before it answered: it may
    have acted on it. ``once``: it had said it carries the request out once per id, so
    the request may be sent again with the same id."""

    once = False


class NoAgent(Unavailable):
    """No agent has its control socket in the state directory (none runs there, or one
    is between a clean stop and its start)."""


Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | Handed]]
MAX_REQUEST = 512 << 10
CONFIRM_SECONDS = 10.0  # how long an answer that hands something over waits for "ack"
# Requests that wait for something to happen: cancelled when their client goes away.
WAITING_OPS = ("wait-message", "kv-wait")
# Requests that may be sent again when the agent went away after reading them: reads,
# "ready" (a state: the machine stays ready, no second event), and wait-message (what it
# hands out is taken only once the client confirms). Not emit, progress or kv-set: a
# second one is a second message, progress line or key version (emit and progress are
# sent again with their request id, ONCE_OPS).
IDEMPOTENT_OPS = frozenset({"status", "peers", "kv-get", "kv-wait", "wait-message", "ready"})
# Requests that change something and that an agent carries out once per request id: sent
# again, with the same id, when an agent that said it knows ids went away after reading.
ONCE_OPS = frozenset({"emit", "progress", "kv-set"})
_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
AGENT_WAIT_SECONDS = 30.0  # how long a request waits for an agent that is not answering
CLOSE_GRACE_SECONDS = 5.0  # how long a stopping agent lets its quick requests finish
RETRY_SECONDS = 0.2


class ControlServer:
    def __init__(
        self, state_dir: Path, handler: Handler, protect: Callable[[str], None] | None = None
    ) -> None:
        self.state_dir = state_dir
        self.handler = handler
        self.protect = protect
        self.token = secrets.token_urlsafe(24)
        self._server: asyncio.AbstractServer | None = None
        self._busy: set[asyncio.Task[Any]] = set()  # serving a quick request
        self._open: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}  # every connection
        self._socket_id: tuple[int, int] | None = None  # the control.sock made by start

    async def start(self) -> None:
        if sys.platform != "win32":
            path = self.state_dir / "control.sock"
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            old = os.umask(0o177)
            try:
                with _short_path(path) as short:
                    self._server = await asyncio.start_unix_server(
                        self._serve, path=short, limit=MAX_REQUEST
                    )
            finally:
                os.umask(old)
            with contextlib.suppress(OSError):
                st = path.lstat()
                self._socket_id = (st.st_dev, st.st_ino)
        else:
            self._server = await asyncio.start_server(
                self._serve, "127.0.0.1", 0, limit=MAX_REQUEST
            )
            port = self._server.sockets[0].getsockname()[1]
            info = self.state_dir / "control.json"
            info.write_text(json.dumps({"port": port, "token": self.token}))
            if self.protect is not None:
                self.protect(str(info))

    async def close(self, ending: CrcError | None = None) -> None:
        """Stop taking connections, then let the quick requests already taken finish
        (``CLOSE_GRACE_SECONDS`` at most): their clients get their answer rather than a
        closed connection that leaves them unsure whether the request was carried out.
        Connections not accepted yet are reset, so their clients send them again. Then
        the requests still open (the waiting ones: what they wait for is released, not
        lost; a quick one past its grace) lose their connection, as their clients would
        when the agent exits, so that this returns (from Python 3.12.1 on, the server's
        ``wait_closed`` waits for every connection it accepted). ``ending``: why the
        agent stops for good (its machine revoked): the waiting ones are answered with
        it, rather than left to wait for an agent that will not come back."""
        if self._server is not None:
            self._server.close()
            busy = {task for task in self._busy if not task.done()}
            if busy:
                await asyncio.wait(busy, timeout=CLOSE_GRACE_SECONDS)
            left = {task for task in self._open if not task.done()}
            waiting = left - self._busy
            for task in left:
                writer = self._open[task]
                if ending is not None and task in waiting:
                    reply = {"ok": False, "status": ending.http_status, **ending.to_payload()}
                    with contextlib.suppress(Exception):  # the client may be gone
                        writer.write(json.dumps(reply).encode() + b"\n")
                    writer.transport.close()  # once the answer is written
                else:
                    writer.transport.abort()
            if left:
                await asyncio.wait(left, timeout=CLOSE_GRACE_SECONDS)
            await self._server.wait_closed()
            self._remove_socket()

    def _remove_socket(self) -> None:
        """Remove the control socket start made, so that a stopped agent leaves none in
        its state directory; only if it is still that one (the same inode), never one
        another process put there since."""
        if self._socket_id is None:
            return
        path = self.state_dir / "control.sock"
        with contextlib.suppress(OSError):
            st = path.lstat()
            if (st.st_dev, st.st_ino) == self._socket_id:
                path.unlink()
        self._socket_id = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._busy.add(task)
            self._open[task] = writer
        try:
            await self._serve_one(reader, writer)
        finally:
            self._busy.discard(task)
            if task is not None:
                del self._open[task]

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handed: Handed | None = None
        confirm = False
        op = None
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            request = json.loads(line)
            if not isinstance(request, dict):
                raise InvalidInput("request must be a JSON object")
            if sys.platform == "win32" and not secrets.compare_digest(
                str(request.get("token", "")), self.token
            ):
                raise InvalidInput("bad control token")
            confirm = request.get("confirm") is True
            op = str(request.get("op"))[:40]
            if request.get("op") in ONCE_OPS and request.get("id") is not None:
                request_id = request["id"]
                if (
                    not isinstance(request_id, str)
                    or not 16 <= len(request_id) <= 64
                    or not _ID_CHARS.issuperset(request_id)
                ):
                    raise InvalidInput("a request id is 16-64 letters, digits, '-' or '_'")
                # Before anything is done: the client may now send the request again
                # with this id if the agent goes away before it answers.
                try:
                    writer.write(json.dumps({"once": request_id}).encode() + b"\n")
                    await writer.drain()
                except ConnectionError:  # the client is gone: nothing done, nothing to say
                    writer.close()
                    return
            if request.get("op") in WAITING_OPS:
                self._busy.discard(asyncio.current_task())
                result = await _unless_gone(reader, self.handler(request))
                if result is None:  # the client went away while its request waited
                    writer.close()
                    return
            else:  # quick, and not to be cut halfway (a message to the server)
                result = await self.handler(request)
            if isinstance(result, Handed):
                handed, result = result, result.reply
            reply = {"ok": True, **result}
        except CrcError as exc:
            reply = {"ok": False, "status": exc.http_status, **exc.to_payload()}
        except (ValueError, TypeError, asyncio.TimeoutError, asyncio.LimitOverrunError):
            reply = {
                "ok": False,
                "status": 400,
                "error": {"code": "invalid_input", "message": "malformed request"},
            }
        except Exception as exc:  # the client gets an answer, not a hang
            log.exception("control request %r failed", op)
            reply = {
                "ok": False,
                "status": 500,
                "error": {
                    "code": "internal",
                    "message": "the agent could not carry out the request "
                    f"({type(exc).__name__}): see its log",
                },
            }
        try:
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
            if handed is not None:
                if confirm:
                    ack = await asyncio.wait_for(reader.readline(), CONFIRM_SECONDS)
                    if ack.strip() != b"ack":
                        raise ConnectionError("the client did not confirm")
                handed.taken()
                handed = None
        except (ConnectionError, asyncio.TimeoutError, ValueError, asyncio.LimitOverrunError):
            pass
        finally:
            if handed is not None:
                handed.released()
            writer.close()


async def _unless_gone(reader: asyncio.StreamReader, work: Awaitable[Any]) -> Any:
    """``work``'s result, or None once the client closed its end first (``work`` is
    then cancelled; an answer it had ready is released)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_closed(reader))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if task.done():
        return task.result()
    task.cancel()
    try:
        result = await task
    except asyncio.CancelledError:
        return None
    if isinstance(result, Handed):
        result.released()
    return None


async def _closed(reader: asyncio.StreamReader) -> None:
    """Until the client closes its end (anything it writes meanwhile is ignored)."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(4096):
            pass


@contextlib.contextmanager
def _short_path(path: Path) -> Iterator[str]:
    """A socket path short enough for ``sun_path`` (108 bytes on Linux): a long state
    directory is reached through ``/proc/self/fd/N/``, N being an open descriptor of it."""
    if len(os.fsencode(str(path))) < 100 or not os.path.isdir("/proc/self/fd"):
        yield str(path)
        return
    try:
        fd = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # missing, not a directory, unreadable
        yield str(path)  # connect() below reports it clearly
        return
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def revoked(reason: str) -> Unauthorized:
    """What a script asking an agent whose machine was revoked is told."""
    return Unauthorized(
        f"this machine was revoked ({reason}): nothing more comes to it", code="revoked"
    )


def _unless_revoked(state_dir: Path) -> None:
    """No agent answers: say so plainly if it stopped for good, its machine revoked (it
    records why in its state before it exits), rather than as a stop or a restart."""
    import sqlite3

    path = state_dir / "agent.db"
    if not path.is_file():
        return
    try:
        with contextlib.closing(
            sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=1)
        ) as db:
            row = db.execute("SELECT value FROM kv WHERE key = 'revoked'").fetchone()
    except (sqlite3.Error, OSError, ValueError):  # unreadable here: said as before
        return
    if row and isinstance(row[0], str):
        raise revoked(row[0][:300])


def call(
    state_dir: Path, request: dict[str, Any], timeout: float = 30.0, confirm: bool = False
) -> dict[str, Any]:
    """Send one request to the agent running with ``state_dir``; raise its error.
    ``confirm``: tell the agent once its answer is here (a request that hands something
    over: until then the agent keeps it for the next request). ``NoAgent``: no agent's
    socket is there. ``AgentGone``: the agent is there but not answering (stopping,
    restarting), and did not read the request. ``AgentLost``: it went away after it read
    the request, which it may have carried out."""
    if confirm:
        request = {**request, "confirm": True}
    try:
        if sys.platform != "win32":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                with _short_path(state_dir / "control.sock") as short:
                    sock.connect(short)
            except OSError:
                sock.close()
                raise
        else:
            try:
                info = json.loads((state_dir / "control.json").read_text())
                request = {**request, "token": info["token"]}
                port = int(info["port"])
            except (ValueError, KeyError, TypeError):  # being written by a starting agent
                raise ConnectionRefusedError(0, "its control.json is incomplete") from None
            sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except ConnectionRefusedError as exc:
        _unless_revoked(state_dir)
        raise AgentGone(
            f"no agent is running with state dir {state_dir} ({exc.strerror}): "
            "start it with `crc agent run` or give --state-dir"
        ) from None
    except (FileNotFoundError, NotADirectoryError) as exc:  # no such directory, or a file
        _unless_revoked(state_dir)
        raise NoAgent(
            f"no agent is running with state dir {state_dir} ({exc.strerror}): "
            "start it with `crc agent run` or give --state-dir"
        ) from None
    except PermissionError:
        raise Unavailable(
            f"permission denied on the agent's control socket in {state_dir}: "
            "run as root (or the agent's user)"
        ) from None
    except TimeoutError:
        raise Unavailable(
            f"the agent with state dir {state_dir} did not accept the connection "
            f"within {timeout:g} s"
        ) from None
    except OSError as exc:  # ELOOP, ENAMETOOLONG, EIO...: a clear error, not a traceback
        raise Unavailable(
            f"cannot reach the agent's control socket in state dir {state_dir} "
            f"({exc.strerror or exc}): check --state-dir"
        ) from None
    with sock:
        try:
            sock.sendall(json.dumps(request).encode() + b"\n")
        except OSError:  # EPIPE, ECONNRESET: its end was closed before it read anything
            raise AgentGone("the agent closed the control connection before the request") from None
        data = b""
        once = False  # the agent said it carries the request out once per id
        try:
            while True:
                if b"\n" in data and not once and request.get("id") is not None:
                    first, _, rest = data.partition(b"\n")
                    with contextlib.suppress(ValueError):
                        said = json.loads(first)
                        if isinstance(said, dict) and said.get("once") == request["id"]:
                            once, data = True, rest
                            continue
                if data.endswith(b"\n"):
                    break
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            raise Unavailable(
                f"the agent did not answer within {timeout:g} s (it may still carry the "
                "request out)"
            ) from None
        except ConnectionResetError:
            if not data and not once and sys.platform.startswith("linux"):  # unread
                raise AgentGone("the agent went away before it read the request") from None
            data = b""
        except OSError:
            data = b""
        try:
            reply: dict[str, Any] = json.loads(data)
        except ValueError:
            lost = AgentLost(
                "the agent went away after it received the request, before it answered "
                "(it may have carried it out)"
            )
            lost.once = once
            raise lost from None
        if not isinstance(reply, dict):
            raise Unavailable("the agent's answer is not a JSON object")
        if not reply.get("ok"):
            raise error_from_payload(int(reply.get("status", 500)), reply)
        if confirm:
            try:
                sock.sendall(b"ack\n")
            except OSError:
                raise AgentGone(
                    "the agent went away before its answer was confirmed: it keeps what it "
                    "answered for the next request"
                ) from None
    return reply


# What an agent makes in its state directory: its lock and database first thing at its
# start (state.py), its control socket (control.json on Windows) and credential, and
# the service's record (install.py).
_AGENT_FILES = (
    "agent.lock",
    "agent.db",
    "credential.json",
    "control.sock",
    "control.json",
    "service.json",
)


def never_used(state_dir: Path) -> bool:
    """Whether ``state_dir`` is a directory no agent ever ran in: none of the files an
    agent makes at its start is there. A script asking it would wait ``--agent-wait`` for
    an agent that is not coming (a typo, or the agent's real directory elsewhere). One
    that cannot be read is taken as used: the wait and its error say what is wrong."""
    try:
        return state_dir.is_dir() and not any((state_dir / n).exists() for n in _AGENT_FILES)
    except OSError:
        return False


def call_through_restarts(
    state_dir: Path,
    request: dict[str, Any],
    agent_wait: float = AGENT_WAIT_SECONDS,
    timeout: float = 30.0,
    on_wait: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """``call``, sent again while the agent is stopped or restarting, for ``agent_wait``
    seconds at most; then ``Unavailable``. ``on_wait`` is told once, when the wait
    starts. A request the agent may have carried out before it went away (``AgentLost``)
    is sent again only if it is in ``IDEMPOTENT_OPS``, or if the agent had said it carries
    it out once per id (``ONCE_OPS``: the request is given a random id here, the same for
    every send), else ``AgentLost`` is raised. A state directory that does not exist, or
    where no agent ever ran (``never_used``), has no agent to wait for: ``NoAgent`` at
    once."""
    op = request.get("op")
    if op in ONCE_OPS and "id" not in request:
        request = {**request, "id": secrets.token_urlsafe(18)}
    deadline = time.monotonic() + agent_wait
    told = False
    while True:
        try:
            return call(state_dir, request, timeout)
        except AgentLost as exc:
            if op not in IDEMPOTENT_OPS and not exc.once:
                raise AgentLost(
                    f"{exc.message}; `{op}` is not sent again, so that it is not done twice: "
                    "check whether it was, then run the command again if needed"
                ) from None
            error: Unavailable = exc
        except (AgentGone, NoAgent) as exc:
            if isinstance(exc, NoAgent) and not state_dir.is_dir():
                raise
            if isinstance(exc, NoAgent) and never_used(state_dir):
                raise NoAgent(
                    f"no agent is running with state dir {state_dir}: none was ever "
                    "started there (no agent.db, no credential.json); enroll one with "
                    f"`crc agent run --url URL --key KEY --state-dir {state_dir}`, or give "
                    "the --state-dir of the running agent"
                ) from None
            error = exc
        if time.monotonic() + RETRY_SECONDS > deadline:
            if agent_wait <= 0:
                raise error
            raise Unavailable(
                f"no agent answered with state dir {state_dir} within {agent_wait:g} s "
                f"(last: {error.message}): start it with `crc agent run`, or wait longer "
                "with --agent-wait / CRC_AGENT_WAIT"
            ) from None
        if not told and on_wait is not None:
            told = True
            on_wait(
                f"waiting up to {agent_wait:g} s for the agent with state dir {state_dir} "
                f"(not answering: stopped or restarting?)"
            )
        time.sleep(RETRY_SECONDS)
