"""Streams: interactive shells and TCP forwards carried through the server to an agent.

Why one WebSocket per stream, not frames multiplexed on the agent's control connection:

* **Flow control per stream.** Each stream is its own TCP connection on every hop, so
  a terminal nobody reads, or a forward whose client stops reading, stops its own
  writer (TCP windows, WebSocket send buffers) and nothing else. Multiplexed streams
  would need their own credit-based windows on top of one TCP connection.
* **No head-of-line blocking.** A 1 GiB forward never delays a ``job.run``, an ack or
  a ping on the control connection, and so never makes a busy machine look offline.
* **The control connection's guarantees stay as they are.** Its frames are numbered,
  stored and replayed (``delivery.py``); stream bytes are live and never stored, and
  mixing them in would either make them durable (pointless, costly) or create a
  second, unnumbered class of frames on it.

How a stream opens::

    master                      server                          agent
      POST /v1/groups/G/streams  ->  checks, audit, stream id
                                 -- stream.open (control WS) ->
                                 <- WS /v1/agent/streams/ID ---- (credential)
      WS /v1/streams/ID       ->  splices the two WebSockets
      <--------- binary frames: the bytes; text frames: control (below) --------->

On a stream WebSocket a *binary* message is data (terminal bytes, TCP bytes) and a
*text* message is one control object, checked here by :func:`read_control`::

    master -> agent   stream.resize  {"cols": C, "rows": R}            (shell)
    agent  -> master  stream.ready   {"half_close": true}              (forward connected)
    either way        stream.eof     {}                  (forward: no more bytes this way)
    agent  -> master  stream.exit    {"code": N}                       (shell ended)
    agent|server -> master  stream.error  {"code": ..., "message": ...}

This module holds no I/O: the frame that opens a stream, the control objects, the
limits, and the parsing of forward specifications (``8080:80``,
``127.0.0.1:8080:db:5432``), all of which the server, agent and CLI run.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInput, TooLarge
from .fields import Bool, Choice, Int, ListOf, Optional, Pattern, Spec, Text, check_hostname
from .jsoncheck import check_json
from .limits import MAX_COMMAND_BYTES
from .wire import Direction, Frame, Message, Registry, Wire, register, wire

__all__ = [
    "CONTROL_REGISTRY",
    "KINDS",
    "MAX_CHUNK_BYTES",
    "MAX_CONTROL_BYTES",
    "MAX_TERMINAL",
    "STREAM_ID",
    "ForwardSpec",
    "StreamControl",
    "StreamEof",
    "StreamError",
    "StreamExit",
    "StreamOpen",
    "StreamReady",
    "StreamRequest",
    "StreamResize",
    "check_host",
    "check_replica_url",
    "check_terminal_size",
    "new_stream_id",
    "parse_forward_spec",
    "read_control",
    "write_control",
]

KINDS = ("shell", "forward")
STDIN_MODES = ("pipe",)
MAX_TERMINAL = 4096  # columns or rows of a terminal (xterm itself stops at 4096)
MAX_CHUNK_BYTES = 256 << 10  # one data message a sender makes (a receiver takes up to 1 MiB)
MAX_CONTROL_BYTES = 4096  # one control text message
MAX_ARGS = 1000
STREAM_ID_PATTERN = r"st_[A-Za-z0-9_-]{22,64}"
STREAM_ID = Pattern(STREAM_ID_PATTERN, "stream id must look like st_<random>, not {value}")
_TERM = Pattern(r"[A-Za-z0-9._+-]{1,64}", "term must be a terminal name such as xterm-256color")


def new_stream_id() -> str:
    """A fresh stream id: 128 random bits (it names the stream; it grants nothing)."""
    import secrets

    return "st_" + secrets.token_urlsafe(16)


def check_terminal_size(cols: object, rows: object) -> tuple[int, int]:
    """``(cols, rows)`` if both are integers from 1 to MAX_TERMINAL, else InvalidInput."""
    for name, value in (("cols", cols), ("rows", rows)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"terminal {name} must be an integer", field=name)
        if not 1 <= value <= MAX_TERMINAL:
            raise InvalidInput(
                f"terminal size {cols}x{rows} is out of range: columns and rows must be "
                f"from 1 to {MAX_TERMINAL}",
                field=name,
            )
    return int(cols), int(rows)  # type: ignore[call-overload]


def check_host(value: object) -> str:
    """A forward's remote host: an IP address or an RFC 1123 host name."""
    if isinstance(value, str):
        text = value[1:-1] if value.startswith("[") and value.endswith("]") else value
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            pass
        try:
            return check_hostname(text)
        except ValueError:
            pass
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    raise InvalidInput(f"not a host name or IP address: {shown}", field="host")


def _check_command(argv: tuple[str, ...] | None, shell: str | None) -> None:
    """A command travels in one frame of the control connection: bounded in all, as a
    job's is (each item alone is bounded by its spec)."""
    size = sum(len(a.encode("utf-8", "surrogatepass")) for a in argv or ()) + len(
        (shell or "").encode("utf-8", "surrogatepass")
    )
    if size > MAX_COMMAND_BYTES:
        raise TooLarge(
            f"the command is {size} bytes; the limit is {MAX_COMMAND_BYTES}", field="argv"
        )


