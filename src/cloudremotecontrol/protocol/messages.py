"""The message catalogue: the envelope every numbered message travels in, and one typed
class per message type, with who sends it and the limits of each field.

==================  =============  =====================================================
type                direction      body
==================  =============  =====================================================
job.run             server→agent   job_id, argv | command, shell, env, cwd, timeout
job.cancel          server→agent   job_id, before_start
hosts.sync          server→agent   job_id, group, entries [[ip, machine], ...]
file.put            server→agent   job_id, sha256, size, path, mode, owner, new_mode,
                                   name
file.get            server→agent   job_id, path
system.ready        agent→server   (nothing)
progress            agent→server   text, percent, source
facts               agent→server   hostname, os, os_release, arch, ips, private_ips,
                                   public_ips, agent_version, boot_id, python
job.started         agent→server   job_id
job.output          agent→server   job_id, stream, data
job.result          agent→server   job_id, status, exit_code, reason, started, output
message.failed      agent→server   seq, type, id, reason, attempts (a dead letter)
user.*              peer           any JSON object (data, never a command)
==================  =============  =====================================================

Everything a machine sends is hostile input: it is checked here, once, where it is
decoded, and only the typed result reaches the code that acts on it. A machine can never
send what the server sends (``job.run``, ``file.put``, ``hosts.sync``...): the server
refuses any type whose direction it does not receive.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import InvalidInput, TooLarge
from .fields import (
    MAX_SEQ,
    Bool,
    Choice,
    Hostname,
    Int,
    IpAddress,
    JsonObject,
    ListOf,
    Name,
    Number,
    Optional,
    Pair,
    Pattern,
    Spec,
    StrMap,
    Text,
    check_push_path,
)
from .jsoncheck import escaped, is_unicode
from .limits import (
    MAX_COMMAND_BYTES,
    MAX_FACT_ADDRESSES,
    MAX_FILE_BYTES,
    MAX_MACHINES_PER_GROUP,
    MAX_MESSAGE_BODY_BYTES,
    MAX_OUTPUT_CHUNK_BYTES,
    MAX_TIMEOUT_SECONDS,
)
from .names import check_message_type
from .wire import REGISTRY, Direction, Message, Side, register, wire, wire_fields

#: Output chunks one folded ``job.result`` may carry (the frame's size bounds it too).
MAX_FOLDED_CHUNKS = 64

__all__ = [
    "FILE_MODE_HEADER",
    "JOB_KINDS",
    "SHELLS",
    "Envelope",
    "Facts",
    "FileGet",
    "FilePut",
    "HostsSync",
    "JobCancel",
    "JobOutput",
    "JobResult",
    "JobRun",
    "JobStarted",
    "MessageFailed",
    "Progress",
    "SystemReady",
    "UserMessage",
    "decode_file_mode",
    "decode_message",
    "new_id",
]

SHELLS = ("bash", "sh", "powershell", "cmd")
TERMINAL_STATUSES = ("succeeded", "failed", "timed_out", "cancelled", "lost")
MAX_ENV_VARS = 1000
MAX_ARGS = 10_000
MAX_REASON_BYTES = 500
_ID_MAX = 256

JOB_ID = Text(128, message="job_id must be a non-empty string")
OWNER_PATTERN = r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}(:[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31})?"
#: ``0`` is ``000``, as chmod(1) takes it.
MODE_PATTERN = r"0|0?[0-7]{3,4}"


def new_id() -> str:
    return uuid.uuid4().hex


# -- the envelope --------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """``{id, group, from, to, type, body, correlation_id, created}`` of every message.

    The fields that route it are checked here; its body is checked by the message's
    class (``decode_message``): typed fields, or a bounded JSON object for ``user.*``.
    Nothing else of a body is kept or walked."""

    id: str
    group: str
    sender: str
    to: str
    type: str
    body: dict[str, Any] = field(default_factory=dict)
    correlation_id: str | None = None
    created: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "group": self.group,
            "from": self.sender,
            "to": self.to,
            "type": self.type,
            "body": self.body,
            "correlation_id": self.correlation_id,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, data: object) -> Envelope:
        if not isinstance(data, dict):
            raise InvalidInput("message must be a JSON object")
        body = data.get("body")
        if body is None:  # no body (or null): an empty one
            body = {}
        elif not isinstance(body, dict):  # 0, false, "" or [] too: not an empty object
            raise InvalidInput("message body must be a JSON object")
        correlation_id = data.get("correlation_id")
        if correlation_id is not None and (
            not isinstance(correlation_id, str) or len(correlation_id) > _ID_MAX
        ):
            raise InvalidInput("correlation_id must be a string")
        if correlation_id is not None and not is_unicode(correlation_id):
            raise InvalidInput("correlation_id must be valid Unicode text")
        raw_created = data.get("created")
        if raw_created is None:
            raw_created = 0.0
        elif isinstance(raw_created, bool) or not isinstance(raw_created, int | float):
            raise InvalidInput("malformed message: created must be a time")  # "", "1", false
        try:
            created = float(raw_created)
        except OverflowError:  # an int such as 10**400
            raise InvalidInput("malformed message: created must be a time") from None
        if not math.isfinite(created):
            raise InvalidInput("malformed message: created must be a time")
        return cls(
            id=_str(data, "id"),
            group=_str(data, "group"),
            sender=_str(data, "from"),
            to=_str(data, "to"),
            type=_str(data, "type"),
            body=body,
            correlation_id=correlation_id,
            created=created,
        )

    @classmethod
    def make(
        cls,
        group: str,
        sender: str,
        to: str,
        type: str,
        body: dict[str, Any] | None = None,
        correlation_id: str | None = None,
    ) -> Envelope:
        return cls(new_id(), group, sender, to, type, body or {}, correlation_id, time.time())

    @classmethod
    def of(
        cls,
        message: Message,
        group: str,
        sender: str,
        to: str,
        correlation_id: str | None = None,
    ) -> Envelope:
        """The envelope carrying ``message``."""
        return cls.make(group, sender, to, message.type_name, message.to_body(), correlation_id)


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value or len(value) > _ID_MAX:
        raise InvalidInput(f"message field {key!r} must be a non-empty string")
    if not is_unicode(value):
        raise InvalidInput(f"message field {key!r} must be valid Unicode text")
    return value


def decode_message(env: Envelope, receiver: Side) -> Message:
    """The typed message ``env`` carries, checked; InvalidInput (code ``unknown_type``)
    for a type ``receiver`` does not take."""
    cls = REGISTRY.lookup(env.type, Message)
    if cls is None:
        raise InvalidInput(f"unknown message type {env.type!r}", code="unknown_type")
    if receiver not in cls.DIRECTION.receivers:
        who = "machines may not send" if receiver is Side.SERVER else "agents do not take"
        raise InvalidInput(f"{who} {env.type!r} messages", code="unknown_type")
    return cls.from_envelope(env.type, env.body)


# -- server -> agent -----------------------------------------------------------------------


@register
@dataclass(frozen=True)
class JobRun(Message):
    """Run a command: exactly one of ``argv`` and ``command`` (a shell string)."""

    TYPE = "job.run"
    DIRECTION = Direction.TO_AGENT

    job_id: str = wire(JOB_ID)
    argv: tuple[str, ...] | None = wire(
        Optional(
            ListOf(
                Text(MAX_COMMAND_BYTES, blank_ok=True, controls_ok=True),
                MAX_ARGS,
                min_items=1,
                message="argv must be a non-empty list of strings without NUL characters",
            )
        ),
        None,
    )
    command: str | None = wire(
        Optional(
            Text(
                MAX_COMMAND_BYTES,
                controls_ok=True,
                message="command must be a non-empty string without NUL characters",
            )
        ),
        None,
    )
    shell: str | None = wire(
        Optional(Choice(SHELLS, message="unknown shell {value!r}: use one of {choices}")), None
    )
    env: dict[str, str] = wire(  # noqa: RUF009 -- wire() returns a dataclasses.field
        # The one rule both agents can keep: execve(2) and Windows' CreateProcess take
        # any name but "" and one holding "=" (the separator) or NUL (the terminator),
        # and so does Python's subprocess on each. Names real programs use go beyond
        # POSIX's portable [A-Za-z_][A-Za-z0-9_]* (lowercase ones, `npm_config_*`,
        # `ProgramFiles(x86)`, `java.home`-style dotted ones), so they are not refused.
        StrMap(
            Pattern(
                r"[^=\x00]+",
                "invalid variable name {value!r} in env: a name must be non-empty, "
                "without '=' or NUL characters",
            ),
            Text(MAX_COMMAND_BYTES, blank_ok=True, controls_ok=True),
            MAX_ENV_VARS,
            message="env must map variable names to strings without NUL characters: "
            "the value of {key!r} is not one",
        ),
        factory=dict,
    )
    cwd: str | None = wire(
        Optional(Text(4096, controls_ok=True, message="cwd must be a non-empty path")), None
    )
    timeout: float | None = wire(
        Optional(
            Number(
                0,
                MAX_TIMEOUT_SECONDS,
                low_open=True,
                message=f"timeout must be more than 0 and at most {MAX_TIMEOUT_SECONDS} "
                "seconds (a week)",
            )
        ),
        None,
    )

    def validate(self) -> None:
        if (self.argv is None) == (self.command is None):
            raise InvalidInput("give either argv (a list of strings) or command (a string)")
        size = (
            sum(len(a.encode()) for a in self.argv)
            if self.argv is not None
            else len((self.command or "").encode())
        )
        if size > MAX_COMMAND_BYTES:
            raise TooLarge(f"command is {size} bytes; the limit is {MAX_COMMAND_BYTES}")
        if self.timeout is not None:
            object.__setattr__(self, "timeout", float(self.timeout))


@register
@dataclass(frozen=True)
class JobCancel(Message):
    """Stop a job (``before_start``: it was cancelled while still queued)."""

    TYPE = "job.cancel"
    DIRECTION = Direction.TO_AGENT

    job_id: str = wire(JOB_ID)
    before_start: bool = wire(Bool(), False)


@register
@dataclass(frozen=True)
class HostsSync(Message):
    """Write the group's machines into the hosts file: ``entries`` are ``(ip, name)``."""

    TYPE = "hosts.sync"
    DIRECTION = Direction.TO_AGENT

    job_id: str = wire(JOB_ID)
    group: str = wire(Name("group"))
    entries: tuple[tuple[str, str], ...] = wire(
        ListOf(Pair(IpAddress(), Name("machine")), MAX_MACHINES_PER_GROUP)
    )


