"""``crc shell``, ``crc forward`` and ``crc sessions``: into a machine through its agent.

``crc shell`` puts the operator's terminal in raw mode (every key, Ctrl-C included,
goes to the remote terminal), follows its size (SIGWINCH) and exits with the remote
program's exit code. ``crc forward`` listens locally and carries each connection over
a stream of its own, until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import click

from ..errors import Conflict, CrcError, InvalidInput, NotFound, Unauthorized, Unavailable
from .numbers import WholeNumber
from .output import emit_json, json_option, print_table, safe
from .signals import caught
from .trailing import TrailingCommand

__all__ = ["forward", "sessions", "shell"]


def _async_client() -> Any:
    from ..master.aclient import AsyncClient

    return AsyncClient.from_profile()


# -- crc shell ---------------------------------------------------------------------------------


def _terminal_size() -> tuple[int, int]:
    for fd in (1, 0, 2):
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(fd)
            if size.columns and size.lines:
                return size.columns, size.lines
    return 80, 24


async def _read_fd(fd: int) -> bytes:
    loop = asyncio.get_running_loop()
    while True:
        try:
            return os.read(fd, 65536)
        except BlockingIOError:
            pass
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, ready.set_result, None)
        try:
            await ready
        finally:
            loop.remove_reader(fd)


#: How long the end of a piped input waits for the machine to say how it takes it (an
#: agent older than ``stdin: "pipe"`` says nothing: then the end is a Ctrl-D, as before).
PIPE_ANSWER_SECONDS = 10.0


async def _open_shell(client: Any, group: str, body: dict[str, Any], piped: bool) -> Any:
    """The shell's stream; the input a pipe (``stdin: "pipe"``) when it is not a
    terminal, unless the server is older than that (it refuses the field)."""
    from ..master.streams import open_stream

    opener = await client._stream_opener()
    if piped:
        try:
            return await open_stream(opener, group, body | {"stdin": "pipe"})
        except InvalidInput as exc:
            if "stdin" not in exc.message:
                raise
    return await open_stream(opener, group, body)


@contextlib.contextmanager
def _offline_unavailable() -> Iterator[None]:
    """The one rule of crc shell and crc forward: the machine not connected (the
    server's Conflict ``machine_offline``) is it being unavailable (exit 6), not a
    conflict with what the group is or has (exit 5)."""
    try:
        yield
    except Conflict as exc:
        if exc.code != "machine_offline":
            raise
        raise Unavailable(exc.message, code=exc.code) from None


def _start_failed_code(message: str) -> int:
    """The exit code of a program that could not be started, as a shell's: 127 (not
    found) or 126 (found, but cannot run)."""
    missing = any(
        words in message.lower() for words in ("no such file or directory", "cannot find the file")
    )
    return 127 if missing else 126


def _shell_error(control: Any) -> CrcError:
    """A ``stream.error`` of a shell as crc's error: a program that cannot be started
    exits as a shell's would, 127 (not found) or 126 (found, but cannot run)."""
    from ..master.streams import stream_error

    error = stream_error(control)
    if control.code == "start_failed":
        error.exit_code = _start_failed_code(control.message)
    return error


