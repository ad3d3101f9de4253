"""The master's end of shells and forwards (protocol/streams.py says how streams work).

:func:`open_stream` asks the server for a stream (``POST``) and dials its WebSocket;
:class:`AsyncStream` is that WebSocket with the protocol's messages typed;
:func:`serve_forward` listens on a local port and carries each accepted connection
over a stream of its own. ``Client`` and ``AsyncClient`` (and the CLI) are built on
these.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import (
    Conflict,
    CrcError,
    InvalidInput,
    NotFound,
    ShellTimedOut,
    Unauthorized,
    Unavailable,
    error_from_answer,
)
from ..protocol.limits import MAX_FRAME_BYTES
from ..protocol.names import check_name, listed
from ..protocol.streams import (
    MAX_CHUNK_BYTES,
    ForwardSpec,
    StreamControl,
    StreamEof,
    StreamError,
    StreamExit,
    StreamReady,
    StreamResize,
    check_terminal_size,
    read_control,
    write_control,
)
from ..protocol.wire import Direction
from ..relay import carry_both_ways
from . import calls
from .waits import check_timeout

__all__ = [
    "AsyncStream",
    "ForwardServer",
    "ForwardThread",
    "Opener",
    "ShellSession",
    "StreamClosed",
    "open_stream",
    "serve_forward",
    "session_ended",
    "stream_error",
]

log = logging.getLogger("crc.streams")

#: What sends a Call (the clients' ``_do``): the POST that opens a stream.
Do = Callable[[calls.Call], Awaitable[Any]]


@dataclass
class Opener:
    """Where streams are opened: the clients' call, base URL, token and TLS context."""

    do: Do
    url: str
    token: str
    ssl: Any  # ssl.SSLContext | None


class StreamClosed(Unavailable):
    """The stream's WebSocket closed: the session has ended (or was closed here), and
    takes no more input and gives no more output. An ``Unavailable`` (exit 6, code
    ``session_ended``), with the program's ``exit_code`` in ``details`` when it is
    known."""

    code = "session_ended"

    def __init__(self, message: str = "the session has ended", **details: Any) -> None:
        super().__init__(message, **details)


def session_ended(stream_id: str, exit_code: int | None, closed: bool = False) -> StreamClosed:
    """What a session says when it is used after it ended: the exit code if known."""
    if closed:
        what = f"the session {stream_id} was closed (close() was called)"
    elif exit_code is None:
        what = f"the session {stream_id} has ended"
    else:
        what = f"the session {stream_id} has ended (exit code {exit_code})"
    return StreamClosed(what, stream=stream_id, exit_code=exit_code)


def stream_error(control: StreamError) -> CrcError:
    """A ``stream.error`` as the error hierarchy's error (for messages and exit codes)."""
    if control.code == "connect_failed":
        # Nothing answers at the remote end (yet): like a server that cannot be reached,
        # exit 6, not a conflict with what the group is or has (exit 5).
        return Unavailable(control.message, code=control.code)
    if control.code in ("start_failed", "unsupported", "protocol"):
        return Conflict(control.message, code=control.code)
    if control.code == "unauthorized":  # the master token was revoked meanwhile
        return Unauthorized(control.message, code=control.code)
    if control.code == "machine_revoked":  # as its group deleted: gone for good (exit 4)
        return NotFound(control.message, code=control.code)
    if control.code.endswith("_disabled"):
        from ..errors import Forbidden

        return Forbidden(control.message, code=control.code)
    return Unavailable(control.message, code=control.code)


def _ws_url(url: str, stream: str) -> str:
    base = url.rstrip("/")
    for plain, secure in (("http://", "ws://"), ("https://", "wss://")):
        if base.startswith(plain):
            base = secure + base[len(plain) :]
    return f"{base}/v1/streams/{stream}"