class _PushPath(Spec):
    def check(self, value: Any, name: str) -> str:
        return check_push_path(value)


class _FileName(Spec):
    """A file's name, never a path: no separator of either system (``/``, ``\\``), not
    ``.`` or ``..``, at most 255 bytes, and a push path's rule (no control characters).
    The agent checks it again by its own system's rules (Windows: no ``:``)."""

    def check(self, value: Any, name: str) -> str:
        if (
            not isinstance(value, str)
            or value in ("", ".", "..")
            or any(c in value for c in "/\\")
            or len(value.encode("utf-8", "surrogatepass")) > 255
        ):
            raise InvalidInput(
                f"invalid {name} {str(value)[:80]!r}: a file's name, without / or \\",
                field=name,
            )
        check_push_path(f"/{value}")  # a push path's rule: no control characters
        return value


@register
@dataclass(frozen=True)
class FilePut(Message):
    """Fetch blob ``sha256`` from the server and write it at ``path``."""

    TYPE = "file.put"
    DIRECTION = Direction.TO_AGENT

    job_id: str = wire(JOB_ID)
    sha256: str = wire(Pattern(r"[0-9a-f]{64}", "sha256 must be 64 lowercase hex digits"))
    size: int = wire(Int(0, MAX_FILE_BYTES))
    path: str = wire(_PushPath())
    mode: str | None = wire(
        Optional(Pattern(MODE_PATTERN, "invalid mode {value!r}: use octal like 0640")), None
    )
    owner: str | None = wire(
        Optional(Pattern(OWNER_PATTERN, "invalid owner {value!r}: use USER or USER:GROUP")),
        None,
    )
    #: The mode of the master's own file: a new file gets its permission bits, less the
    #: agent's umask (``mode`` forces one). Optional: an older agent ignores it, an older
    #: master sends none (a new file then gets 0666 less the umask).
    new_mode: str | None = wire(
        Optional(Pattern(MODE_PATTERN, "invalid new_mode {value!r}: use octal like 0640")),
        None,
    )
    #: The file's own name (LOCAL's): a ``path`` naming a directory on the machine is
    #: written as ``path/name``. Optional: without it such a path is refused.
    name: str | None = wire(Optional(_FileName()), None)


