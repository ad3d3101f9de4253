r"""Text from machines, made safe for a terminal.

Everything a machine sends is hostile input, including text that ends up on the
operator's terminal (progress, facts, message bodies, kv values, failure reasons): a
terminal obeys escape sequences, so ``"\x1b]0;pwn\x07"`` in a progress line would
retitle the window and ``"\x1b[2J"`` clear it. ``safe`` escapes control characters
(and the bidirectional overrides that reorder what is shown) before such text is
printed. A command's own output on a terminal (``shown_output``) keeps its colours
(SGR sequences, ``\x1b[...m``) and tabs, and escapes every other control the same way.
Stdlib only.
"""

from __future__ import annotations

import re

__all__ = ["safe", "shown_output"]

# C0 and C1 controls, DEL, the bidirectional marks (ALM, LRM, RLM) and embedding,
# override and isolate characters, and the line and paragraph separators.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match[str]) -> str:
    ch = m.group()
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(text: object) -> str:
    r"""``text`` as one line a terminal shows literally: control characters escaped
    (``\x1b`` -> ``\\x1b``, newline -> ``\\n``)."""
    return _UNSAFE.sub(_escape, str(text))


# A colour or text attribute (SGR: ESC [ params m), the one sequence output keeps; or
# one character ``safe`` escapes.
_OUTPUT = re.compile(
    "(\x1b\\[[0-9;:]{0,64}m)|([\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f"
    "\u2028\u2029\u202a-\u202e\u2066-\u2069])"
)


def shown_output(text: str) -> str:
    r"""A line of a command's output as a terminal may show it: colours (``\x1b[31m``)
    and tabs as they are, every other control character escaped as ``safe`` does (no
    cursor moves, screen clears, window titles, carriage returns that overwrite the
    machine's prefix, or clipboard writes)."""
    return _OUTPUT.sub(lambda m: m.group(1) or _escape(m), text)