async def _shell(
    group: str,
    machine: str,
    argv: list[str] | None,
    shell: str | None,
    record: bool | None,
    as_json: bool = False,
) -> tuple[int, str]:
    from ..master.streams import StreamClosed, shell_body
    from ..protocol.streams import StreamEof, StreamError, StreamExit, StreamReady, write_control

    tty = os.isatty(0)
    cols, rows = _terminal_size()
    term = os.environ.get("TERM") or "xterm-256color"
    body = shell_body(machine, argv, shell, cols, rows, term, record)
    async with _async_client() as client:
        with _offline_unavailable():
            stream = await _open_shell(client, group, body, piped=not tty)
    loop = asyncio.get_running_loop()
    saved = None
    if tty:
        import termios
        import tty as ttymod

        saved = termios.tcgetattr(0)
        ttymod.setraw(0)
    blocking = os.get_blocking(0)
    os.set_blocking(0, False)
    resized = asyncio.Event()
    # The machine's first word: stream.ready if the program reads a pipe (the end of
    # the input is then stream.eof), output or the end otherwise (an older agent).
    answered = asyncio.Event()
    piped: list[bool] = []
    # --json: the output as text in JSON lines (a character split between two chunks is
    # decoded whole; bytes that are not UTF-8 become U+FFFD).
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    signalled: list[int] = []
    main = asyncio.current_task()

    def on_winch() -> None:
        resized.set()

    def on_signal(signum: int) -> None:  # SIGTERM, SIGHUP: tidy up (the terminal), end
        if not signalled and main is not None:
            signalled.append(signum)
            main.cancel()

    stops = caught(("SIGTERM", "SIGHUP"))  # not one ignored when crc started (nohup)
    try:
        if tty:
            loop.add_signal_handler(signal.SIGWINCH, on_winch)
        for sig in stops:
            loop.add_signal_handler(sig, on_signal, sig)

        async def keyboard() -> None:
            while True:
                data = await _read_fd(0)
                if data:
                    await stream.send(data)
                    continue
                # stdin ended (not a terminal): the end of the remote program's input
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(answered.wait(), PIPE_ANSWER_SECONDS)
                if piped:
                    await stream.ws.send(write_control(StreamEof()))
                else:  # typed into a terminal: its end is a Ctrl-D
                    await stream.send(b"\x04")
                return

        async def winch() -> None:
            while True:
                await resized.wait()
                resized.clear()
                await stream.resize(*_terminal_size())

        async def screen() -> int | None:
            while True:
                try:
                    message = await stream.recv()
                except StreamClosed:
                    code: int | None = stream.exit_code
                    return code
                if isinstance(message, StreamReady):
                    piped.append(True)
                answered.set()
                if isinstance(message, bytes):
                    if as_json:  # stdout carries JSON only: the output inside it
                        text = decoder.decode(message)
                        if text:  # fd 1 may be non-blocking as fd 0 is: _write_all
                            doc = {"machine": machine, "data": text}
                            line = json.dumps(doc, separators=(",", ":")) + "\n"
                            _write_all(1, line.encode())
                    else:
                        _write_all(1, message)
                elif isinstance(message, StreamExit):
                    return message.code
                elif isinstance(message, StreamError):
                    raise _shell_error(message)

        reader = asyncio.ensure_future(keyboard())
        sizer = asyncio.ensure_future(winch())
        try:
            code = await screen()
        except asyncio.CancelledError:
            if not signalled:
                raise
            uncancel = getattr(main, "uncancel", None)  # Python 3.11+: taken, not pending
            if uncancel is not None:
                uncancel()
            code = None
        finally:
            reader.cancel()
            sizer.cancel()
            await asyncio.gather(reader, sizer, return_exceptions=True)
            await stream.close()
    finally:
        if tty:
            loop.remove_signal_handler(signal.SIGWINCH)
        for sig in stops:
            loop.remove_signal_handler(sig)
        os.set_blocking(0, blocking)
        if saved is not None:
            import termios

            with contextlib.suppress(OSError):  # a terminal hung up (SIGHUP) is gone
                termios.tcsetattr(0, termios.TCSADRAIN, saved)
    if signalled:
        raise _Stopped(signalled[0])
    rest = decoder.decode(b"", final=True)
    if as_json and rest:
        emit_json({"machine": machine, "data": rest})
    if code is None:
        raise Unavailable("the shell's connection closed before the program ended")
    return code, str(stream.id)