@register
@dataclass(frozen=True)
class FileGet(Message):
    """Upload the file at ``path`` to the server for pull job ``job_id``."""

    TYPE = "file.get"
    DIRECTION = Direction.TO_AGENT

    job_id: str = wire(JOB_ID)
    path: str = wire(_PushPath())  # the rule of a push's path: no control characters


#: The header of a pull's upload (``PUT /v1/agent/uploads/{job_id}``) that says the
#: file's mode on the machine, in octal: a new local file gets its permission bits.
#: Optional: an older agent sends none (a new file then gets 0666 less the umask).
FILE_MODE_HEADER = "X-File-Mode"


def decode_file_mode(value: object) -> int | None:
    """A file mode a machine reported (``FILE_MODE_HEADER``'s octal text, or the int
    the server answers with): an int within 0..0o7777, or None when there is none.
    InvalidInput for anything else: it comes from the machine."""
    if value is None:
        return None
    shown = str(value)[:20]
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 6:
        value = int(value, 8) if all(c in "01234567" for c in value) else -1
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o7777:
        raise InvalidInput(
            f"invalid file mode {shown!r}: an octal mode within 0..7777",
            field="mode",
        )
    return value


#: Messages that carry a job: a machine that cannot use one reports the job failed.
JOB_KINDS: frozenset[str] = frozenset({JobRun.TYPE, HostsSync.TYPE, FilePut.TYPE, FileGet.TYPE})


