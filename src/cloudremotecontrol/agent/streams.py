"""The agent's end of shells and forwards (protocol/streams.py says how streams work).

A ``stream.open`` frame on the control connection makes the agent dial one more
WebSocket to the server for that stream, with its credential, and serve it: a
terminal (agent/terminal.py) or a TCP connection made from this machine. Whatever the
server asks, the group's opt-outs learned at enrollment (``--no-shell``,
``--no-forward``) are refused here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from typing import Any

from .. import __version__
from ..errors import CrcError
from ..protocol.frames import FEATURE_EOF
from ..protocol.limits import HEARTBEAT_SECONDS, MAX_FRAME_BYTES
from ..protocol.streams import (
    MAX_CHUNK_BYTES,
    StreamEof,
    StreamError,
    StreamExit,
    StreamOpen,
    StreamReady,
    StreamResize,
    read_control,
    write_control,
)
from ..protocol.wire import Direction
from ..relay import carry_both_ways
from ..terminal import safe
from ..tlspin import client_context
from .deferred import proxy_option

__all__ = ["CONNECT_SECONDS", "StreamServer"]

log = logging.getLogger("crc.agent.streams")
CONNECT_SECONDS = 10.0  # a forward's TCP connection on this machine
DRAIN_SECONDS = 2.0  # output still read from a terminal after its program exited
STREAMS_OFF_KEY = "streams_off"
MAX_DIALING = 16  # the group's opt-outs, recorded at enrollment


def _stream_url(url: str, stream: str) -> str:
    base = url.rstrip("/")
    for plain, secure in (("http://", "ws://"), ("https://", "wss://")):
        if base.startswith(plain):
            base = secure + base[len(plain) :]
    return f"{base}/v1/agent/streams/{stream}"


class StreamServer:
    """Serves the streams the server asks for; ``agent`` is the running Agent (its URL,
    credential, state and task owner)."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        # Dials at once (others wait): until its credential is checked, a connection
        # counts against the server's bound on unauthenticated connections per address.
        self.dialing = asyncio.Semaphore(MAX_DIALING)

    def open(self, frame: StreamOpen, url: str | None = None) -> None:
        """Serve ``frame``'s stream, dialing this agent's server, or ``url`` (another
        replica of it) if trusted: one of the agent's own server URLs, or any URL when
        the agent pins the server's certificate (replicas share it, so the credential
        only ever goes to a holder of the pinned key)."""
        if url is not None:
            own = [u.rstrip("/") for u in self.agent.urls]
            if url.rstrip("/") not in own and not self.agent.cred.fingerprint:
                log.warning(
                    "stream %s: not dialing %s (not one of this agent's server URLs, and "
                    "no pinned certificate to check it by)",
                    frame.stream,
                    url,
                )
                return
        self.agent._spawn(self.serve(frame, url or self.agent.url))

    async def serve(self, frame: StreamOpen, url: str) -> None:
        """Dial and serve one stream: run as a task nobody awaits, so whatever ends it is
        logged here (one WARNING line for what is expected), never left in the task."""
        from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

        try:
            ws = await self._dial(frame, url)
        except (CrcError, WebSocketException, OSError, asyncio.TimeoutError) as exc:
            # A URL that cannot carry the pinned certificate (plain http://), a refused
            # or garbled handshake, no route: nothing to answer, the server's side of
            # the stream ends on its own.
            why = exc.message if isinstance(exc, CrcError) else (str(exc) or type(exc).__name__)
            log.warning("stream %s (%s): could not dial %s: %s", frame.stream, frame.kind, url, why)
            return
        off = frozenset(self.agent.cred.streams_off or ())
        try:
            async with ws:
                if frame.kind in off:
                    await _refuse(
                        ws,
                        f"{frame.kind}_disabled",
                        f"this machine's group was created with --no-{frame.kind}",
                    )
                elif frame.kind == "shell":
                    await serve_shell(ws, frame, self.agent)
                else:
                    await serve_forward(ws, frame, self.agent)
        except (ConnectionClosed, InvalidStatus, OSError, asyncio.TimeoutError) as exc:
            log.warning("stream %s (%s) ended: %s", frame.stream, frame.kind, exc)
        except Exception:  # a task nobody awaits: logged (with its traceback), not leaked
            log.exception("stream %s (%s) failed", frame.stream, frame.kind)

    async def _dial(self, frame: StreamOpen, url: str) -> Any:
        from websockets.asyncio.client import connect

        agent = self.agent
        ctx, _ = client_context(url, agent.cred.fingerprint, agent.cred.cert_pem)
        async with self.dialing:
            return await connect(
                _stream_url(url, frame.stream),
                ssl=ctx,
                additional_headers={"Authorization": f"Bearer {agent.cred.credential}"},
                max_size=MAX_FRAME_BYTES,
                compression=None,
                **proxy_option(),
                open_timeout=20,
                ping_interval=HEARTBEAT_SECONDS,
                ping_timeout=HEARTBEAT_SECONDS,
                user_agent_header=f"crc-agent/{__version__}",
            )


async def _refuse(ws: Any, code: str, message: str) -> None:
    await ws.send(write_control(StreamError(code=code, message=message)))


