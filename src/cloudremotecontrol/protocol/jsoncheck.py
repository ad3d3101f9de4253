"""The one check every JSON value from outside passes before anything keeps or walks it.

Why depth matters as much as size: a 1 KiB body such as ``{"d": [[[...]]]}`` nested 490
levels passes any size limit, yet every recursive consumer after the parser (dataclass
conversion, ``json.dumps`` of a stored event, the HTTP response encoder, a terminal
renderer) may hit Python's recursion limit on it - at the peer that receives it or at
every later read. So a value is walked here once, iteratively (this walk cannot itself
overflow), and refused when it nests deeper than ``max_depth``, holds a number JSON
cannot carry back (NaN, infinities), a string that is not valid Unicode (a lone
surrogate such as ``"\\ud800"``, which JSON can carry but no UTF-8 response, page or
database can), or encodes to more than ``max_bytes``.

Depth counts containers: a scalar is 0, ``{}`` and ``[]`` are 1, ``{"a": [1]}`` is 2.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..errors import InvalidInput, TooLarge
from .limits import MAX_JSON_DEPTH

__all__ = ["check_json", "escaped", "is_unicode", "json_depth"]


def json_depth(value: Any, stop_after: int) -> int:
    """The nesting depth of ``value``, or ``stop_after + 1`` as soon as it is deeper
    (the walk ends there: a hostile value costs no more than an acceptable one).
    Raises InvalidInput for a value JSON cannot carry (a float that is not finite, a
    key that is not a string, a string with a lone surrogate, a type JSON does not
    have)."""
    if not isinstance(value, (dict, list, tuple)):
        _check_scalar(value)
        return 0
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > stop_after:
            return depth
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            for key in item:
                if type(key) is not str:
                    raise InvalidInput("JSON object keys must be strings")
                if not key.isascii():
                    _check_unicode(key)
            children: Any = item.values()
        else:
            children = item
        for child in children:
            kind = type(child)
            if kind is str:  # the common cases first, by identity: this walk is on a hot path
                if not child.isascii():
                    _check_unicode(child)
                continue
            if kind is int or kind is bool or child is None:
                continue
            if kind is dict or kind is list or kind is tuple:
                stack.append((child, depth + 1))
            elif isinstance(child, (dict, list, tuple)):
                stack.append((child, depth + 1))
            else:
                _check_scalar(child)
    return deepest


def is_unicode(text: str) -> bool:
    """Whether ``text`` is valid Unicode (no lone surrogate), so UTF-8 can carry it."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def escaped(text: str) -> str:
    """``text`` with each lone surrogate written as ``\\udXXX``: a machine's word that is
    only recorded (an unknown fact's name, an unknown message type) stays readable and
    storable."""
    if is_unicode(text):
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _check_unicode(text: str) -> None:
    if not is_unicode(text):
        raise InvalidInput(
            "JSON strings must be valid Unicode text (no lone surrogate such as \\ud800)"
        )


def _check_scalar(value: Any) -> None:
    if isinstance(value, str):
        if not value.isascii():
            _check_unicode(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput("JSON numbers must be finite (no NaN or Infinity)")
    elif value is not None and not isinstance(value, (str, int)):  # bool is an int
        raise InvalidInput(f"not a JSON value: {type(value).__name__}")


def check_json(
    value: Any,
    *,
    max_depth: int = MAX_JSON_DEPTH,
    max_bytes: int | None = None,
    what: str = "value",
    field: str | None = None,
) -> int:
    """Refuse ``value`` unless it nests at most ``max_depth`` levels and (with
    ``max_bytes``) encodes to at most that many bytes of compact JSON.

    Returns the encoded size (0 when ``max_bytes`` is None: not measured). Raises
    InvalidInput with code ``too_deep`` (HTTP 400) or TooLarge (413); ``what`` names the
    value in the message ("message body", "kv value", ...), ``field`` the request field
    it came from, if any (in the error's details).
    """
    details = {} if field is None else {"field": field}
    if json_depth(value, max_depth) > max_depth:
        raise InvalidInput(
            f"{what} is nested more than {max_depth} levels deep", code="too_deep", **details
        )
    if max_bytes is None:
        return 0
    size = len(json.dumps(value, separators=(",", ":")))  # ASCII: characters are bytes
    if size > max_bytes:
        # Each character beyond ASCII travels (and is stored) as its escape: say so, or
        # a value far under the limit in UTF-8 looks refused for no reason.
        plain = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False))
        escapes = " (each character beyond ASCII counts as its \\uXXXX escape)"
        raise TooLarge(
            f"{what} is {size} bytes of JSON{escapes if plain != size else ''}; "
            f"the limit is {max_bytes}",
            **details,
        )
    return size
