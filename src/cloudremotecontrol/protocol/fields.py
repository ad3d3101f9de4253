"""Field specs: how one field of a wire message is checked when it is decoded.

A spec turns what arrived (any JSON value) into the typed value the message holds, or
raises InvalidInput naming the field. Specs are declared next to the field they guard
(``wire(spec)`` in a message dataclass, see ``wire.py``), so a message's limits are read
where its fields are; the checks shared with the HTTP API (remote paths, owners, file
modes, host names, addresses) live here once.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInput, TooLarge
from .jsoncheck import check_json
from .limits import MAX_JSON_DEPTH
from .names import check_name

__all__ = [
    "MAX_SEQ",
    "Bool",
    "Choice",
    "Hostname",
    "Int",
    "IpAddress",
    "JsonObject",
    "ListOf",
    "Name",
    "Number",
    "Optional",
    "Pair",
    "Pattern",
    "Spec",
    "StrMap",
    "Text",
    "check_hostname",
    "check_ip",
    "check_push_path",
    "check_remote_path",
]

MAX_SEQ = 2**63 - 1  # sequence numbers are stored in 64-bit integer columns

# RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens, each
# 1-63 characters, 253 in all. Checked with fullmatch ("$" also matches before "\n").
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# Printable ASCII and any non-ASCII character that is not a control character.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_REMOTE_PATH = re.compile(r"/|[A-Za-z]:[\\/]")


def _show(value: object) -> str:
    """``repr(value)`` cut short: error messages must not echo a megabyte back."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_hostname(value: object) -> str:
    """``value`` if it is an RFC 1123 host name (``db``, ``db.lab``, ``Web-1``), else
    raise ValueError. Host names go into hosts files and shell commands on peers."""
    if not isinstance(value, str) or len(value) > 253 or not _HOSTNAME.fullmatch(value):
        raise ValueError(f"not an RFC 1123 host name: {_show(value)}")
    return value


def check_ip(value: object) -> str:
    """The canonical text of a plain IPv4 or IPv6 address, else raise ValueError.

    Plain means one token: no scope id (``fe80::1%eth0``; after the ``%`` anything may
    follow, newlines included, and only the owner knows its zones), no prefix length,
    no surrounding blanks."""
    if not isinstance(value, str) or len(value) > 45 or "%" in value or value != value.strip():
        raise ValueError(f"not a plain IP address: {_show(value)}")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"not a plain IP address: {_show(value)}") from None


def check_remote_path(path: object) -> str:
    """An absolute path on a machine: ``/etc/app.conf`` or ``C:\\app\\app.conf``."""
    if isinstance(path, str) and "\x00" in path:
        raise InvalidInput(f"remote path {_show(path)} contains a NUL character", field="path")
    if isinstance(path, str) and len(path) > 1024:
        raise InvalidInput(
            f"remote path {_show(path)} is {len(path)} characters long; the limit is 1024",
            field="path",
        )
    if not isinstance(path, str) or not _REMOTE_PATH.match(path):
        raise InvalidInput(
            f"remote path {_show(path)} must be absolute (/… or C:\\…)", field="path"
        )
    return path


def check_push_path(path: object) -> str:
    """A push's destination, or the file a pull reads: a remote path
    (``check_remote_path``) without control characters (C0, DEL, C1). A file named with
    an escape sequence, a carriage return or a newline is never what was meant, and its
    name would reach terminals as is."""
    path = check_remote_path(path)
    found = _CONTROL.search(path)
    if found:
        raise InvalidInput(
            f"remote path {_show(path)} contains a control character "
            f"(U+{ord(found.group()):04X}): give a path without any",
            field="path",
        )
    return path


class _Shown:
    """A value in an error message: ``{value!r}`` shows it cut short."""

    def __init__(self, value: object) -> None:
        self.value = value

    def __repr__(self) -> str:
        return _show(self.value)

    def __str__(self) -> str:
        return _show(self.value)


