r"""Printing for humans (tables, prefixes) or for programs (``--json``).

Everything a machine sends is hostile input, including text that ends up on the
operator's terminal (progress, facts, message bodies, kv values, failure reasons): a
terminal obeys escape sequences, so ``"\x1b]0;pwn\x07"`` in a progress line would
retitle the window, ``"\x1b[2J"`` clear it. ``safe`` escapes control characters (and
the bidirectional overrides that reorder what is shown) before such text is printed;
every table cell goes through it. The only raw bytes crc prints from a machine are a
job's own output in ``crc run`` (stdout and stderr), which is what the user asked for.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import click

from ..terminal import safe

__all__ = [
    "OUTPUT_CLOSED_EXIT",
    "SELECTOR_HELP",
    "TARGET_HELP",
    "ago",
    "emit_json",
    "json_option",
    "kv_key",
    "own_error_exit",
    "print_table",
    "quiet_if_closed",
    "safe",
    "say_stream_breaks",
    "shown_json",
]

F = TypeVar("F", bound=Callable[..., Any])


class _Streams(Protocol):
    on_stream_break: Callable[[str], None] | None


S = TypeVar("S", bound=_Streams)

#: Set by ``--error-exit N`` (crc run, push, pull, hosts sync): the exit code for crc's
#: own failures, so that they differ from the remote command's codes.
own_error_exit: int | None = None

#: Set by ``crc run --raw``: the command's output reaches a terminal as it is, escape
#: sequences included (else only its colours do: ``terminal.shown_output``).
raw_output = False


#: How comma-joined KEY=VALUE pairs in a ``--to`` select machines.
SELECTOR_HELP = "KEY=VALUE,KEY=VALUE selects the machines with every pair (each key once)."

#: The help of a master command's ``--to``.
TARGET_HELP = "Machine, comma list, KEY=VALUE or all. " + SELECTOR_HELP


def target_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--to``'s callback: ``all,a`` is a usage error before anything is sent
    (``check_all_alone``), not a list naming a machine ``all``."""
    from ..errors import InvalidInput
    from ..protocol.names import check_all_alone

    if value is None:
        return value
    try:
        return check_all_alone(value)
    except InvalidInput as exc:
        raise click.BadParameter(safe(exc.message)) from None


#: The exit code when crc's output was closed (``crc events -f | head -1``): a process
#: killed by SIGPIPE, as a shell reports it.
OUTPUT_CLOSED_EXIT = 141


def quiet_if_closed(stream: Any) -> None:
    """Point ``stream``'s file at /dev/null if writing to it fails (a closed pipe), so
    that what it still buffers goes nowhere at exit instead of failing again there."""
    try:
        stream.flush()
    except OSError:
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)


def say_stream_breaks(client: S) -> S:
    """``client`` (an SDK client), saying on stderr when one of its event streams breaks
    and when it resumes: it may take up to a minute, in which nothing else is shown."""

    def note(text: str) -> None:
        with contextlib.suppress(OSError):  # stderr closed: the stream goes on
            click.echo(f"crc: {safe(text)}", err=True)

    client.on_stream_break = note
    return client


def kv_key(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """An argument's callback: a key the group's store could hold, else a usage error
    (before any agent or server is asked)."""
    from ..errors import InvalidInput
    from ..protocol.names import check_kv_key

    try:
        return check_kv_key(value)
    except InvalidInput as exc:
        raise click.BadParameter(safe(exc.message), ctx=ctx, param=param) from None


def not_empty(
    what: str = "path",
) -> Callable[[click.Context, click.Parameter, str | None], str | None]:
    """An option's callback: an empty ``--state-dir ""`` (an unset variable in a script)
    is a usage error, not the default; an empty environment variable is no value
    (click's reading of one): the default."""

    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value == "":
            raise click.BadParameter(
                f"an empty {what}; leave the option out for the default", ctx=ctx, param=param
            )
        return value

    return check


def json_option(fn: F) -> F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON (JSON lines when streaming)."
    )(fn)


def _plain(value: Any) -> Any:
    to_dict = getattr(value, "to_dict", None)  # the SDK's records (master/types.py)
    if to_dict is not None:
        return to_dict()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# What ``safe`` escapes (controls, bidirectional marks, line and paragraph separators)
# and lone surrogates (valid in a JSON string, "\ud800", but in no encoding), as JSON
# text holds them raw: ``json.dumps`` escapes only the C0 controls.
_RAW_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def _json_escape(ch: str) -> str:
    code = ord(ch)
    if code > 0xFFFF:  # JSON escapes a character past the BMP as its UTF-16 pair
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def shown_json(value: Any, separators: tuple[str, str] | None = None) -> str:
    """``value`` as JSON to print (a kv value, a message's body): its text as it is
    (``"héllo"``, not ``"h\\u00e9llo"``), except what a terminal would obey (controls,
    bidirectional overrides: ``safe``'s set) and what standard output's encoding cannot
    hold (``PYTHONIOENCODING=ascii``), which become JSON's ``\\uXXXX``: the line is still
    JSON, of the same value, and shows literally."""
    text = json.dumps(value, ensure_ascii=False, separators=separators, default=_plain)
    text = _RAW_UNSAFE.sub(lambda m: _json_escape(m.group()), text)
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        text = "".join(ch if _encodes(ch, encoding) else _json_escape(ch) for ch in text)
    except LookupError:  # an encoding Python does not know: ASCII is safe anywhere
        text = json.dumps(value, separators=separators, default=_plain)
    return text


def _encodes(ch: str, encoding: str) -> bool:
    try:
        ch.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


def emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, separators=(",", ":"), default=_plain) + "\n")
    sys.stdout.flush()


def ago(ts: float | None) -> str:
    if not ts:
        return "-"
    d = max(0.0, time.time() - ts)
    # Rounded before the unit is chosen: 59.6 s is "1m ago", not "60s ago".
    if round(d) < 60:
        return f"{round(d)}s ago"
    if round(d / 60) < 60:
        return f"{round(d / 60)}m ago"
    return f"{d / 3600:.1f}h ago"


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    rows = [[safe(c) for c in row] for row in rows]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(*headers, box=None, pad_edge=False, header_style="bold")
        for row in rows:
            table.add_row(*(Text(c) for c in row))  # Text: no markup read from cells
        Console().print(table)
        return
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    for row in [headers, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
