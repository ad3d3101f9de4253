"""JSON given on the command line (a message BODY, a kv VALUE), read without a traceback;
``-`` for either reads it from standard input (``from_stdin``).

``json.loads`` recurses once per level of nesting: ``"[[[[..."`` a hundred thousand
deep raises RecursionError, not ValueError. Either is the user's input error (exit 2).
"""

from __future__ import annotations

import json
import sys
from typing import Any, BinaryIO

from ..errors import InvalidInput, TooLarge

__all__ = ["STDIN", "from_stdin", "json_arg", "json_or_text"]

#: The argument that stands for standard input (`crc send ... -`, `crc kv set ... -`):
#: a body too large for one command-line argument (the kernel's 128 KiB) goes so.
STDIN = "-"


def from_stdin(what: str, max_bytes: int, stream: BinaryIO | None = None) -> str:
    """Standard input (``stream``), all of it, as text: ``what`` (BODY, VALUE) given as
    ``-``. More than ``max_bytes`` bytes (the documented limit of what it becomes) or
    bytes that are not UTF-8 are refused (InvalidInput, exit 2), before anything is sent."""
    data = (stream or sys.stdin.buffer).read(max_bytes + 1)
    if len(data) > max_bytes:
        raise TooLarge(
            f"{what} from standard input (-) is larger than {max_bytes >> 10} KiB, "
            "the most it may be"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"{what} from standard input (-) is not UTF-8 text (byte {exc.start})"
        ) from None


def json_arg(text: str | None, what: str) -> Any:
    """``text`` as JSON (``{}`` if empty or None); InvalidInput naming ``what`` if it is
    not JSON or is nested too deeply."""
    if not text:
        return {}
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidInput(f"{what} is JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"{what} is not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except ValueError:
        raise InvalidInput(f"{what} is not valid JSON") from None


#: How JSON's objects, lists and strings begin: text that does is meant as JSON.
_JSON_OPENERS = ("{", "[", '"')


def json_or_text(text: str, what: str) -> Any:
    """``text`` as JSON if it is JSON, else the plain string (a bare word); InvalidInput
    naming ``what`` if it is JSON nested too deeply, or if it begins (after blanks) with
    ``{``, ``[`` or ``"`` yet is no JSON: ``{"a":`` is a typo, not a string to store."""
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidInput(f"{what} is JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        if not text.lstrip().startswith(_JSON_OPENERS):
            return text
        raise InvalidInput(
            f"{what} is not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg} "
            f'(a {what} starting with {{, [ or " is read as JSON; to store such text, '
            "give it as a JSON string)"
        ) from None
    except ValueError:
        return text