async def serve_forward(ws: Any, frame: StreamOpen, agent: Any) -> None:
    """Connect to ``host:port`` from here and carry bytes both ways until either end
    closes, or, with half-close, until the master's side ends after both sides' eof."""
    host, port = frame.host or "127.0.0.1", frame.port or 0
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=MAX_CHUNK_BYTES), CONNECT_SECONDS
        )
    except asyncio.TimeoutError:
        await _refuse(ws, "connect_failed", f"{host}:{port}: no answer in {CONNECT_SECONDS:g} s")
        return
    except socket.gaierror as exc:  # the name does not resolve: no connection was tried
        why = exc.strerror or str(exc)
        await _refuse(
            ws, "connect_failed", f"{host}:{port} from this machine: cannot resolve {host} ({why})"
        )
        return
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        await _refuse(ws, "connect_failed", f"{host}:{port} from this machine: {reason}")
        return
    half_close = FEATURE_EOF in agent.server_features
    await ws.send(write_control(StreamReady(half_close=half_close or None)))

    async def upstream() -> bool:  # the remote port -> the master
        while data := await reader.read(MAX_CHUNK_BYTES):
            await ws.send(data)
        if half_close:  # the remote end shut down its side; the master's may go on
            await ws.send(write_control(StreamEof()))
        return half_close

    async def downstream() -> bool:  # the master -> the remote port
        shut = False
        async for message in ws:
            if isinstance(message, bytes) and not shut:
                writer.write(message)
                await writer.drain()
            elif isinstance(message, str) and not shut and _is_eof(message, frame.stream):
                shut = True  # then the master closes the stream once both sides are done
                if writer.can_write_eof():
                    writer.write_eof()
        return False  # the stream closed

    try:
        await carry_both_ways(upstream(), downstream())
    finally:
        writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await writer.wait_closed()


def _is_eof(message: str, stream: str) -> bool:
    try:
        return isinstance(read_control(message, Direction.TO_AGENT), StreamEof)
    except Exception as exc:  # noqa: BLE001 -- hostile input: ignored, logged
        log.warning("stream %s: ignoring a control message: %s", stream, exc)
        return False


async def serve_shell(ws: Any, frame: StreamOpen, agent: Any) -> None:
    """A terminal running the command (or a login shell) until it exits; its exit code
    is sent as ``stream.exit``."""
    term: Any
    env = {k: v for k, v in os.environ.items() if k in _ENV_KEPT}
    if sys.platform == "win32":
        from .conpty import ConPtyTerminal, conpty_available, windows_login_argv

        if not conpty_available():
            await _refuse(
                ws, "unsupported", "this Windows has no pseudo console (ConPTY): 1809 or later"
            )
            return
        env = dict(os.environ)
        env.update(CRC_MACHINE=agent.cred.machine, CRC_GROUP=agent.cred.group)
        program, argv = (
            (frame.argv[0], list(frame.argv)) if frame.argv else windows_login_argv(frame.shell)
        )
        term = ConPtyTerminal()
        cwd = env.get("USERPROFILE") or env.get("SystemRoot") or None
    else:
        from .terminal import Terminal

        program, argv, cwd = _posix_session(frame, agent, env)
        term = Terminal(stdin_pipe=frame.stdin == "pipe")
    try:
        try:
            await term.start(program, argv, frame.cols or 80, frame.rows or 24, env, cwd)
        except OSError as exc:
            # The program's name as given, escaped (a control character in it must not
            # reach a terminal, and the server refuses a message that carries one).
            why = safe(exc.strerror or exc)
            await _refuse(ws, "start_failed", f"cannot run {program!r}: {why}")
            return
        # The input a pipe (the master's is not a terminal): said before any output, so
        # the master sends the end of its input as stream.eof, not as a Ctrl-D.
        piped = bool(getattr(term, "stdin_pipe", False))
        if piped:
            await ws.send(write_control(StreamReady(half_close=True)))

        async def output() -> None:
            while data := await term.read():
                await ws.send(data)

        async def keyboard() -> None:
            async for message in ws:
                if isinstance(message, bytes):
                    await term.write(message)
                    continue
                try:
                    control = read_control(message, Direction.TO_AGENT)
                except Exception as exc:  # noqa: BLE001 -- hostile input: ignored, logged
                    log.warning("stream %s: ignoring a control message: %s", frame.stream, exc)
                    continue
                if isinstance(control, StreamResize):
                    term.resize(control.cols, control.rows)
                elif isinstance(control, StreamEof) and piped:
                    term.end_input()  # the program reads the end of its input

        reading = asyncio.ensure_future(output())
        typing = asyncio.ensure_future(keyboard())
        waiting = asyncio.ensure_future(term.wait())
        try:
            await asyncio.wait({waiting, typing}, return_when=asyncio.FIRST_COMPLETED)
            if waiting.done():
                # The program exited: what it wrote last is still in the terminal.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(reading), DRAIN_SECONDS)
                await ws.send(write_control(StreamExit(code=waiting.result())))
        finally:
            for task in (reading, typing, waiting):
                task.cancel()
            await asyncio.gather(reading, typing, waiting, return_exceptions=True)
    finally:
        await term.close()


_ENV_KEPT = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "HOME", "USER", "LOGNAME")


def _posix_session(
    frame: StreamOpen, agent: Any, env: dict[str, str]
) -> tuple[str, list[str], str]:
    """The program, argv and directory of a POSIX terminal session; fills ``env``."""
    import pwd

    from .terminal import login_argv

    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.update(
        TERM=frame.term or "xterm-256color",
        CRC_MACHINE=agent.cred.machine,
        CRC_GROUP=agent.cred.group,
        CRC_AGENT_STATE_DIR=str(agent.state.dir),
    )
    if sys.platform != "win32":  # always so here; says it to the type checker too
        with contextlib.suppress(KeyError):
            pw = pwd.getpwuid(os.getuid())
            env.setdefault("HOME", pw.pw_dir)
            env.setdefault("USER", pw.pw_name)
            env.setdefault("LOGNAME", pw.pw_name)
    if frame.argv:
        program, argv = frame.argv[0], list(frame.argv)
    else:
        program, argv = login_argv(frame.shell)
        env["SHELL"] = program
    home = env.get("HOME")
    return program, argv, home if home and os.path.isdir(home) else "/"