class Spec:
    """Check one field. ``name`` is the field's wire name, for the error message."""

    def check(self, value: Any, name: str) -> Any:
        raise NotImplementedError

    def dump(self, value: Any) -> Any:
        """The JSON form of a checked value (tuples become lists)."""
        return value

    @staticmethod
    def fail(name: str, message: str) -> InvalidInput:
        return InvalidInput(message, field=name)


@dataclass(frozen=True)
class Text(Spec):
    """A string. ``max_bytes`` counts UTF-8 bytes; ``truncate`` cuts instead of refusing
    (informative text such as progress lines, where a cut line beats a lost one);
    ``blank_ok`` allows "" and whitespace only; ``controls_ok`` allows control
    characters (command output), NUL never unless ``nul_ok``, or ``nul_replace``: then
    each NUL becomes U+FFFD (informative text stored where NUL cannot be, such as a
    PostgreSQL text column: changed, not refused)."""

    max_bytes: int = 256
    truncate: bool = False
    blank_ok: bool = False
    controls_ok: bool = False
    nul_ok: bool = False
    message: str | None = None
    nul_replace: bool = False

    def check(self, value: Any, name: str) -> str:
        if not isinstance(value, str):
            raise self.fail(name, self.message or f"{name} must be a string")
        text: str = value
        if not self.blank_ok and not text.strip():
            raise self.fail(name, self.message or f"{name} must not be empty")
        if self.nul_replace:
            text = text.replace("\x00", "\ufffd")
        elif not self.nul_ok and "\x00" in text:
            raise self.fail(name, self.message or f"{name} must not contain NUL characters")
        if not self.controls_ok and _CONTROL.search(text):
            raise self.fail(name, self.message or f"{name} must not contain control characters")
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate ("\ud800"): no database stores it
            if not self.truncate:
                raise self.fail(name, f"{name} must be valid Unicode text") from None
            data = text.encode("utf-8", errors="replace")
            text = data.decode("utf-8")
        if len(data) > self.max_bytes:
            if not self.truncate:
                raise TooLarge(
                    f"{name} is {len(data)} bytes; the limit is {self.max_bytes}", field=name
                )
            text = data[: self.max_bytes].decode("utf-8", errors="ignore")
        return text


@dataclass(frozen=True)
class Pattern(Spec):
    """A string matching ``regex`` in full (ids, hashes, modes)."""

    regex: str
    message: str

    def check(self, value: Any, name: str) -> str:
        if not isinstance(value, str) or not re.fullmatch(self.regex, value):
            raise self.fail(name, self.message.format(value=_Shown(value)))
        return value


@dataclass(frozen=True)
class Name(Spec):
    """A user, group or machine name (DNS label, see ``names.check_name``)."""

    what: str = "name"

    def check(self, value: Any, name: str) -> str:
        return str(check_name(value, self.what))


@dataclass(frozen=True)
class Hostname(Spec):
    def check(self, value: Any, name: str) -> str:
        try:
            return check_hostname(value)
        except ValueError as exc:
            raise self.fail(name, f"{name}: {exc}") from None


@dataclass(frozen=True)
class IpAddress(Spec):
    def check(self, value: Any, name: str) -> str:
        try:
            return check_ip(value)
        except ValueError as exc:
            raise self.fail(name, f"{name}: {exc}") from None


@dataclass(frozen=True)
class Int(Spec):
    low: int
    high: int
    message: str | None = None

    def check(self, value: Any, name: str) -> int:
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not self.low <= value <= self.high
        ):
            raise self.fail(
                name, self.message or f"{name} must be an integer from {self.low} to {self.high}"
            )
        return value


@dataclass(frozen=True)
class Number(Spec):
    """An int or a finite float in ``[low, high]`` (``low_open``: ``(low, high]``)."""

    low: float
    high: float
    low_open: bool = False
    message: str | None = None

    def check(self, value: Any, name: str) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            # Only a float can be NaN or infinite; an int is compared as it is (JSON
            # carries ints beyond any float, on which math.isfinite raises OverflowError).
            or (isinstance(value, float) and not math.isfinite(value))
            or not (self.low < value if self.low_open else self.low <= value)
            or not value <= self.high
        ):
            raise self.fail(
                name, self.message or f"{name} must be a number from {self.low:g} to {self.high:g}"
            )
        return value