class _Host(Spec):
    def check(self, value: Any, name: str) -> str:
        return check_host(value)


# -- the frame that opens a stream (server -> agent, on the control connection) -----------


# A command's argv, as the agent runs it: its own bounds, NUL refused.
_ARGV = ListOf(
    Text(MAX_COMMAND_BYTES, blank_ok=True, controls_ok=True),
    MAX_ARGS,
    min_items=1,
    message="argv must be a non-empty list of strings without NUL characters",
)


@register
@dataclass(frozen=True)
class StreamOpen(Frame):
    """Dial ``/v1/agent/streams/<stream>`` and serve it: a terminal running ``argv``
    (or ``shell``, or the machine's login shell) sized ``cols`` x ``rows``, or a TCP
    connection to ``host``:``port`` from the machine."""

    TYPE = "stream.open"
    DIRECTION = Direction.TO_AGENT

    stream: str = wire(STREAM_ID)
    kind: str = wire(Choice(KINDS))
    argv: tuple[str, ...] | None = wire(Optional(_ARGV), None)
    shell: str | None = wire(Optional(Text(1024)), None)
    cols: int | None = wire(Optional(Int(1, MAX_TERMINAL)), None)
    rows: int | None = wire(Optional(Int(1, MAX_TERMINAL)), None)
    term: str | None = wire(Optional(_TERM), None)
    host: str | None = wire(Optional(_Host()), None)
    port: int | None = wire(Optional(Int(1, 65535)), None)
    #: ``"pipe"``: the master's input is not a terminal; the program reads it from a
    #: pipe (its end is an end of file, ``stream.eof``), its output still goes to the
    #: terminal. An agent that does so says ``stream.ready`` first; an older one ignores
    #: the field (the input is typed into the terminal, its end a Ctrl-D).
    stdin: str | None = wire(Optional(Choice(STDIN_MODES)), None)

    def validate(self) -> None:
        _check_command(self.argv, self.shell)


# -- a stream asked through another replica (a numbered message, delivered by the one the
# -- machine is connected to) -----------------------------------------------------------

REPLICA_URL = Pattern(
    r"https?://[A-Za-z0-9.\-]{1,253}(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?",
    "url must be a server URL such as https://10.0.0.5:8443, not {value}",
)


def check_replica_url(value: object) -> str:
    """A replica's own URL (``https://host:port``, no path)."""
    return str(REPLICA_URL.check(value.rstrip("/") if isinstance(value, str) else value, "url"))


@register
@dataclass(frozen=True)
class StreamRequest(Message):
    """``stream.open`` for a machine connected to another replica: sent as a numbered
    message (so the replica holding the machine's connection delivers it) naming the
    replica to dial, ``url``; the agent dials it only if it trusts it (one of its own
    server URLs, or any URL when it pins the server's certificate: replicas share it)."""

    TYPE = "stream.request"
    DIRECTION = Direction.TO_AGENT

    url: str = wire(REPLICA_URL)
    stream: str = wire(STREAM_ID)
    kind: str = wire(Choice(KINDS))
    argv: tuple[str, ...] | None = wire(Optional(_ARGV), None)
    shell: str | None = wire(Optional(Text(1024)), None)
    cols: int | None = wire(Optional(Int(1, MAX_TERMINAL)), None)
    rows: int | None = wire(Optional(Int(1, MAX_TERMINAL)), None)
    term: str | None = wire(Optional(_TERM), None)
    host: str | None = wire(Optional(_Host()), None)
    port: int | None = wire(Optional(Int(1, 65535)), None)
    stdin: str | None = wire(Optional(Choice(STDIN_MODES)), None)

    def validate(self) -> None:
        _check_command(self.argv, self.shell)

    def to_open(self) -> StreamOpen:
        body = {k: v for k, v in self.to_body().items() if k != "url" and v is not None}
        return StreamOpen.from_body(body)


# -- control messages on a stream's WebSocket ----------------------------------------------

CONTROL_REGISTRY = Registry()


class StreamControl(Wire):
    """One text message on a stream WebSocket (``{"type": TYPE, ...fields}``)."""

    OMIT_NONE = True

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, **self.to_body()}


@CONTROL_REGISTRY.register
@dataclass(frozen=True)
class StreamResize(StreamControl):
    TYPE = "stream.resize"
    DIRECTION = Direction.TO_AGENT

    cols: int = wire(Int(1, MAX_TERMINAL))
    rows: int = wire(Int(1, MAX_TERMINAL))


@CONTROL_REGISTRY.register
@dataclass(frozen=True)
class StreamReady(StreamControl):
    """A forward's connection is open. ``half_close``: the agent takes ``stream.eof``
    (an agent without it closes the stream when the master's side is done sending).
    For a shell asked with ``stdin: "pipe"``: the program reads its input from a pipe,
    whose end ``stream.eof`` is."""

    TYPE = "stream.ready"
    DIRECTION = Direction.TO_SERVER

    half_close: bool | None = wire(Optional(Bool()), None)


