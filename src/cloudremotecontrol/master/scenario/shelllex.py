"""The lexers of ``shellquote``: where each template tag stands in a command of POSIX
sh, PowerShell or cmd, read with the tags as opaque placeholders.

Each lexer follows its shell's grammar as far as it decides quoting (POSIX XCU 2.2-2.7;
PowerShell's about_Quoting_Rules, about_Comments, about_Parsing; cmd's parser phases),
returns one ``Placement`` per tag, and raises ``QuotingError`` for a tag where no
quoting is safe. ``shellquote`` says why this exists and how values are escaped.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["END", "PS_DOUBLE", "PS_SINGLE", "Pieces", "Placement", "QuotingError", "lex"]

# PowerShell treats these as quotes too (about_Quoting_Rules): a value must not be
# able to close a string with them.
PS_SINGLE = "'\u2018\u2019\u201a\u201b"
PS_DOUBLE = '"\u201c\u201d\u201e'
_PS_SEPARATORS = " \t\r\n;,(){}|&"
_SH_WORD_END = (" ", "\t", "\n", ";", "&", "|", "<", ">", "(", ")")


class QuotingError(ValueError):
    """A tag placed where no quoting is safe, or a value its place cannot carry."""

    tag_index: int | None = None


@dataclass(frozen=True)
class Placement:
    """The context of one tag: ``kind`` is one of

    ``word`` (outside quotes), ``single`` ('...'), ``double`` ("..."), ``heredoc``
    (sh here-document with expansions), ``heredoc-literal`` (quoted delimiter),
    ``here-string`` / ``here-string-literal`` (PowerShell @"..."@ / @'...'@),
    ``comment`` (to the end of the line), ``block-comment`` (PowerShell <# #>).
    ``terminator``: what must not start or fill a line the value touches (here-docs).
    ``next_char``: the template character right after the tag ('' at the end).
    """

    dialect: str
    kind: str
    terminator: str | None = None
    strip_tabs: bool = False
    next_char: str = ""


# The text is given as pieces: strings (template text) and None (a tag). The lexers see a
# tag as one opaque character and return one Placement per tag, in order.

Pieces = Sequence["str | None"]


class _Mark(enum.Enum):
    END = "end of text"


END = _Mark.END


class _Stream:
    """Characters of the template, a tag being the single item ``None``."""

    def __init__(self, pieces: Pieces) -> None:
        self.items: list[str | None] = []
        for p in pieces:
            if p is None:
                self.items.append(None)
            else:
                self.items.extend(p)
        self.i = 0

    def peek(self, k: int = 0) -> str | Literal[_Mark.END] | None:
        j = self.i + k
        return self.items[j] if j < len(self.items) else END

    def startswith(self, s: str) -> bool:
        return all(self.peek(k) == c for k, c in enumerate(s))

    def line_at(self, j: int) -> list[str | None]:
        """The items from ``j`` to the end of that line (newline excluded)."""
        out: list[str | None] = []
        while j < len(self.items) and self.items[j] != "\n":
            out.append(self.items[j])
            j += 1
        return out

    def next_char(self) -> str:
        nxt = self.peek(1)
        return nxt if isinstance(nxt, str) else ""


def _refuse(why: str) -> QuotingError:
    return QuotingError(why + " (or use `| raw` if the value is yours and meant as code)")


class _ShLexer:
    """POSIX sh (bash and dash alike for what matters here)."""

    def __init__(self, s: _Stream) -> None:
        self.s = s
        self.out: list[Placement] = []
        self.pending: list[tuple[str, bool, bool]] = []  # here-docs: (delim, quoted, strip)

    def place(self, kind: str, terminator: str | None = None, strip_tabs: bool = False) -> None:
        self.out.append(Placement("sh", kind, terminator, strip_tabs, next_char=self.s.next_char()))

    def run(self) -> list[Placement]:
        self.normal(closer=None)
        return self.out

    def _tag_after(self, prev: str | None) -> None:
        if prev == "\\":
            raise _refuse("a tag right after a backslash cannot be quoted")
        if prev == "$":
            raise _refuse("a tag right after `$` would become part of an expansion")

    def normal(self, closer: str | None) -> None:
        """Unquoted text; ``closer`` is ``)`` inside ``$(...)``."""
        s = self.s
        depth = 0
        word_start = True
        prev: str | None = None
        while (c := s.peek()) is not END:
            if c is None:
                self._tag_after(prev)
                self.place("word")
                s.i += 1
                prev, word_start = "x", False
                continue
            if c == "\n":
                s.i += 1
                self.heredocs()
                prev, word_start = "\n", True
                continue
            if c == "\\":
                if s.peek(1) is None:
                    raise _refuse("a tag right after a backslash cannot be quoted")
                s.i += 2
                prev, word_start = "x", False
                continue
            if c == "'":
                s.i += 1
                self.single()
            elif c == '"':
                s.i += 1
                self.double(heredoc=None)
            elif c == "`":
                s.i += 1
                self.refused_until("`", "inside backquotes (use $(...) instead)")
            elif c == "$" and s.peek(1) == "'":
                s.i += 2
                self.refused_until("'", "inside $'...'", escapes=True)
            elif c == "$" and s.peek(1) == '"':
                s.i += 2
                self.double(heredoc=None)
            elif c == "$" and s.peek(1) == "(" and s.peek(2) == "(":
                s.i += 3
                self.balanced("(", ")", 2, "inside $((...))")
            elif c == "$" and s.peek(1) == "(":
                s.i += 2
                self.normal(closer=")")
            elif c == "$" and s.peek(1) == "{":
                s.i += 2
                self.balanced("{", "}", 1, "inside ${...}")
            elif c == "#" and word_start:
                self.comment()
                continue
            elif c == "<" and s.startswith("<<") and s.peek(2) != "<":
                s.i += 2
                self.heredoc_operator()
            elif closer is not None and c == "(":
                depth += 1
                s.i += 1
            elif closer is not None and c == closer:
                s.i += 1
                if depth == 0:
                    return
                depth -= 1
            else:
                s.i += 1
            prev = c
            word_start = c in " \t;&|()<>"

    def single(self) -> None:
        s = self.s
        while (c := s.peek()) is not END:
            if c is None:
                self.place("single")
            s.i += 1
            if c == "'":
                return

    def double(self, heredoc: tuple[str, bool] | None) -> None:
        """Inside "..." (``heredoc``: inside an unquoted here-document body instead,
        where " is plain and the body ends at the delimiter line)."""
        s = self.s
        prev: str | None = None
        at_line_start = heredoc is not None
        while (c := s.peek()) is not END:
            if heredoc is not None and at_line_start:
                if self._heredoc_ends(heredoc):
                    return
                at_line_start = False
            if c is None:
                self._tag_after(prev)
                if heredoc is None:
                    self.place("double")
                else:
                    self.place("heredoc", terminator=heredoc[0], strip_tabs=heredoc[1])
                s.i += 1
                prev = "x"
                continue
            s.i += 1
            if c == "\\":
                if s.peek() is None:
                    raise _refuse("a tag right after a backslash cannot be quoted")
                if s.peek() is not END:
                    s.i += 1
                prev = "x"
                continue
            if c == '"' and heredoc is None:
                return
            if c == "`":
                self.refused_until("`", "inside backquotes (use $(...) instead)")
            elif c == "$" and s.peek() == "(" and s.peek(1) == "(":
                s.i += 2
                self.balanced("(", ")", 2, "inside $((...))")
            elif c == "$" and s.peek() == "(":
                s.i += 1
                self.normal(closer=")")
            elif c == "$" and s.peek() == "{":
                s.i += 1
                self.balanced("{", "}", 1, "inside ${...}")
            elif c == "\n":
                at_line_start = True
            prev = c
        if heredoc is not None:
            return  # a here-document may end with the text

    def refused_until(self, end: str, why: str, escapes: bool = False) -> None:
        s = self.s
        while (c := s.peek()) is not END:
            if c is None:
                raise _refuse(f"a tag {why} cannot be quoted")
            s.i += 1
            if escapes and c == "\\":
                s.i += 1
            elif c == end:
                return

    def balanced(self, open_: str, close: str, depth: int, why: str) -> None:
        s = self.s
        while (c := s.peek()) is not END:
            if c is None:
                raise _refuse(f"a tag {why} cannot be quoted")
            s.i += 1
            if c == "\\":
                s.i += 1
            elif c == "'":
                self.refused_until("'", why)
            elif c == open_:
                depth += 1
            elif c == close:
                depth -= 1
                if depth == 0:
                    return

    def comment(self) -> None:
        s = self.s
        while (c := s.peek()) is not END and c != "\n":
            if c is None:
                self.place("comment")
            s.i += 1

    def heredoc_operator(self) -> None:
        s = self.s
        strip = s.peek() == "-"
        if strip:
            s.i += 1
        while s.peek() in (" ", "\t"):
            s.i += 1
        word: list[str] = []
        quoted = False
        while (c := s.peek()) is not END and c not in (
            " ",
            "\t",
            "\n",
            ";",
            "&",
            "|",
            "<",
            ">",
            "(",
            ")",
        ):
            if c is None:
                raise _refuse("a tag in a here-document's delimiter cannot be quoted")
            s.i += 1
            if c in "'\"":
                quoted = True
                while (d := s.peek()) is not END and d != c:
                    if d is None:
                        raise _refuse("a tag in a here-document's delimiter cannot be quoted")
                    word.append(d)
                    s.i += 1
                s.i += 1
            elif c == "\\":
                quoted = True
                nxt = s.peek()
                if isinstance(nxt, str):
                    word.append(nxt)
                    s.i += 1
            else:
                word.append(c)
        if word:
            self.pending.append(("".join(word), quoted, strip))

    def heredocs(self) -> None:
        """After a newline: the bodies of the here-documents opened on that line."""
        while self.pending:
            delim, quoted, strip = self.pending.pop(0)
            if quoted:
                self.literal_heredoc((delim, strip))
            else:
                self.double(heredoc=(delim, strip))

    def _heredoc_ends(self, heredoc: tuple[str, bool]) -> bool:
        s = self.s
        line = s.line_at(s.i)
        if None in line:
            return False
        text = "".join(c for c in line if c is not None)
        if (text.lstrip("\t") if heredoc[1] else text) == heredoc[0]:
            s.i += len(line) + (1 if s.peek(len(line)) == "\n" else 0)
            return True
        return False

    def literal_heredoc(self, heredoc: tuple[str, bool]) -> None:
        s = self.s
        while s.peek() is not END:
            if self._heredoc_ends(heredoc):
                return
            while (c := s.peek()) is not END:
                if c is None:
                    self.place("heredoc-literal", terminator=heredoc[0], strip_tabs=heredoc[1])
                s.i += 1
                if c == "\n":
                    break


class _PsLexer:
    """Windows PowerShell 5.1 / PowerShell 7 (about_Quoting_Rules, about_Comments)."""

    def __init__(self, s: _Stream) -> None:
        self.s = s
        self.out: list[Placement] = []

    def place(self, kind: str, terminator: str | None = None, strip_tabs: bool = False) -> None:
        self.out.append(
            Placement("powershell", kind, terminator, strip_tabs, next_char=self.s.next_char())
        )

    def run(self) -> list[Placement]:
        self.normal(nested=False)
        return self.out

    @staticmethod
    def _tag_after(prev: str | None) -> None:
        if prev == "`":
            raise _refuse("a tag right after a backtick cannot be quoted")
        if prev == "$":
            raise _refuse("a tag right after `$` would become part of a variable")

    def normal(self, nested: bool) -> None:
        """Script text; ``nested``: inside ``$(...)`` of a string, ends at its ``)``."""
        s = self.s
        depth = 0
        prev: str | None = None
        token_start = True
        while (c := s.peek()) is not END:
            if c is None:
                self._tag_after(prev)
                nxt = s.peek(1)
                if not token_start or (isinstance(nxt, str) and nxt not in _PS_SEPARATORS):
                    raise _refuse(
                        "a tag glued to other text outside quotes: put the whole word in "
                        'double quotes ("db={{ ... }}"), where the value is escaped'
                    )
                self.place("word")
                s.i += 1
                prev, token_start = "x", False
                continue
            if c == "`":
                if s.peek(1) is None:
                    raise _refuse("a tag right after a backtick cannot be quoted")
                s.i += 2
                prev, token_start = "x", False
                continue
            s.i += 1
            if c in PS_SINGLE:
                self.single()
            elif c in PS_DOUBLE:
                self.double()
            elif (
                c == "@"
                and isinstance(s.peek(), str)
                and str(s.peek()) in PS_SINGLE + PS_DOUBLE
                and self._rest_blank(1)
            ):
                q = str(s.peek())
                self._skip_line()
                self.here_string(literal=q in PS_SINGLE)
            elif c == "<" and s.peek() == "#":
                s.i += 1
                self.block_comment()
            elif c == "#" and token_start:
                self.line_comment()
            elif c == "$" and s.peek() == "{":
                s.i += 1
                self.refused_until("}", "inside ${...}")
            elif c == "-" and s.startswith("-%") and token_start:
                s.i += 2
                self.refused_until("\n", "after --% (stop-parsing)")
            elif nested and c == "(":
                depth += 1
            elif nested and c == ")":
                if depth == 0:
                    return
                depth -= 1
            prev = c
            token_start = c in _PS_SEPARATORS

    def _here_string_opens(self) -> bool:
        q = self.s.peek()
        return isinstance(q, str) and q in PS_SINGLE + PS_DOUBLE and self._rest_blank(1)

    def _rest_blank(self, k: int) -> bool:
        """Whether only blanks follow, from ``k`` ahead to the end of the line."""
        s = self.s
        while (c := s.peek(k)) in (" ", "\t", "\r"):
            k += 1
        return c == "\n"

    def _skip_line(self) -> None:
        s = self.s
        while (c := s.peek()) is not END:
            s.i += 1
            if c == "\n":
                return

    def single(self) -> None:
        s = self.s
        while (c := s.peek()) is not END:
            if c is None:
                self.place("single")
                s.i += 1
                continue
            s.i += 1
            if c in PS_SINGLE:
                if isinstance(s.peek(), str) and str(s.peek()) in PS_SINGLE:
                    s.i += 1  # a doubled quote is one quote
                    continue
                return

    def double(self) -> None:
        s = self.s
        prev: str | None = None
        while (c := s.peek()) is not END:
            if c is None:
                self._tag_after(prev)
                self.place("double")
                s.i += 1
                prev = "x"
                continue
            if c == "`":
                if s.peek(1) is None:
                    raise _refuse("a tag right after a backtick cannot be quoted")
                s.i += 2
                prev = "x"
                continue
            s.i += 1
            if c in PS_DOUBLE:
                if isinstance(s.peek(), str) and str(s.peek()) in PS_DOUBLE:
                    s.i += 1
                    continue
                return
            if c == "$" and s.peek() == "(":
                s.i += 1
                self.normal(nested=True)
            elif c == "$" and s.peek() == "{":
                s.i += 1
                self.refused_until("}", "inside ${...}")
            prev = c

    def here_string(self, literal: bool) -> None:
        s = self.s
        ends = PS_SINGLE if literal else PS_DOUBLE
        prev: str | None = None
        at_line_start = True
        while (c := s.peek()) is not END:
            if at_line_start and isinstance(c, str) and c in ends and s.peek(1) == "@":
                s.i += 2
                return
            at_line_start = False
            if c is None:
                if not literal:
                    self._tag_after(prev)
                self.place("here-string-literal" if literal else "here-string", terminator=ends)
                s.i += 1
                prev = "x"
                continue
            s.i += 1
            if c == "\n":
                at_line_start = True
            elif not literal and c == "`":
                if s.peek() is None:
                    raise _refuse("a tag right after a backtick cannot be quoted")
                s.i += 1
            elif not literal and c == "$" and s.peek() == "(":
                s.i += 1
                self.normal(nested=True)
            elif not literal and c == "$" and s.peek() == "{":
                s.i += 1
                self.refused_until("}", "inside ${...}")
            prev = c

    def line_comment(self) -> None:
        s = self.s
        while (c := s.peek()) is not END and c != "\n":
            if c is None:
                self.place("comment")
            s.i += 1

    def block_comment(self) -> None:
        s = self.s
        while (c := s.peek()) is not END:
            if c is None:
                self.place("block-comment")
            elif c == "#" and s.peek(1) == ">":
                s.i += 2
                return
            s.i += 1

    def refused_until(self, end: str, why: str) -> None:
        s = self.s
        while (c := s.peek()) is not END:
            if c is None:
                raise _refuse(f"a tag {why} cannot be quoted")
            s.i += 1
            if c == end:
                return


class _CmdLexer:
    """cmd.exe's command line (``cmd /d /s /c``): quotes toggle per line, ``^``
    escapes outside quotes, ``%`` and ``!`` expand before anything else."""

    def __init__(self, s: _Stream) -> None:
        self.s = s
        self.out: list[Placement] = []

    def run(self) -> list[Placement]:
        s = self.s
        quoted = False
        prev: str | None = None
        while (c := s.peek()) is not END:
            if c is None:
                if prev == "^" and not quoted:
                    raise _refuse("a tag right after ^ cannot be quoted")
                if prev in ("%", "!"):
                    raise _refuse(f"a tag right after {prev} would become part of a variable")
                self.out.append(
                    Placement("cmd", "double" if quoted else "word", next_char=s.next_char())
                )
                s.i += 1
                prev = "x"
                continue
            s.i += 1
            if c == "^" and not quoted:
                if s.peek() is None:
                    raise _refuse("a tag right after ^ cannot be quoted")
                s.i += 1
                prev = "x"
                continue
            if c == '"':
                quoted = not quoted
            elif c == "\n":
                quoted = False
            prev = c
        return self.out


def lex(pieces: Pieces, dialect: str) -> list[Placement]:
    """The context of every tag in ``pieces`` (``QuotingError`` for a refused one, its
    ``tag_index`` saying which tag)."""
    stream = _Stream(pieces)
    lexers: dict[str, type[_ShLexer] | type[_PsLexer] | type[_CmdLexer]] = {
        "sh": _ShLexer,
        "powershell": _PsLexer,
        "cmd": _CmdLexer,
    }
    try:
        return lexers[dialect](stream).run()
    except QuotingError as exc:
        # The refused tag is at the stream's position or right after it.
        exc.tag_index = stream.items[: stream.i].count(None)
        raise
