"""Frames of the agent connection: JSON text frames, one object each.

::

    agent -> server   hello     {"type": "hello", "ack": N, "resume_from": M,
                                 "agent_version": ..., "ready": bool}
    server -> agent   welcome   {"type": "welcome", "ack": N, "resume_from": M,
                                 "machine": ..., "group": ...}
    either way        msg       {"type": "msg", "seq": N, "msg": ENVELOPE}
    either way        ack       {"type": "ack", "seq": N}            (cumulative)
    server -> agent   revoked   {"type": "revoked", "reason": ..., "uninstall": true?}
    server -> agent   error     {"type": "error", "error": {...}, "seq": N?}

``ack`` in hello/welcome is the highest sequence number of the *peer's* messages the
sender has durably processed, so the peer replays everything after it. ``resume_from``
(optional) is the first message the sender can still send: beyond what the peer
processed only after a database or state directory was rolled back (see
``delivery.py``). Optional fields that are absent are left out of the frame.

A ``msg`` frame's envelope is *not* checked here but when the message is decoded
(``messages.decode_message``): a message that cannot be used is still numbered, so the
receiver acknowledges it and records it as failed instead of stalling the stream.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInput, TooLarge
from .fields import MAX_SEQ, Bool, JsonObject, ListOf, Optional, Spec, Text
from .jsoncheck import check_json
from .limits import MAX_FRAME_BYTES
from .wire import REGISTRY, Direction, Frame, register, wire

if TYPE_CHECKING:
    from .messages import Envelope

__all__ = [
    "Ack",
    "ErrorFrame",
    "Hello",
    "Msg",
    "Revoked",
    "Welcome",
    "ack_frame",
    "decode_frame",
    "encode_frame",
    "msg_frames",
    "read_frame",
    "renumber_frame",
    "write_frame",
]

#: Compact JSON, as ``json.dumps(value, separators=(",", ":"))`` without building an
#: encoder per call; ``_string`` is its encoding of a str (ASCII, escaped).
_ENCODER = json.JSONEncoder(separators=(",", ":"))
_string: Callable[[str], str] = encode_basestring_ascii

_ERROR = JsonObject(max_bytes=64 << 10, max_depth=4, what="error")


class _Seq(Spec):
    """A sequence number, with the frame's name in the message."""

    def check(self, value: Any, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEQ:
            raise self.fail(name, f"frame needs a non-negative integer {name}")
        return value


_S = _Seq()


class _Object(Spec):
    def check(self, value: Any, name: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(name, f"msg frame needs a {name} object")
        return value


#: A ``job.result`` may carry the job's output, its start implied (``job.fold``): a
#: short job is one message instead of a start notice, output chunks and a result. An
#: agent announces it in its hello, a server that applies it in its welcome; an agent
#: folds only for a server that said so (an older one ignores fields it does not know).
FEATURE_FOLD = "job.fold"
#: A ``msg`` frame may carry ``ack`` (cumulative, as an ``ack`` frame would): an agent
#: that has something to send soon after a message it processed acknowledges it there.
FEATURE_ACK = "msg.ack"
#: A forward's stream may carry ``stream.eof`` both ways (TCP half-close): the server
#: relays it; an agent offers it to the master (``stream.ready``) only then.
FEATURE_EOF = "stream.eof"
FEATURES = (FEATURE_FOLD, FEATURE_ACK, FEATURE_EOF)
_FEATURES = Optional(ListOf(Text(32, truncate=True), 16))


@register
@dataclass(frozen=True)
class Hello(Frame):
    TYPE = "hello"
    DIRECTION = Direction.TO_SERVER

    ack: int = wire(_S, 0)
    resume_from: int | None = wire(Optional(_S), None)
    agent_version: str | None = wire(Optional(Text(64, truncate=True)), None)
    ready: bool = wire(Bool(), False)
    features: tuple[str, ...] | None = wire(_FEATURES, None)


@register
@dataclass(frozen=True)
class Welcome(Frame):
    TYPE = "welcome"
    DIRECTION = Direction.TO_AGENT

    ack: int = wire(_S, 0)
    resume_from: int | None = wire(Optional(_S), None)
    machine: str | None = wire(Optional(Text(256)), None)
    group: str | None = wire(Optional(Text(256)), None)
    features: tuple[str, ...] | None = wire(_FEATURES, None)


@register
@dataclass(frozen=True)
class Msg(Frame):
    TYPE = "msg"
    DIRECTION = Direction.BOTH

    seq: int = wire(_S)
    msg: dict[str, Any] = wire(_Object())  # noqa: RUF009 -- wire() is a dataclasses.field
    ack: int | None = wire(Optional(_S), None)  # msg.ack: the peer's messages up to it


@register
@dataclass(frozen=True)
class Ack(Frame):
    TYPE = "ack"
    DIRECTION = Direction.BOTH

    seq: int = wire(_S)


@register
@dataclass(frozen=True)
class Revoked(Frame):
    """The machine's credential is revoked; ``uninstall``: remove the agent's service."""

    TYPE = "revoked"
    DIRECTION = Direction.TO_AGENT

    reason: str = wire(Text(1000, truncate=True, blank_ok=True), "machine revoked")
    uninstall: bool | None = wire(Optional(Bool()), None)
    error: dict[str, Any] | None = wire(Optional(_ERROR), None)  # noqa: RUF009


@register
@dataclass(frozen=True)
class ErrorFrame(Frame):
    """What the server could not use (``seq``: the message it refers to)."""

    TYPE = "error"
    DIRECTION = Direction.TO_AGENT

    error: dict[str, Any] = wire(_ERROR, factory=dict)  # noqa: RUF009
    seq: int | None = wire(Optional(_S), None)
    reason: str | None = wire(Optional(Text(1000, truncate=True, blank_ok=True)), None)


def read_frame(text: str | bytes) -> Frame:
    """Parse and check one frame; raise InvalidInput for anything that is not a frame."""
    if len(text) > MAX_FRAME_BYTES:
        raise TooLarge(f"frame of {len(text)} bytes; the limit is {MAX_FRAME_BYTES}")
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("frame is not valid JSON") from None
    except RecursionError:  # "[[[[...": small enough to pass the size check
        raise InvalidInput("frame is nested too deeply", code="too_deep") from None
    if not isinstance(data, dict):
        raise InvalidInput("frame must be a JSON object")
    kind = data.get("type")
    cls = REGISTRY.lookup(kind, Frame) if isinstance(kind, str) else None
    if cls is None:
        if not isinstance(kind, str):  # not echoed: it may be a large or deep value
            raise InvalidInput("a frame's type must be a string", code="unknown_type")
        shown = repr(kind) if len(kind) <= 64 else repr(kind[:64]) + "..."
        raise InvalidInput(f"unknown frame type {shown}", code="unknown_type")
    envelope = data.pop("msg", None) if cls is Msg else None
    check_json(data, what="frame")
    if cls is Msg:
        data["msg"] = envelope
    return cls.from_body(data)


def write_frame(frame: Frame) -> str:
    return _ENCODER.encode(frame.to_wire())


def ack_frame(seq: int) -> str:
    """``write_frame(Ack(seq=seq))`` without building the frame object: the server
    acknowledges every message a machine sends (a 1,000-target job, 1,000 acks)."""
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
        raise ValueError(f"not a sequence number: {seq!r}")
    return f'{{"type":"ack","seq":{seq}}}'


def msg_frames(items: Iterable[tuple[int, Envelope]]) -> Iterator[str]:
    """``write_frame(Msg(seq=seq, msg=env.to_dict()))`` for each ``(seq, env)``, the
    same text, with each distinct body encoded once: a job's fan-out sends one body to
    every target, each in its own envelope. (A body is the same when it is the same
    object: the envelopes of one fan-out share it.)"""
    text = _string
    bodies: dict[int, tuple[dict[str, Any], str]] = {}
    for seq, env in items:
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
            raise ValueError(f"not a sequence number: {seq!r}")
        known = bodies.get(id(env.body))
        if known is None or known[0] is not env.body:
            known = bodies[id(env.body)] = (env.body, _ENCODER.encode(env.body))
        cid, created = env.correlation_id, env.created
        if type(created) is float and math.isfinite(created):
            when = float.__repr__(created)  # as the encoder writes a float
        else:
            when = _ENCODER.encode(created)
        yield (
            f'{{"type":"msg","seq":{seq},"msg":{{"id":{text(env.id)},'
            f'"group":{text(env.group)},"from":{text(env.sender)},"to":{text(env.to)},'
            f'"type":{text(env.type)},"body":{known[1]},'
            f'"correlation_id":{"null" if cid is None else text(cid)},"created":{when}}}}}'
        )


def renumber_frame(text: str, seq: int) -> str:
    """A stored ``msg`` frame given another sequence number (outbox renumbering)."""
    data = json.loads(text)
    data["seq"] = seq
    return json.dumps(data, separators=(",", ":"))


def decode_frame(text: str | bytes) -> dict[str, Any]:
    """The checked frame as a JSON object (for tools and tests speaking the raw wire)."""
    return read_frame(text).to_wire()


def encode_frame(frame: Frame | dict[str, Any]) -> str:
    if isinstance(frame, Frame):
        return write_frame(frame)
    return json.dumps(frame, separators=(",", ":"))