# -- agent -> server -----------------------------------------------------------------------


@register
@dataclass(frozen=True)
class SystemReady(Message):
    """The machine is ready (its provisioning is done)."""

    TYPE = "system.ready"
    DIRECTION = Direction.TO_SERVER


@register
@dataclass(frozen=True)
class Progress(Message):
    """A progress line (text longer than 1,000 bytes is cut, not refused)."""

    TYPE = "progress"
    DIRECTION = Direction.TO_SERVER

    text: str = wire(
        Text(1000, truncate=True, controls_ok=True, nul_ok=True, message="progress needs a text")
    )
    percent: float | None = wire(
        Optional(Number(0, 100, message="percent must be between 0 and 100")), None
    )
    source: str | None = wire(Optional(Text(256, truncate=True, controls_ok=True)), None)


@register
@dataclass(frozen=True)
class Facts(Message):
    """What a machine reports about itself. Addresses and host names reach peers' hosts
    files and scenario templates, so each one must be a plain address or an RFC 1123
    host name; what is not is left out, and listed in ``rejected`` (not sent on the
    wire: the server records it as a ``facts.rejected`` event)."""

    TYPE = "facts"
    DIRECTION = Direction.TO_SERVER

    hostname: str | None = wire(Optional(Hostname()), None)
    os: str | None = wire(Optional(Text(32)), None)
    os_release: str | None = wire(Optional(Text(256)), None)
    arch: str | None = wire(Optional(Text(32)), None)
    ips: tuple[str, ...] = wire(ListOf(IpAddress(), MAX_FACT_ADDRESSES), ())
    private_ips: tuple[str, ...] = wire(ListOf(IpAddress(), MAX_FACT_ADDRESSES), ())
    public_ips: tuple[str, ...] = wire(ListOf(IpAddress(), MAX_FACT_ADDRESSES), ())
    agent_version: str | None = wire(Optional(Text(64)), None)
    boot_id: str | None = wire(Optional(Text(64)), None)
    python: str | None = wire(Optional(Text(32)), None)
    rejected: tuple[str, ...] = field(default=(), compare=False)

    MAX_REJECTED: ClassVar[int] = 20

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Facts:
        """Keep every valid fact; leave out (and list) each invalid one, each invalid
        address of a list, and unknown keys - one bad value does not cost the rest."""
        values: dict[str, Any] = {}
        rejected: list[str] = []
        known = set()
        for f, spec in wire_fields(cls):
            known.add(f.name)
            raw = body.get(f.name)
            if raw is None:
                continue
            if isinstance(spec, ListOf) and isinstance(raw, list):
                kept: list[str] = []
                for item in raw[: spec.max_items]:
                    try:
                        kept.append(spec.item.check(item, f.name))
                    except InvalidInput as exc:
                        rejected.append(exc.message)
                if len(raw) > spec.max_items:
                    rejected.append(
                        f"{f.name}: {len(raw) - spec.max_items} beyond the first "
                        f"{spec.max_items} left out"
                    )
                values[f.name] = tuple(kept)
                continue
            try:
                values[f.name] = spec.check(raw, f.name)
            except InvalidInput as exc:
                rejected.append(
                    exc.message if exc.message.startswith(f.name) else f"{f.name}: {exc.message}"
                )
        unknown = sorted(escaped(str(k)[:40]) for k in body if k not in known)
        if unknown:
            shown = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            rejected.append(f"unknown facts left out: {shown}")
        if len(rejected) > cls.MAX_REJECTED:
            more = len(rejected) - cls.MAX_REJECTED
            rejected = [*rejected[: cls.MAX_REJECTED], f"and {more} more"]
        return cls(**values, rejected=tuple(rejected))