class AsyncStream:
    """One open stream. ``recv()`` gives bytes (data) or a control message; after
    ``stream.exit`` ``exit_code`` is set. Used once it has ended (``send``, ``recv``,
    ``resize``), it raises ``StreamClosed``: an ``Unavailable`` saying so, with the exit
    code if known."""

    def __init__(self, ws: Any, info: dict[str, Any]) -> None:
        self.ws = ws
        self.info = info
        self.id: str = info["stream"]
        self.exit_code: int | None = None
        #: The machine takes ``stream.eof`` (a forward's TCP half-close).
        self.half_close = False
        self._gone = False  # the other end closed the stream
        self._closed_here = False

    def _ended(self) -> StreamClosed:
        return session_ended(self.id, self.exit_code, self._closed_here)

    async def _send(self, message: bytes | str) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            await self.ws.send(message)
        except ConnectionClosed:
            raise self._ended() from None

    async def send(self, data: bytes) -> None:
        for i in range(0, len(data), MAX_CHUNK_BYTES):
            await self._send(data[i : i + MAX_CHUNK_BYTES])

    async def resize(self, cols: int, rows: int) -> None:
        cols, rows = check_terminal_size(cols, rows)
        await self._send(write_control(StreamResize(cols=cols, rows=rows)))

    async def recv(self) -> bytes | StreamControl:
        """The next message; raises StreamClosed (an ``Unavailable``) at the end, or
        the stream's error."""
        from websockets.exceptions import ConnectionClosed

        try:
            message = await self.ws.recv()
        except ConnectionClosed:
            self._gone = True
            raise self._ended() from None
        if isinstance(message, bytes):
            return message
        control = read_control(message, Direction.TO_SERVER)
        if isinstance(control, StreamExit):
            self.exit_code = control.code
        return control

    async def close(self) -> None:
        """The closing handshake; the connection is ended even when the handshake fails
        or is cancelled (a peer that never answers leaves no socket behind)."""
        # Closed here before it ended: said so, if it is used afterwards.
        self._closed_here = self._closed_here or not (self._gone or self.exit_code is not None)
        try:
            await self.ws.close()
        except asyncio.CancelledError:
            self.ws.transport.abort()
            raise
        except Exception:  # noqa: BLE001 -- closing: any failure ends in abort()
            self.ws.transport.abort()

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def open_stream(opener: Opener, group: str, body: dict[str, Any]) -> AsyncStream:
    """POST the stream, then dial its WebSocket (errors: the hierarchy's, from the
    server's answer)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    info = dict(await opener.do(calls.open_stream(group, body)))
    try:
        ws = await connect(
            _ws_url(opener.url, info["stream"]),
            ssl=opener.ssl,
            additional_headers={"Authorization": f"Bearer {opener.token}"},
            max_size=MAX_FRAME_BYTES,
            compression=None,
            open_timeout=30,
            ping_interval=20,
            ping_timeout=20,
        )
    except InvalidStatus as exc:
        raise error_from_answer(
            opener.url,
            exc.response.status_code,
            exc.response.headers.get("Content-Type"),
            bytes(exc.response.body or b""),
        ) from None
    except (OSError, asyncio.TimeoutError) as exc:
        raise Unavailable(f"cannot reach {opener.url} for the stream: {exc}") from None
    return AsyncStream(ws, info)


# -- forwards ----------------------------------------------------------------------------


async def open_forward(
    opener: Opener, group: str, machine: str, spec: ForwardSpec, probe: bool = False
) -> AsyncStream:
    """A stream connected to ``spec``'s remote end, or the machine's error. ``probe``:
    a connection made only to check that the remote end answers (audited as any, and
    marked so that the list of sessions can leave it out; a server older than the mark
    is asked without it)."""
    body: dict[str, Any] = {"machine": machine, "kind": "forward", "host": spec.remote_host}
    body["port"] = spec.remote_port
    if probe:
        try:
            stream = await open_stream(opener, group, body | {"probe": True})
        except InvalidInput as exc:
            if "probe" not in exc.message:
                raise
            stream = await open_stream(opener, group, body)
    else:
        stream = await open_stream(opener, group, body)
    try:
        first = await stream.recv()
    except StreamClosed:
        raise Unavailable(f"the forward to {machine} closed before it connected") from None
    except BaseException:
        await stream.close()
        raise
    if isinstance(first, StreamReady):
        stream.half_close = bool(first.half_close)
        return stream
    await stream.close()
    if isinstance(first, StreamError):
        if first.code == "connect_failed":
            raise _connect_failed(machine, spec, first.message)
        raise stream_error(first)
    what = f"{len(first)} bytes of data" if isinstance(first, bytes) else first.TYPE
    raise InvalidInput(f"unexpected first message on a forward: {what}", code="protocol")


def _connect_failed(machine: str, spec: ForwardSpec, reason: str) -> Unavailable:
    """The machine could not connect to the forward's remote end: said with the machine
    and the address (the agent's reason names the address as "this machine")."""
    host = f"[{spec.remote_host}]" if ":" in spec.remote_host else spec.remote_host
    where = f"{host}:{spec.remote_port}"
    for prefix in (f"{spec.remote_host}:{spec.remote_port} from this machine: ", f"{where}: "):
        if reason.startswith(prefix):
            reason = reason[len(prefix) :]
            break
    # The hint only where something answered "no one here": a name that does not
    # resolve, or a host that does not answer, is not a question of a listening service.
    hint = (
        " (is a service listening there, as seen from the machine?)"
        if "refused" in reason.lower()
        else ""
    )
    return Unavailable(
        f"machine {machine} cannot connect to {where}: {reason}{hint}", code="connect_failed"
    )


async def _carry(stream: AsyncStream, reader: asyncio.StreamReader, writer: Any) -> int:
    """Bytes both ways between a local connection and a stream until both sides are
    done (each side's EOF passed on as a half-close, when the machine takes it) or
    either closes; returns the bytes received. A ``stream.error`` that ended it is
    raised afterwards, as the error hierarchy's (Unauthorized: the token was revoked)."""
    got = 0
    failed: list[StreamError] = []

    async def up() -> bool:
        while data := await reader.read(MAX_CHUNK_BYTES):
            await stream.ws.send(data)
        if stream.half_close:  # the local side is done sending; the machine's may go on
            await stream.ws.send(write_control(StreamEof()))
        return stream.half_close

    async def down() -> bool:
        nonlocal got
        while True:
            try:
                message = await stream.recv()
            except StreamClosed:
                return False
            if isinstance(message, bytes):
                got += len(message)
                writer.write(message)
                await writer.drain()
            elif isinstance(message, StreamEof):
                if writer.can_write_eof():
                    writer.write_eof()
                return True
            elif isinstance(message, StreamError):
                failed.append(message)
                return False

    try:
        await carry_both_ways(up(), down())
    finally:
        await stream.close()
    if failed:
        raise stream_error(failed[0])
    return got


#: Streams being opened at once by one forward (more connections wait their turn): the
#: server counts a connection as unauthenticated until its token is checked, and
#: refuses too many of those from one address (server/httpguard.py).
MAX_OPENING = 16


class ForwardServer:
    """A listening forward: its socket, its accept loop and the connections it carries,
    every one owned here (``aclose`` ends them all; nothing is left open)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.tasks: set[asyncio.Task[Any]] = set()
        self.opening = asyncio.Semaphore(MAX_OPENING)
        self.listening = False

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    async def aclose(self) -> None:
        """Stop listening and end every connection in flight."""
        if self.listening:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.listening = False
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.sock.close()


async def serve_forward(
    opener: Opener,
    group: str,
    machine: str,
    spec: ForwardSpec,
    on_error: Callable[[str], None] | None = None,
    on_unauthorized: Callable[[CrcError], None] | None = None,
) -> ForwardServer:
    """Listen on ``spec``'s local address (why it cannot: ``listen_error``) and carry each
    connection over its own stream. The caller must ``aclose()`` the answer.
    ``on_error`` hears why a connection could not be carried; ``on_unauthorized``
    (if given, instead) that the server refused the master token (revoked), or no
    longer has the group or the machine (NotFound: deleted): no later connection can
    be carried either. Listening fails as ``listen_error`` says."""

    def failed(exc: CrcError) -> None:
        if isinstance(exc, (Unauthorized, NotFound)) and on_unauthorized is not None:
            on_unauthorized(exc)
        elif on_error is not None:
            on_error(exc.message)
        else:
            log.warning("forward: %s", exc.message)

    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(spec.local_addr, spec.local_port, type=socket.SOCK_STREAM)
        family = infos[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(infos[0][4])
            sock.listen(512)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        raise listen_error(spec.local_addr, spec.local_port, exc) from None
    fwd = ForwardServer(sock)

    async def carry(conn: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=conn, limit=MAX_CHUNK_BYTES)
        except OSError:
            conn.close()
            return
        try:
            async with fwd.opening:
                try:
                    stream = await open_forward(opener, group, machine, spec)
                except CrcError as exc:
                    failed(exc)
                    return
            try:
                await _carry(stream, reader, writer)
            except (OSError, StreamClosed):
                pass
            except CrcError as exc:
                failed(exc)
        finally:
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    def accept() -> None:
        # Accepted and handed to a task in one callback: no accepted socket is ever
        # in flight where aclose() could miss it.
        while True:
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: try again at the next event
                log.warning("forward: accept failed: %s", exc)
                return
            conn.setblocking(False)
            task = asyncio.ensure_future(carry(conn))
            fwd.tasks.add(task)
            task.add_done_callback(fwd.tasks.discard)

    loop.add_reader(sock.fileno(), accept)
    fwd.listening = True
    return fwd


def listen_error(addr: str, port: int, exc: OSError) -> CrcError:
    """Why a forward cannot listen on ``addr:port``, as the error hierarchy's: the port
    in use (Conflict, ``port_in_use``); an address that is not this computer's, one that
    does not resolve, or a port this user may not take (InvalidInput: the command is to
    change); anything else (Conflict, ``listen_failed``)."""
    import errno

    where = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
    reason = exc.strerror or str(exc)
    if isinstance(exc, socket.gaierror):
        return InvalidInput(
            f"cannot listen on {where}: {addr} does not resolve ({reason})",
            code="listen_address",
            field="local_addr",
        )
    if exc.errno == errno.EADDRINUSE:
        return Conflict(
            f"cannot listen on {where}: {reason} (another program uses the port? pick "
            "another LOCAL_PORT, or 0 for any)",
            code="port_in_use",
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return InvalidInput(
            f"cannot listen on {where}: {addr} is not an address of this computer "
            "(LOCAL_ADDR: 127.0.0.1, 0.0.0.0 or one of its own addresses)",
            code="listen_address",
            field="local_addr",
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        low = " (ports below 1024 need administrator rights)" if 0 < port < 1024 else ""
        return InvalidInput(
            f"cannot listen on {where}: {reason}{low}: pick another LOCAL_PORT",
            code="listen_denied",
            field="local_port",
        )
    return Conflict(f"cannot listen on {where}: {reason}", code="listen_failed")


def forward_spec(
    remote_port: int, remote_host: str, local_port: int, local_addr: str
) -> ForwardSpec:
    """The SDK's arguments as a checked ForwardSpec."""
    from ..protocol.streams import parse_forward_spec

    addr = f"[{local_addr}]" if ":" in local_addr else local_addr
    host = f"[{remote_host}]" if ":" in remote_host else remote_host
    return parse_forward_spec(f"{addr}:{local_port}:{host}:{remote_port}")


class ForwardThread:
    """A forward served by an event loop in a thread of its own (the sync SDK's)."""

    def __init__(
        self, make_client: Callable[[], Any], group: str, machine: str, spec: ForwardSpec
    ) -> None:
        import threading

        self.make_client, self.group, self.machine, self.spec = make_client, group, machine, spec
        self.port = 0
        self.error: BaseException | None = None
        self.started = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, name="crc-forward", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        try:
            async with self.make_client() as client:
                async with client.forward(
                    self.group,
                    self.machine,
                    self.spec.remote_port,
                    self.spec.remote_host,
                    self.spec.local_port,
                    self.spec.local_addr,
                ) as port:
                    self.port = port
                    self.loop = asyncio.get_running_loop()
                    self.stop = asyncio.Event()
                    self.started.set()
                    await self.stop.wait()
        except BaseException as exc:  # noqa: BLE001 -- handed to the caller's thread
            self.error = exc
        finally:
            self.started.set()

    def __enter__(self) -> int:
        self.thread.start()
        self.started.wait()
        if self.error is not None:
            self.thread.join()
            raise self.error
        return self.port

    def __exit__(self, *exc: object) -> None:
        if self.loop is not None and self.stop is not None:
            self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join()


def shell_body(
    machine: str,
    argv: Iterable[str] | None,
    shell: str | None,
    cols: int,
    rows: int,
    term: str | None,
    record: bool | None,
) -> dict[str, Any]:
    """The POST body of a shell (the machine's name and the terminal size checked here
    first, clearly: InvalidInput)."""
    check_name(machine, "machine")  # "" too: a name no machine can have
    cols, rows = check_terminal_size(cols, rows)
    body: dict[str, Any] = {"machine": machine, "kind": "shell", "cols": cols, "rows": rows}
    if argv is not None:
        body["argv"] = listed(argv, "argv")
    for key, value in (("shell", shell), ("term", term), ("record", record)):
        if value is not None:
            body[key] = value
    return body


# -- the sync SDK's objects ---------------------------------------------------------------


class ShellSession:
    """A shell opened by ``Client.shell``: ``send`` keystrokes, ``recv`` output,
    ``resize``, ``wait`` for the exit code; ``close`` (or ``with``) always."""

    def __init__(self, ws: Any, info: dict[str, Any]) -> None:
        self.ws = ws
        self.info = info
        self.id: str = info["stream"]
        self.exit_code: int | None = None
        self.ended = False
        self._closed_here = False

    def _send(self, message: bytes | str) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            self.ws.send(message)
        except ConnectionClosed:
            raise session_ended(self.id, self.exit_code, self._closed_here) from None

    def send(self, data: bytes | str) -> None:
        """Keystrokes (or any input); ``Unavailable`` (``StreamClosed``: the exit code
        if known) once the session has ended."""
        raw = data.encode() if isinstance(data, str) else data
        for i in range(0, len(raw), MAX_CHUNK_BYTES):
            self._send(raw[i : i + MAX_CHUNK_BYTES])

    def resize(self, cols: int, rows: int) -> None:
        cols, rows = check_terminal_size(cols, rows)
        self._send(write_control(StreamResize(cols=cols, rows=rows)))

    def recv(self, timeout: float | None = None) -> bytes:
        """The next output; b"" once the session ended (``exit_code`` is then set).
        ``ShellTimedOut`` (a ``TimedOut`` and a ``TimeoutError``) if nothing came within
        ``timeout`` seconds (None: no limit; else InvalidInput unless 0 to a week, as for
        every wait of the SDK)."""
        from websockets.exceptions import ConnectionClosed

        if timeout is not None:
            timeout = check_timeout(timeout)

        while not self.ended:
            try:
                message = self.ws.recv(timeout)
            except ConnectionClosed:
                self.ended = True
                break
            except TimeoutError:  # websockets' own: said as the SDK's waits say it
                raise ShellTimedOut(f"no output within {timeout:g} s") from None
            if isinstance(message, bytes):
                return message
            control = read_control(message, Direction.TO_SERVER)
            if isinstance(control, StreamExit):
                self.exit_code = control.code
            elif isinstance(control, StreamError):
                self.ended = True
                self.close()
                raise stream_error(control)
        return b""

    def expect(self, pattern: bytes | str, timeout: float = 30.0) -> bytes:
        """The output read until it holds ``pattern`` (all of it, up to the end of the
        chunk that completed it). ``ShellTimedOut`` if ``pattern`` did not come within
        ``timeout`` seconds: a ``TimedOut`` and a ``TimeoutError``, whose ``seen`` is the
        output read meanwhile (gone from the session: ``recv`` does not give it again).
        Unavailable if the session ends first."""
        import time

        want = pattern.encode() if isinstance(pattern, str) else pattern
        seen = bytearray()
        timeout = check_timeout(timeout)
        deadline = time.monotonic() + timeout
        while want not in seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _expect_timed_out(pattern, timeout, bytes(seen))
            try:
                chunk = self.recv(left)
            except ShellTimedOut:
                raise _expect_timed_out(pattern, timeout, bytes(seen)) from None
            if not chunk:
                raise Unavailable(f"the session ended before {want!r} appeared")
            seen += chunk
        return bytes(seen)

    def wait(self, timeout: float | None = None) -> int:
        """Read (and drop) the rest of the output; the remote exit code (``ShellTimedOut``
        if some step of it waits longer than ``timeout``)."""
        if timeout is not None:
            timeout = check_timeout(timeout)
        while self.recv(timeout):
            pass
        if self.exit_code is None:
            raise Unavailable("the session closed before its program ended")
        return self.exit_code

    def close(self) -> None:
        self._closed_here = self._closed_here or not (self.ended or self.exit_code is not None)
        with contextlib.suppress(Exception):
            self.ws.close()

    def __enter__(self) -> ShellSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: How much of the end of the output an expect's timeout shows in its message.
EXPECT_TAIL_BYTES = 200


def _expect_timed_out(pattern: bytes | str, timeout: float, seen: bytes) -> ShellTimedOut:
    """``expect``'s timeout, saying what came instead (its last bytes)."""
    if not seen:
        instead = "no output came"
    else:
        tail = seen[-EXPECT_TAIL_BYTES:].decode("utf-8", errors="replace")
        cut = "..." if len(seen) > EXPECT_TAIL_BYTES else ""
        instead = f"the output ({len(seen)} bytes, in .seen) ended with {cut}{tail!r}"
    return ShellTimedOut(f"{pattern!r} not seen within {timeout:g} s: {instead}", seen=seen)


def connect_sync(url: str, token: str, ssl: Any, info: dict[str, Any]) -> ShellSession:
    """Dial a stream's WebSocket from blocking code."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    try:
        ws = connect(
            _ws_url(url, info["stream"]),
            ssl=ssl,
            additional_headers={"Authorization": f"Bearer {token}"},
            max_size=MAX_FRAME_BYTES,
            compression=None,
            open_timeout=30,
        )
    except InvalidStatus as exc:
        raise error_from_answer(
            url,
            exc.response.status_code,
            exc.response.headers.get("Content-Type"),
            bytes(exc.response.body or b""),
        ) from None
    except (OSError, TimeoutError) as exc:
        raise Unavailable(f"cannot reach {url} for the stream: {exc}") from None
    return ShellSession(ws, info)
