"""Wire messages: the envelope every message travels in, typed bodies, and frames.

The agent connection carries JSON text frames (one object each)::

    agent -> server   hello     {"type": "hello", "ack": N, "resume_from": M,
                                 "agent_version": ..., "ready": bool}
    server -> agent   welcome   {"type": "welcome", "ack": N, "machine": ..., "group": ...}
    either way        msg       {"type": "msg", "seq": N, "msg": ENVELOPE}
    either way        ack       {"type": "ack", "seq": N}            (cumulative)
    server -> agent   revoked   {"type": "revoked", "reason": ..., "uninstall": true?}

``ack`` in hello/welcome is the highest sequence number of the *peer's* messages the
sender has durably processed, so the peer replays everything after it (resume).
``resume_from`` (optional) is the first message the agent can still send: beyond what
the server processed only after the server's database was rolled back.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import InvalidInput, TooLarge
from .limits import MAX_COMMAND_BYTES, MAX_FRAME_BYTES, MAX_TIMEOUT_SECONDS

__all__ = [
    "SHELLS",
    "Envelope",
    "JobRun",
    "decode_frame",
    "encode_frame",
    "new_id",
]

SHELLS = ("bash", "sh", "powershell", "cmd")
MAX_SEQ = 2**63 - 1  # sequence numbers are stored in 64-bit integer columns

# Types a machine may send. Anything else from a machine is refused: a machine never
# commands (no job.run, file.put, hosts.sync from a machine credential).
AGENT_TYPES = frozenset(
    {"system.ready", "progress", "facts", "job.started", "job.output", "job.result"}
)
# Types the server sends to agents.
SERVER_TYPES = frozenset({"job.run", "job.cancel", "system.roster"})


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Envelope:
    """``{id, group, from, to, type, body, correlation_id, created}`` (DESIGN.md)."""

    id: str
    group: str
    sender: str
    to: str
    type: str
    body: dict[str, Any] = field(default_factory=dict)
    correlation_id: str | None = None
    created: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["from"] = d.pop("sender")
        return d

    @classmethod
    def from_dict(cls, data: object) -> Envelope:
        if not isinstance(data, dict):
            raise InvalidInput("message must be a JSON object")
        try:
            env = cls(
                id=_str(data, "id"),
                group=_str(data, "group"),
                sender=_str(data, "from"),
                to=_str(data, "to"),
                type=_str(data, "type"),
                body=data.get("body") or {},
                correlation_id=data.get("correlation_id"),
                created=float(data.get("created") or 0.0),
            )
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"malformed message: {exc}") from None
        if not isinstance(env.body, dict):
            raise InvalidInput("message body must be a JSON object")
        if env.correlation_id is not None and not isinstance(env.correlation_id, str):
            raise InvalidInput("correlation_id must be a string")
        return env

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


def _str(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value or len(value) > 256:
        raise InvalidInput(f"message field {key!r} must be a non-empty string")
    return value


@dataclass(frozen=True)
class JobRun:
    """Body of ``job.run``: exactly one of ``argv`` and ``command`` (a shell string)."""

    job_id: str
    argv: tuple[str, ...] | None = None
    command: str | None = None
    shell: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    timeout: float | None = None

    def to_body(self) -> dict[str, Any]:
        d = asdict(self)
        if self.argv is not None:
            d["argv"] = list(self.argv)
        return d

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> JobRun:
        job_id = body.get("job_id")
        if not isinstance(job_id, str) or not job_id:
            raise InvalidInput("job_id must be a non-empty string")
        argv, command = body.get("argv"), body.get("command")
        if (argv is None) == (command is None):
            raise InvalidInput("give either argv (a list of strings) or command (a string)")
        size = 0
        if argv is not None:
            if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
                raise InvalidInput("argv must be a non-empty list of strings", field="argv")
            if any("\x00" in a for a in argv):
                raise InvalidInput("argv must not contain NUL characters", field="argv")
            size = sum(len(a.encode()) for a in argv)
            argv = tuple(argv)
        if command is not None:
            if not isinstance(command, str) or not command.strip() or "\x00" in command:
                raise InvalidInput("command must be a non-empty string", field="command")
            size = len(command.encode())
        if size > MAX_COMMAND_BYTES:
            raise TooLarge(f"command is {size} bytes; the limit is {MAX_COMMAND_BYTES}")
        shell = body.get("shell")
        if shell is not None and shell not in SHELLS:
            raise InvalidInput(
                f"unknown shell {shell!r}: use one of {', '.join(SHELLS)}", field="shell"
            )
        env = body.get("env") or {}
        if not isinstance(env, dict) or not all(
            isinstance(k, str)
            and k
            and "=" not in k
            and "\x00" not in k
            and isinstance(v, str)
            and "\x00" not in v
            for k, v in env.items()
        ):
            raise InvalidInput("env must map variable names to strings", field="env")
        cwd = body.get("cwd")
        if cwd is not None and (not isinstance(cwd, str) or not cwd or "\x00" in cwd):
            raise InvalidInput("cwd must be a non-empty path", field="cwd")
        timeout = body.get("timeout")
        if timeout is not None:
            if (
                isinstance(timeout, bool)
                or not isinstance(timeout, (int, float))
                or not 0 < timeout <= MAX_TIMEOUT_SECONDS
            ):
                raise InvalidInput(
                    f"timeout must be between 0 and {MAX_TIMEOUT_SECONDS} seconds", field="timeout"
                )
            timeout = float(timeout)
        return cls(job_id, argv, command, shell, dict(env), cwd, timeout)


def encode_frame(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"))


def _check_seq(value: Any, kind: str, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEQ:
        raise InvalidInput(f"{kind} frame needs a non-negative integer {field}")
    return value


def decode_frame(text: str | bytes) -> dict[str, Any]:
    """Parse one frame; raise InvalidInput for anything that is not a known frame."""
    if len(text) > MAX_FRAME_BYTES:
        raise TooLarge(f"frame of {len(text)} bytes; the limit is {MAX_FRAME_BYTES}")
    try:
        frame = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("frame is not valid JSON") from None
    except RecursionError:  # "[[[[...": small enough to pass the size check
        raise InvalidInput("frame is nested too deeply") from None
    if not isinstance(frame, dict):
        raise InvalidInput("frame must be a JSON object")
    kind = frame.get("type")
    if kind not in ("hello", "welcome", "msg", "ack", "revoked", "error"):
        raise InvalidInput(f"unknown frame type {kind!r}", code="unknown_type")
    if kind in ("msg", "ack"):
        _check_seq(frame.get("seq"), kind, "seq")
    if kind in ("hello", "welcome"):
        frame["ack"] = _check_seq(frame.get("ack", 0), kind, "ack")
    if kind == "hello" and frame.get("resume_from") is not None:
        _check_seq(frame["resume_from"], kind, "resume_from")
    if kind == "msg" and not isinstance(frame.get("msg"), dict):
        raise InvalidInput("msg frame needs a msg object")
    return frame
