"""Where a template tag lands in a shell command, and how its value is quoted there.

A scenario's ``run:`` string is shell code; ``{{ machines.db.hostname }}`` in it is a
value a machine reported, that is hostile input (a VM can report any hostname). Pasted
as is, ``echo "db={{ machines.db.hostname }}"`` with the hostname
``db$(touch /tmp/PWNED)`` runs ``touch`` on every peer the step targets. So a tag's
value is quoted **for the place it lands in**, the way an HTML template escapes for
the attribute or text it is in (context-aware escaping):

* the template text is scanned once by a small lexer of the step's shell (POSIX sh,
  cmd, PowerShell) with every tag as an opaque placeholder; each tag gets the lexical
  context it stands in (outside quotes, inside '...', inside "...", in a here-document,
  in a comment...);
* the value is then escaped so that it stays **one piece of text in that context**:
  it closes no quote, starts no substitution, ends no here-document, adds no command.

Placements that cannot be made safe are refused when the scenario is loaded, with the
reason (a tag inside backquotes, ``${...}``, ``$((...))``, ``$'...'``, right after a
backslash or a ``$``, in a here-document delimiter, after PowerShell's ``--%``...).
Values that a context cannot carry are refused when the step starts (a line break in a
comment or in cmd, ``%`` in cmd, a line that would end a here-document). ``| raw``
inserts a value as is: for values the scenario's author controls and means as code.

The lexers follow the shells' documented grammars (POSIX XCU 2.2-2.7; cmd's parser
phases; PowerShell's about_Quoting_Rules and about_Special_Characters), restricted to
what decides quoting. What the value means to the *program* that receives it (a value
passed on to ``sh -c`` or ``cmd /c`` from inside the command, or read by Python from a
here-document) is the author's to quote: see docs/scenarios.md.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

from .shelllex import PS_DOUBLE, PS_SINGLE, Pieces, Placement, QuotingError, lex

__all__ = [
    "DIALECTS",
    "Placement",
    "QuotingError",
    "argv_script",
    "dialect_for",
    "escape",
    "placements",
    "verify_rendered",
]

DIALECTS = ("sh", "cmd", "powershell")

_LINE_BREAKS = "\r\n\x0b\x0c\x85\u2028\u2029"


def dialect_for(shell: str | None, oses: Sequence[str]) -> str | None:
    """The quoting dialect of a ``run:`` string: its ``shell:``, else its targets'
    default shell (sh on Linux, cmd on Windows); None when targets mix both."""
    if shell in ("bash", "sh"):
        return "sh"
    if shell in ("cmd", "powershell"):
        return shell
    kinds = {"cmd" if o == "windows" else "sh" for o in oses}
    return kinds.pop() if len(kinds) == 1 else None


_SH_PROGRAMS = {"sh", "bash", "dash", "ksh", "zsh", "ash", "busybox"}
_PS_PROGRAMS = {"powershell", "powershell.exe", "pwsh", "pwsh.exe"}


def argv_script(argv: Sequence[str]) -> tuple[int, str] | None:
    """``(index, dialect)`` of a shell script inside an argv (``[sh, -c, SCRIPT]``,
    ``[powershell, ..., -Command, SCRIPT]``); None for a plain program."""
    prog = re.split(r"[\\/]", argv[0])[-1].lower() if argv else ""
    if prog.removesuffix(".exe") in _SH_PROGRAMS:
        for i, arg in enumerate(argv[1:], 1):
            if re.fullmatch(r"-[a-zA-Z]*c[a-zA-Z]*", arg) and i + 1 < len(argv):
                return i + 1, "sh"
            if not arg.startswith("-"):
                return None
    if prog in _PS_PROGRAMS:
        for i, arg in enumerate(argv[1:], 1):
            if arg.lower() in ("-command", "-c") and i + 1 < len(argv):
                return i + 1, "powershell"
    return None


def placements(pieces: Pieces, dialect: str) -> list[Placement]:
    """The context of every tag in ``pieces`` (``QuotingError`` for a refused one, its
    ``tag_index`` saying which tag): ``shelllex``."""
    return lex(pieces, dialect)


# -- escaping ----------------------------------------------------------------------------


def escape(value: str, p: Placement) -> str:
    """``value`` quoted for placement ``p`` (``QuotingError`` if it cannot be)."""
    if "\x00" in value:
        raise QuotingError("the value contains a NUL character, which no command can carry")
    if p.dialect == "sh":
        return _escape_sh(value, p)
    if p.dialect == "powershell":
        return _escape_ps(value, p)
    return _escape_cmd(value, p)


def _no_line_break(value: str, where: str) -> None:
    if any(ch in value for ch in _LINE_BREAKS):
        raise QuotingError(f"the value contains a line break, which would end {where}")


def _escape_sh(value: str, p: Placement) -> str:
    if p.kind == "word":
        return shlex.quote(value)
    if p.kind == "single":
        return value.replace("'", "'\\''")
    if p.kind == "double":
        return re.sub(r'([$`"\\])', r"\\\1", value)
    if p.kind == "heredoc":
        return re.sub(r"([$`\\])", r"\\\1", value)
    if p.kind == "heredoc-literal":
        return value
    if p.kind == "comment":
        _no_line_break(value, "the comment it is in")
        return value
    raise ValueError(p.kind)


def _escape_ps(value: str, p: Placement) -> str:
    if p.kind in ("word", "single"):
        doubled = "".join(ch * 2 if ch in PS_SINGLE else ch for ch in value)
        return f"'{doubled}'" if p.kind == "word" else doubled
    if p.kind in ("double", "here-string"):
        return "".join("`" + ch if ch in "`$" + PS_DOUBLE else ch for ch in value)
    if p.kind == "here-string-literal":
        return value
    if p.kind == "comment":
        _no_line_break(value, "the comment it is in")
        return value
    if p.kind == "block-comment":
        if "#>" in value:
            raise QuotingError("the value contains #>, which would end the comment it is in")
        return value
    raise ValueError(p.kind)


def _escape_cmd(value: str, p: Placement) -> str:
    _no_line_break(value, "the cmd command line")
    if "%" in value:
        raise QuotingError("the value contains %, which cmd expands before any quoting can apply")
    # cmd itself: inside "..." only " matters, and "" closes and reopens (nothing
    # between). The program's own argument parser (the Microsoft C runtime's) reads ""
    # in a quoted argument as one ", and backslashes as literal unless before a quote.
    out = re.sub(r'(\\*)"', lambda m: m.group(1) * 2 + '""', value)
    closing = p.kind == "word" or p.next_char == '"'
    if closing:
        out = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, out)
    return f'"{out}"' if p.kind == "word" else out


def verify_rendered(rendered: str, spans: Sequence[tuple[int, int, Placement]]) -> None:
    """Checks only the whole rendered text allows: no line that a value touches may end
    the here-document or here-string it is in (``spans``: output offsets of values)."""
    for start, end, p in spans:
        if p.terminator is None:
            continue
        line_start = rendered.rfind("\n", 0, start) + 1
        line_end = rendered.find("\n", end)
        lines = rendered[line_start : None if line_end < 0 else line_end].split("\n")
        for line in lines:
            if p.dialect == "sh":
                ends = (line.lstrip("\t") if p.strip_tabs else line) == p.terminator
            else:  # PowerShell wants "@ at the line's start; be stricter than it
                bare = line.lstrip()
                ends = len(bare) >= 2 and bare[0] in p.terminator and bare[1] == "@"
            if ends:
                raise QuotingError(
                    "the value would make a line that ends the here-document it is in"
                )
