"""The catalogue's machinery: typed wire objects, who sends them, one registry, dispatch.

Every frame and every message is a frozen dataclass whose fields are declared with
``wire(spec)``. Decoding (``from_body``) checks each field once with its spec and builds
the typed object; encoding (``to_body``) turns it back into JSON. A class is registered
with its ``TYPE`` (the ``type`` on the wire) and its ``DIRECTION``, and each end of the
connection dispatches what it receives through a :class:`Dispatcher`, which refuses to
start unless it has exactly one handler per type that end can receive. Adding a message
type is therefore one class here and one handler at the end that receives it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from enum import Enum
from typing import Any, ClassVar, Generic, TypeVar

from ..errors import InvalidInput
from .fields import Spec

__all__ = [
    "REGISTRY",
    "Direction",
    "Dispatcher",
    "Frame",
    "Message",
    "Registry",
    "Side",
    "Wire",
    "register",
    "wire",
    "wire_fields",
]

W = TypeVar("W", bound="Wire")
M = TypeVar("M", bound="Message")
H = TypeVar("H")

_SPEC = "crc.spec"
_MISSING: Any = dataclasses.MISSING


class Side(str, Enum):
    """An end of the agent connection."""

    SERVER = "server"
    AGENT = "agent"


class Direction(Enum):
    """Who sends a type, and so which end must be ready to receive it."""

    TO_AGENT = "server→agent"  # commands and replies from the server
    TO_SERVER = "agent→server"  # reports of a machine
    BOTH = "either way"  # the frames of the numbered streams (msg, ack)
    PEER = "peer"  # user.* data between the master and machines, relayed by the server

    @property
    def receivers(self) -> frozenset[Side]:
        if self is Direction.TO_AGENT:
            return frozenset({Side.AGENT})
        if self is Direction.TO_SERVER:
            return frozenset({Side.SERVER})
        return frozenset({Side.SERVER, Side.AGENT})


def wire(spec: Spec, default: Any = _MISSING, factory: Any = _MISSING) -> Any:
    """Declare a field that travels on the wire, checked by ``spec`` when decoded;
    without ``default`` (or a ``factory`` making it) it must be present, and with one,
    absent and ``null`` both mean the default."""
    if factory is not _MISSING:
        return dataclasses.field(default_factory=factory, metadata={_SPEC: spec})
    if default is _MISSING:
        return dataclasses.field(metadata={_SPEC: spec})
    return dataclasses.field(default=default, metadata={_SPEC: spec})


def has_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is not _MISSING or f.default_factory is not _MISSING


_FIELDS: dict[type, tuple[tuple[dataclasses.Field[Any], Spec], ...]] = {}


def wire_fields(cls: type) -> tuple[tuple[dataclasses.Field[Any], Spec], ...]:
    """The fields of ``cls`` that travel on the wire, with their specs (computed once)."""
    found = _FIELDS.get(cls)
    if found is None:
        found = _FIELDS[cls] = tuple(
            (f, f.metadata[_SPEC]) for f in dataclasses.fields(cls) if _SPEC in f.metadata
        )
    return found


class Wire:
    """A frame or a message body. Subclasses are frozen dataclasses."""

    TYPE: ClassVar[str]
    DIRECTION: ClassVar[Direction]
    OMIT_NONE: ClassVar[bool] = False  # leave out optional fields that are None

    @classmethod
    def from_body(cls: type[W], body: Mapping[str, Any]) -> W:
        """Check every declared field of ``body`` once; unknown keys are ignored (a newer
        peer may send more). Raises InvalidInput (or TooLarge) naming the field."""
        values: dict[str, Any] = {}
        for f, spec in wire_fields(cls):
            raw = body.get(f.name)
            if raw is None and has_default(f):
                continue
            if f.name not in body:
                raise InvalidInput(f"{cls.TYPE} needs {f.name}", field=f.name)
            values[f.name] = spec.check(raw, f.name)
        obj = cls(**values)
        obj.validate()
        return obj

    def validate(self) -> None:
        """Checks across fields, after each field was checked (override)."""

    def to_body(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f, spec in wire_fields(type(self)):
            value = getattr(self, f.name)
            if value is None and self.OMIT_NONE:
                continue
            out[f.name] = spec.dump(value)
        return out


class Frame(Wire):
    """One JSON text frame of the agent connection (``{"type": TYPE, ...fields}``)."""

    OMIT_NONE = True

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, **self.to_body()}


class Message(Wire):
    """The body of one numbered message (inside an envelope, inside a ``msg`` frame)."""

    @property
    def type_name(self) -> str:
        """The envelope's ``type`` (user messages carry their own)."""
        return self.TYPE

    @classmethod
    def from_envelope(cls: type[M], type: str, body: Mapping[str, Any]) -> M:
        """Decode the body of an envelope of ``type`` (one of this class's)."""
        return cls.from_body(body)


class Registry:
    """Every frame and message type, by its wire ``type``."""

    def __init__(self) -> None:
        self._types: dict[str, type[Wire]] = {}
        self._prefixes: dict[str, type[Wire]] = {}

    def register(self, cls: type[W]) -> type[W]:
        key = cls.TYPE
        if key.endswith(".*"):
            table, key = self._prefixes, key[:-1]
        else:
            table = self._types
        if key in table or key in self._types:
            raise ValueError(f"wire type {cls.TYPE!r} registered twice")
        table[key] = cls
        return cls

    def lookup(self, kind: str, layer: type[W]) -> type[W] | None:
        """The class of ``kind`` in ``layer`` (Frame or Message), or None."""
        cls = self._types.get(kind)
        if cls is None:
            cls = next((c for p, c in self._prefixes.items() if kind.startswith(p)), None)
        if cls is None or not issubclass(cls, layer):
            return None
        return cls

    def received_by(self, side: Side, layer: type[Wire]) -> frozenset[type[Wire]]:
        """Every class of ``layer`` that ``side`` must be able to receive."""
        return frozenset(
            cls
            for cls in (*self._types.values(), *self._prefixes.values())
            if issubclass(cls, layer) and side in cls.DIRECTION.receivers
        )

    def __iter__(self) -> Iterator[type[Wire]]:
        return iter((*self._types.values(), *self._prefixes.values()))


REGISTRY = Registry()
register = REGISTRY.register


class Dispatcher(Generic[H]):
    """One handler per type that ``side`` receives in ``layer``: complete, or refused
    at construction (so a new type without its handler cannot ship)."""

    def __init__(
        self,
        side: Side,
        layer: type[Wire],
        handlers: Mapping[type[Wire], H],
        registry: Registry = REGISTRY,
    ) -> None:
        expected = registry.received_by(side, layer)
        missing = sorted(c.TYPE for c in expected - set(handlers))
        extra = sorted(c.TYPE for c in set(handlers) - expected)
        if missing or extra:
            raise TypeError(
                f"{side.value} {layer.__name__} handlers: missing {missing}, unexpected {extra}"
            )
        self._handlers = dict(handlers)
        self._what = layer.__name__.lower()  # "frame", "message"

    def __getitem__(self, obj: Wire) -> H:
        """The handler of ``obj``; InvalidInput for a type only the other end receives
        (a peer sending what it should only receive: hostile input, not a crash)."""
        handler = self._handlers.get(type(obj))
        if handler is None:
            raise InvalidInput(
                f"unexpected {obj.TYPE} {self._what}: only the other end receives it",
                code="unknown_type",
            )
        return handler

    def handler_for(self, cls: type[Wire]) -> H:
        return self._handlers[cls]