@register
@dataclass(frozen=True)
class JobStarted(Message):
    TYPE = "job.started"
    DIRECTION = Direction.TO_SERVER

    job_id: str = wire(JOB_ID)


@register
@dataclass(frozen=True)
class JobOutput(Message):
    """A chunk of a job's output (over the chunk limit it is cut, not refused)."""

    TYPE = "job.output"
    DIRECTION = Direction.TO_SERVER

    job_id: str = wire(JOB_ID)
    stream: str = wire(Choice(("stdout", "stderr")))
    data: str = wire(
        Text(MAX_OUTPUT_CHUNK_BYTES, truncate=True, blank_ok=True, controls_ok=True, nul_ok=True)
    )


@register
@dataclass(frozen=True)
class JobResult(Message):
    """How a job ended on the machine; ``exit_code`` is None when it has none."""

    TYPE = "job.result"
    DIRECTION = Direction.TO_SERVER

    job_id: str = wire(JOB_ID)
    status: str = wire(
        Choice(TERMINAL_STATUSES, message="job.result status must be one of {choices}")
    )
    exit_code: int | None = wire(Optional(Int(-(2**31), 2**32 - 1)), None)
    reason: str | None = wire(
        Optional(
            Text(
                MAX_REASON_BYTES,
                truncate=True,
                blank_ok=True,
                controls_ok=True,
                nul_replace=True,  # kept in a text column
            )
        ),
        None,
    )
    #: A short job folded into its result (``job.fold``): ``started`` stands for its
    #: ``job.started``; ``output`` for its ``job.output`` chunks, ``[[stream, data],
    #: ...]`` in the order written.
    started: bool | None = wire(Optional(Bool()), None)
    output: tuple[tuple[str, str], ...] | None = wire(
        Optional(
            ListOf(
                Pair(
                    Choice(("stdout", "stderr")),
                    Text(
                        MAX_OUTPUT_CHUNK_BYTES,
                        truncate=True,
                        blank_ok=True,
                        controls_ok=True,
                        nul_ok=True,
                    ),
                ),
                MAX_FOLDED_CHUNKS,
            )
        ),
        None,
    )


@register
@dataclass(frozen=True)
class MessageFailed(Message):
    """The machine could not use message ``seq`` from the server and gave up on it (a
    dead letter): it is acknowledged, its effects never happened."""

    TYPE = "message.failed"
    DIRECTION = Direction.TO_SERVER

    seq: int = wire(Int(0, MAX_SEQ))
    type: str = wire(Text(_ID_MAX, truncate=True))
    reason: str = wire(Text(MAX_REASON_BYTES, truncate=True, controls_ok=True))
    id: str | None = wire(Optional(Text(_ID_MAX, truncate=True)), None)
    attempts: int = wire(Int(0, 1000), 1)


# -- peer ------------------------------------------------------------------------------------

_USER_BODY = JsonObject(max_bytes=MAX_MESSAGE_BODY_BYTES, what="message body")


@register
@dataclass(frozen=True)
class UserMessage(Message):
    """``user.NAME``: data between the master and machines, never a command."""

    TYPE = "user.*"
    DIRECTION = Direction.PEER

    type: str
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def type_name(self) -> str:
        return self.type

    @classmethod
    def make(cls, type: object, body: object) -> UserMessage:
        """Check a user message from anyone (the master, a script, a peer)."""
        kind = check_message_type(type)
        body = {} if body is None else body
        return cls(kind, _USER_BODY.check(body, "body"))

    @classmethod
    def from_envelope(cls, type: str, body: Mapping[str, Any]) -> UserMessage:
        return cls.make(type, body)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> UserMessage:
        raise TypeError("a user message's type is in its envelope: use from_envelope")

    def to_body(self) -> dict[str, Any]:
        return self.body