@dataclass(frozen=True)
class Bool(Spec):
    def check(self, value: Any, name: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(name, f"{name} must be true or false")
        return value


@dataclass(frozen=True)
class Choice(Spec):
    choices: tuple[str, ...]
    message: str | None = None

    def check(self, value: Any, name: str) -> str:
        if not isinstance(value, str) or value not in self.choices:
            raise self.fail(
                name,
                (self.message or "{name} must be one of {choices}, not {value!r}").format(
                    name=name, choices=", ".join(self.choices), value=_Shown(value)
                ),
            )
        return value


@dataclass(frozen=True)
class Optional(Spec):
    """``None`` or what ``inner`` accepts."""

    inner: Spec

    def check(self, value: Any, name: str) -> Any:
        return None if value is None else self.inner.check(value, name)

    def dump(self, value: Any) -> Any:
        return None if value is None else self.inner.dump(value)


@dataclass(frozen=True)
class ListOf(Spec):
    """A list of at most ``max_items`` items each ``item`` accepts; held as a tuple."""

    item: Spec
    max_items: int
    min_items: int = 0
    message: str | None = None

    def check(self, value: Any, name: str) -> tuple[Any, ...]:
        if not isinstance(value, list) or not self.min_items <= len(value):
            raise self.fail(name, self.message or f"{name} must be a list")
        if len(value) > self.max_items:
            raise TooLarge(f"{name} has {len(value)} items; the limit is {self.max_items}")
        try:
            return tuple(self.item.check(v, name) for v in value)
        except InvalidInput as exc:
            if self.message and not isinstance(exc, TooLarge):
                raise self.fail(name, self.message) from None
            raise

    def dump(self, value: Sequence[Any]) -> list[Any]:
        return [self.item.dump(v) for v in value]


@dataclass(frozen=True)
class Pair(Spec):
    """A two-item list ``[first, second]``; held as a tuple."""

    first: Spec
    second: Spec

    def check(self, value: Any, name: str) -> tuple[Any, Any]:
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise self.fail(name, f"each item of {name} must be a pair")
        return (self.first.check(value[0], name), self.second.check(value[1], name))

    def dump(self, value: tuple[Any, Any]) -> list[Any]:
        return [self.first.dump(value[0]), self.second.dump(value[1])]


@dataclass(frozen=True)
class StrMap(Spec):
    """An object mapping keys ``key`` accepts to values ``value`` accepts. A refused key
    is said in ``key``'s own message (which should name it: ``{value!r}``); a refused
    value in ``message``, where ``{key!r}`` names the key whose value it is."""

    key: Spec
    value: Spec
    max_items: int
    message: str | None = None

    def check(self, value: Any, name: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            whole = self.message if self.message and "{key" not in self.message else None
            raise self.fail(name, whole or f"{name} must be an object")
        if len(value) > self.max_items:
            raise TooLarge(f"{name} has {len(value)} entries; the limit is {self.max_items}")
        checked: dict[str, Any] = {}
        for k, v in value.items():
            key = self.key.check(k, name)
            try:
                checked[key] = self.value.check(v, name)
            except InvalidInput as exc:
                if self.message and not isinstance(exc, TooLarge):
                    raise self.fail(name, self.message.format(key=_Shown(k))) from None
                raise
        return checked


@dataclass(frozen=True)
class JsonObject(Spec):
    """Free-form data (a user message's body, an error's details): a JSON object
    bounded in depth and size by ``check_json``."""

    max_bytes: int
    max_depth: int = MAX_JSON_DEPTH
    what: str | None = None

    def check(self, value: Any, name: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(name, f"{self.what or name} must be a JSON object")
        check_json(
            value,
            max_depth=self.max_depth,
            max_bytes=self.max_bytes,
            what=self.what or name,
            field=name,
        )
        return value