class _Stopped(Exception):
    """crc shell got SIGTERM or SIGHUP: the terminal was restored, the session closed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        view = view[n:]


@click.command(cls=TrailingCommand)
@click.argument("group")
@click.argument("machine")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--shell", "shell", help="The shell to start (default: the machine's login shell).")
@click.option(
    "--no-record",
    "no_record",
    is_flag=True,
    help="Do not record this session (refused if the group forces recording).",
)
@json_option
def shell(
    group: str,
    machine: str,
    command: tuple[str, ...],
    shell: str | None,
    no_record: bool,
    as_json: bool,
) -> None:
    """An interactive terminal on MACHINE of GROUP, through its agent.

    \b
    crc shell lab dev                 # the machine's login shell
    crc shell lab db -- sudo -u postgres psql
    Exit code: the remote program's (crc's own failures: 2-9); one outside 0-255
    exits 1 (a signal -N: 128+N).
    """
    from ..master.types import shell_exit_code
    from ..protocol.names import check_name

    check_name(machine, "machine")  # before the profile and the server (exit 2)
    argv = list(command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    try:
        code, stream = asyncio.run(
            _shell(group, machine, argv or None, shell, False if no_record else None, as_json)
        )
    except _Stopped as stop:
        # As `crc run` does: said (when stderr is still there), and 128 + the signal.
        name = signal.Signals(stop.signum).name
        with contextlib.suppress(OSError):
            click.echo(f"crc: {name}: the session on {machine} is closed", err=True)
        sys.exit(128 + stop.signum)
    if as_json:  # after the session (and its output, as JSON lines): how it ended
        emit_json({"group": group, "machine": machine, "stream": stream, "exit_code": code})
    # The remote code as a shell can show it (master/types.py shell_exit_code): 256 must
    # not become 0.
    sys.exit(shell_exit_code(code))


# -- crc forward -------------------------------------------------------------------------------

#: How often a forward checks its master token, group and machines (deleted or
#: revoked) while no connection comes: one read of the group.
TOKEN_CHECK_SECONDS = 5.0
_HTTP_PORTS = {80, 3000, 5000, 8000, 8008, 8080, 8888}
_HTTPS_PORTS = {443, 8443}


def _url(addr: str, port: int, remote_port: int) -> str:
    host = f"[{addr}]" if ":" in addr else addr
    if remote_port in _HTTP_PORTS:
        return f"http://{host}:{port}/"
    if remote_port in _HTTPS_PORTS:
        return f"https://{host}:{port}/"
    return f"{host}:{port}"


def _check_local_ports(targets: list[tuple[str, Any]]) -> None:
    """One local port given twice is refused before anything listens (InvalidInput)."""
    seen: dict[tuple[str, int], str] = {}
    for _, spec in targets:
        if not spec.local_port:  # 0: any free port, a new one each time
            continue
        key = (spec.local_addr, spec.local_port)
        host = f"[{spec.local_addr}]" if ":" in spec.local_addr else spec.local_addr
        where = f"{host}:{spec.local_port}"
        if key in seen:
            raise InvalidInput(
                f"local address {where} is given twice: each forward needs a LOCAL_PORT "
                "of its own (or 0 for any)",
                field="local_port",
            )
        seen[key] = where


async def _forward(group: str, targets: list[tuple[str, Any]], as_json: bool) -> None:
    from ..master.streams import ForwardServer, open_forward, serve_forward

    _check_local_ports(targets)
    async with _async_client() as client:
        opener = await client._stream_opener()
        info = await client.group(group)
        states = {m["name"]: m.get("state") for m in info.get("machines", [])}
        for machine, spec in targets:
            if machine not in states:
                raise NotFound(f"no machine {machine!r} in group {group!r}", field="machine")
            if states[machine] not in ("ready", "enrolled"):
                raise Unavailable(
                    f"machine {machine!r} is {states[machine]}: see `crc status {group}`",
                    code="machine_offline",
                )
            # One connection first: an unreachable remote port fails now, clearly. It is
            # marked a probe: audited, and left out of `crc sessions list` by default.
            with _offline_unavailable():
                probe = await open_forward(opener, group, machine, spec, probe=True)
            await probe.close()
        servers: list[ForwardServer] = []
        stop = asyncio.Event()
        ended: list[CrcError] = []
        machines = {machine for machine, _ in targets}

        def on_error(message: str) -> None:
            click.echo(f"crc: forward: {safe(message)}", err=True)

        recheck = asyncio.Event()

        def end(exc: CrcError) -> None:
            # The master token was revoked (or is unknown), or the group or a machine of
            # the forward is gone (deleted, or the machine revoked): no connection can
            # be carried any more, so the forward ends (exit 3, or 4), as a shell does.
            if not ended:
                ended.append(exc)
            stop.set()

        def on_ended(exc: CrcError) -> None:
            if isinstance(exc, NotFound):
                # A connection found something gone: said, and checked at once (a group
                # or machine deleted ends the forward; a stream that expired does not).
                on_error(exc.message)
                recheck.set()
            else:
                end(exc)

        async def still_there() -> None:
            # A revoked token, a deleted group, or a machine deleted or revoked ends the
            # forward also when no connection comes to find it. The group's read says
            # all: a revoked or unknown token is refused it (401) as any request is.
            while True:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(recheck.wait(), TOKEN_CHECK_SECONDS)
                recheck.clear()
                try:
                    now = await client.group(group)
                except (Unauthorized, NotFound) as exc:
                    end(exc)
                    return
                except CrcError:  # the server away for a moment: checked again later
                    continue
                states = {m.get("name"): m.get("state") for m in now.get("machines", [])}
                for name in sorted(machines):
                    if name not in states:
                        end(NotFound(f"no machine {name!r} in group {group!r}"))
                        return
                    if states[name] == "revoked":
                        end(
                            NotFound(
                                f"machine {name!r} of group {group!r} is revoked: "
                                f"see `crc status {group}`",
                                code="machine_revoked",
                            )
                        )
                        return

        try:
            # Every local port listening before any is announced: one that cannot
            # listen fails the command with nothing said to be forwarded.
            for machine, spec in targets:
                server = await serve_forward(opener, group, machine, spec, on_error, on_ended)
                servers.append(server)
            for (machine, spec), server in zip(targets, servers, strict=True):
                port = server.port
                remote = f"{spec.remote_host}:{spec.remote_port}"
                url = _url(spec.local_addr, port, spec.remote_port)
                if as_json:
                    emit_json(
                        {
                            "machine": machine,
                            "local": f"{spec.local_addr}:{port}",
                            "local_port": port,
                            "remote": remote,
                            "url": url,
                        }
                    )
                else:
                    click.echo(f"{url} -> {machine}:{remote}")
                    sys.stdout.flush()
            if not as_json:
                click.echo("forwarding until Ctrl-C", err=True)
            loop = asyncio.get_running_loop()
            for sig in caught(("SIGINT", "SIGTERM")):  # not one ignored when crc started
                loop.add_signal_handler(sig, stop.set)
            checking = asyncio.ensure_future(still_there())
            try:
                await stop.wait()
            finally:
                checking.cancel()
                await asyncio.gather(checking, return_exceptions=True)
        finally:
            for server in servers:
                await server.aclose()
        if ended:
            why = ended[0]
            if isinstance(why, NotFound):  # the group or a machine deleted, or revoked
                raise NotFound(f"the forward is closed: {why.message}", code=why.code)
            message = f"{why.message.rstrip('.')}: the forward is closed"
            raise Unauthorized(message, code=why.code)


@click.command()
@click.argument("group")
@click.argument("machine", required=False)
@click.argument("specs", nargs=-1)
@click.option(
    "--scenario",
    "scenario",
    type=click.Path(dir_okay=False),
    help="Open every `expose:` port of the scenario's machines (GROUP: the scenario's).",
)
@json_option
def forward(
    group: str, machine: str | None, specs: tuple[str, ...], scenario: str | None, as_json: bool
) -> None:
    """Carry local TCP connections to a port reachable from MACHINE.

    \b
    crc forward lab web 8080:80                 # http://127.0.0.1:8080 -> web's port 80
    crc forward lab web 5433:db.lab:5432        # a peer's address, from web
    crc forward lab web 0.0.0.0:8080:10.1.0.5:80
    crc forward lab --scenario lab.yaml         # every `expose:` of the scenario
    Listens on 127.0.0.1 unless LOCAL_ADDR says otherwise; stays until Ctrl-C.
    """
    from ..protocol.streams import parse_forward_spec

    targets: list[tuple[str, Any]] = []
    if scenario:
        from ..master.scenario.model import load_scenario

        sc = load_scenario(scenario)
        for m in sc.machines:
            if machine and m.name != machine:
                continue
            for local, port in m.forwards:
                targets.append((m.name, parse_forward_spec(f"{local}:{port}")))
        if specs:
            raise InvalidInput("give either --scenario or forward specifications, not both")
        if not targets:
            raise InvalidInput(f"scenario {scenario} exposes no port (`expose: [80]`)")
    else:
        if not machine or not specs:
            raise InvalidInput(
                "usage: crc forward GROUP MACHINE [LOCAL_ADDR:]LOCAL_PORT:REMOTE_HOST:"
                "REMOTE_PORT (or LOCAL_PORT:REMOTE_PORT)"
            )
        targets = [(machine, parse_forward_spec(s)) for s in specs]
    asyncio.run(_forward(group, targets, as_json))


# -- crc sessions ------------------------------------------------------------------------------


@click.group()
def sessions() -> None:
    """Shell sessions and forwards of a group: list them, replay recordings."""


def _ended_as(row: dict[str, Any]) -> str:
    """The EXIT column of a session: the program's exit code; 127 or 126 for a program
    that could not be started (as crc shell exits); "cut" for a session its server was
    killed in; "lost" for a shell whose machine went away before its program ended;
    "ended" for another end without an exit code (a revoked token, a stopped server).
    A forward has no exit code: blank, unless cut."""
    if row.get("cut"):
        return "cut"
    code = row.get("exit_code")
    if code is not None:
        return str(code)
    if row.get("kind") != "shell":
        return ""
    error_code = row.get("error_code")
    error = str(row.get("error") or "")
    if error_code == "start_failed" or (error_code is None and error.startswith("cannot run ")):
        return str(_start_failed_code(error))
    if error_code in ("machine_disconnected", "machine_unreachable", "machine_revoked") or (
        error_code is None and "closed the session before its program ended" in error
    ):
        return "lost"
    return "ended"


@sessions.command("list")
@click.argument("group")
@click.option("--limit", type=WholeNumber(1, 1000), default=100, show_default=True)
@click.option(
    "--probes",
    is_flag=True,
    help="Also list the connections crc forward makes at its start to check the remote "
    "port (--limit counts them then).",
)
@json_option
def sessions_list(group: str, limit: int, probes: bool, as_json: bool) -> None:
    """The group's ended shell sessions and forwards, with who, bytes and duration.

    EXIT: the program's exit code; 127/126: the program could not be started (not
    found / cannot run); lost: the machine went away first; ended: ended otherwise
    (a revoked token, a stopped server); cut: the server was killed meanwhile.
    """
    from ..master.client import Client

    with Client.from_profile() as c:
        rows = c.sessions(group, limit, probes=probes)  # the server leaves probes out
    if as_json:
        emit_json({"group": group, "sessions": rows})
        return
    table = []
    for r in rows:
        what = r.get("target") or " ".join(r.get("argv") or []) or r.get("shell") or "login shell"
        kind = str(r.get("kind", ""))
        table.append(
            [
                str(r.get("stream", "")),
                str(r.get("by", "")),
                str(r.get("machine", "")),
                f"{kind} (probe)" if r.get("probe") else kind,
                str(what),
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(r.get("started") or 0))),
                f"{float(r.get('duration') or 0):.1f}s",
                f"{r.get('bytes_to_machine', 0)}/{r.get('bytes_from_machine', 0)}",
                _ended_as(r),
                "yes" if r.get("recorded") else "no",
            ]
        )
    print_table(
        [
            "ID",
            "BY",
            "MACHINE",
            "KIND",
            "WHAT",
            "STARTED",
            "DURATION",
            "BYTES IN/OUT",
            "EXIT",
            "REC",
        ],
        table,
    )


class _Number(click.ParamType):  # type: ignore[type-arg]
    """A finite number from ``low`` to ``high`` (or 0, with ``zero``): never NaN or an
    infinity, which click.FloatRange lets through."""

    name = "number"

    def __init__(self, low: float, high: float, zero: bool = False) -> None:
        self.low, self.high, self.zero = low, high, zero

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if (self.zero and number == 0) or (
            math.isfinite(number) and self.low <= number <= self.high
        ):
            return number
        also = " or 0" if self.zero else ""
        self.fail(f"{value} is not in the range {self.low:g} to {self.high:g}{also}", param, ctx)


@sessions.command("play")
@click.argument("stream")
@click.option(
    "--speed",
    type=_Number(0.01, 1000, zero=True),
    default=1.0,
    show_default=True,
    help="Playback speed, from 0.01 to 1000; 0 writes everything at once.",
)
@click.option(
    "--idle-limit",
    type=_Number(0, 86400),
    default=2.0,
    show_default=True,
    help="Longest pause kept, in seconds (at most 86400).",
)
@click.option("--cast", "cast_only", is_flag=True, help="Print the asciinema v2 file instead.")
@json_option
def sessions_play(
    stream: str, speed: float, idle_limit: float, cast_only: bool, as_json: bool
) -> None:
    """Replay a recorded shell session (ID from `crc sessions list`) on this terminal."""
    from ..master.client import Client

    with Client.from_profile() as c:
        cast = c.recording(stream)
    if as_json:
        emit_json({"stream": stream, "format": "asciicast-v2", "cast": cast})
        return
    if cast_only:
        sys.stdout.write(cast)
        return
    last = 0.0
    for line in cast.splitlines()[1:]:
        try:
            t, kind, text = json.loads(line)
        except (ValueError, TypeError):
            raise InvalidInput("the recording is not an asciinema v2 file") from None
        if kind != "o":
            continue
        if speed > 0:
            time.sleep(min(max(float(t) - last, 0.0), idle_limit) / speed)
        last = float(t)
        _write_all(1, str(text).encode("utf-8", "surrogateescape"))