@CONTROL_REGISTRY.register
@dataclass(frozen=True)
class StreamEof(StreamControl):
    """A forward's sender has shut down its side of the connection: the receiver shuts
    down its own writing side (TCP half-close) and goes on carrying the other way. To a
    shell whose input is a pipe: the end of that input."""

    TYPE = "stream.eof"
    DIRECTION = Direction.BOTH


@CONTROL_REGISTRY.register
@dataclass(frozen=True)
class StreamExit(StreamControl):
    TYPE = "stream.exit"
    DIRECTION = Direction.TO_SERVER

    code: int = wire(Int(-(2**31), 2**31 - 1))


@CONTROL_REGISTRY.register
@dataclass(frozen=True)
class StreamError(StreamControl):
    TYPE = "stream.error"
    DIRECTION = Direction.TO_SERVER

    code: str = wire(Pattern(r"[a-z_]{1,40}", "error code must be a short lower_case word"))
    message: str = wire(Text(1000, truncate=True))


def read_control(text: str | bytes, sender: Direction) -> StreamControl:
    """Check one control message sent by ``sender`` (TO_AGENT: the master;
    TO_SERVER: the agent or the server); InvalidInput for anything else."""
    size = len(text.encode("utf-8", "surrogatepass")) if isinstance(text, str) else len(text)
    if size > MAX_CONTROL_BYTES:
        raise TooLarge(f"control message of {size} bytes; the limit is {MAX_CONTROL_BYTES}")
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidInput("control message is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidInput("control message must be a JSON object")
    kind = data.get("type")
    cls = CONTROL_REGISTRY.lookup(kind, StreamControl) if isinstance(kind, str) else None
    if cls is None or cls.DIRECTION not in (sender, Direction.BOTH):
        raise InvalidInput(f"unexpected control message {str(kind)[:40]!r}", code="unknown_type")
    check_json(data, what="control message")
    return cls.from_body(data)


def write_control(control: StreamControl) -> str:
    return json.dumps(control.to_wire(), separators=(",", ":"))


# -- forward specifications ------------------------------------------------------------------

_PORT = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True)
class ForwardSpec:
    """``[LOCAL_ADDR:]LOCAL_PORT:REMOTE_HOST:REMOTE_PORT`` or ``LOCAL_PORT:REMOTE_PORT``
    (the machine's own 127.0.0.1). Port 0 locally: any free port."""

    local_addr: str
    local_port: int
    remote_host: str
    remote_port: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "local_addr": self.local_addr,
            "local_port": self.local_port,
            "remote_host": self.remote_host,
            "remote_port": self.remote_port,
        }


def _split(spec: str) -> list[str]:
    """Split on ``:``, keeping ``[v6:addr]`` whole."""
    parts: list[str] = []
    buf = ""
    depth = 0
    for ch in spec:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == ":" and depth == 0:
            parts.append(buf)
            buf = ""
        else:
            buf += ch
    parts.append(buf)
    return parts


def _port(text: str, what: str, zero_ok: bool) -> int:
    if not _PORT.fullmatch(text):
        raise InvalidInput(f"{what} {text[:20]!r} is not a port number", field="forward")
    port = int(text)
    if not (0 if zero_ok else 1) <= port <= 65535:
        raise InvalidInput(
            f"{what} {port} is out of range (1-65535{', or 0 for any' if zero_ok else ''})",
            field="forward",
        )
    return port


def parse_forward_spec(spec: object, default_addr: str = "127.0.0.1") -> ForwardSpec:
    """Parse what ``crc forward`` takes; InvalidInput says the accepted forms."""
    usage = (
        "use LOCAL_PORT:REMOTE_PORT or [LOCAL_ADDR:]LOCAL_PORT:REMOTE_HOST:REMOTE_PORT, "
        "e.g. 8080:80 or 127.0.0.1:5433:db:5432"
    )
    if not isinstance(spec, str) or not spec or len(spec) > 600:
        raise InvalidInput(f"invalid forward {str(spec)[:40]!r}: {usage}", field="forward")
    parts = _split(spec)
    if len(parts) == 2:
        addr, local, host, remote = default_addr, parts[0], "127.0.0.1", parts[1]
    elif len(parts) == 3:
        addr, (local, host, remote) = default_addr, parts
    elif len(parts) == 4:
        addr, local, host, remote = parts
    else:
        raise InvalidInput(f"invalid forward {spec[:40]!r}: {usage}", field="forward")
    if addr.startswith("[") and addr.endswith("]"):
        addr = addr[1:-1]
    try:
        addr = str(ipaddress.ip_address(addr)) if addr != "localhost" else "127.0.0.1"
    except ValueError:
        raise InvalidInput(
            f"local address {addr[:40]!r} is not an IP address: {usage}", field="forward"
        ) from None
    return ForwardSpec(
        local_addr=addr,
        local_port=_port(local, "local port", zero_ok=True),
        remote_host=check_host(host),
        remote_port=_port(remote, "remote port", zero_ok=False),
    )
