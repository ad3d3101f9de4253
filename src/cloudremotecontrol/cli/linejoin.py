"""Joining a job's output into lines, in bounded memory (``crc run``, push, hosts sync).

Output reaches crc in chunks cut anywhere: a command writing slowly, a line of megabytes
sent in many messages. Printing each chunk as lines of its own would break such a line
into several, so the start of a line whose end has not come yet is held until its end
comes (or the machine's job ends).

Everything a machine sends is hostile, and a line may never end: one ``crc run`` on
1,000 machines must not hold a gigabyte because each of them wrote half a line. So what
is held is bounded twice:

- per machine and stream, ``hold`` characters (64 Ki): a longer line is printed in
  pieces of ``hold`` characters, each on a printed line of its own with the machine's
  prefix, the line going on in the next printed line with the same prefix;
- over all machines and streams, ``budget`` characters (4 Mi): a line start that would
  take more is made room for by printing, as pieces, the held starts that waited
  longest.

``LineJoiner`` does no I/O: it takes chunks in and gives back what to print.
"""

from __future__ import annotations

__all__ = ["BUDGET_CHARS", "HOLD_CHARS", "LineJoiner", "Piece"]

#: At most this many characters of a line are held (per machine and stream) or printed
#: as one piece.
HOLD_CHARS = 64 << 10
#: At most this many characters are held over all machines and streams.
BUDGET_CHARS = 4 << 20

#: ``(machine, stream, text)``: ``text`` is a whole line with its end, or a piece of one.
Piece = tuple[str, str, str]


def _body(line: str) -> int:
    """The length of ``line`` without its line end."""
    return len(line.splitlines()[0]) if line else 0


def _unended(line: str) -> bool:
    # A CR at the end may be the first half of a CRLF whose LF comes next.
    return line.endswith("\r") or _body(line) == len(line)


class LineJoiner:
    """Joins chunks of output into lines, by machine and stream. Print what ``feed`` and
    ``flush`` return, in order; call ``flush(machine)`` when a machine's job ended and
    ``flush()`` at the end."""

    def __init__(self, hold: int = HOLD_CHARS, budget: int = BUDGET_CHARS) -> None:
        if not 0 < hold < budget:
            raise ValueError("need 0 < hold < budget")
        self.hold = hold
        self.budget = budget
        # Least recently fed first: a start is taken out and put back on each feed.
        self._held: dict[tuple[str, str], str] = {}
        self._chars = 0

    @property
    def held_chars(self) -> int:
        """How many characters are held now (never more than ``budget``)."""
        return self._chars

    def feed(self, machine: str, stream: str, data: str) -> list[Piece]:
        """Take a chunk of ``machine``'s ``stream``; what to print now."""
        key = (machine, stream)
        start = self._held.pop(key, "")
        self._chars -= len(start)
        lines = (start + data).splitlines(keepends=True)
        tail = lines.pop() if lines and _unended(lines[-1]) else ""
        out: list[Piece] = []
        for line in lines:
            out += self._cut(machine, stream, line)
        if tail:
            while _body(tail) > self.hold:
                out.append((machine, stream, tail[: self.hold]))
                tail = tail[self.hold :]
            out += self._make_room(len(tail))
            self._held[key] = tail
            self._chars += len(tail)
        return out

    def flush(self, machine: str | None = None) -> list[Piece]:
        """The held starts of lines (of ``machine``, else all), to print as they are:
        their job ended, no end is coming."""
        out: list[Piece] = []
        for key in [k for k in self._held if machine is None or k[0] == machine]:
            text = self._held.pop(key)
            self._chars -= len(text)
            out.append((key[0], key[1], text))
        return out

    def _cut(self, machine: str, stream: str, line: str) -> list[Piece]:
        out: list[Piece] = []
        while len(line) > self.hold and _body(line) > self.hold:
            out.append((machine, stream, line[: self.hold]))
            line = line[self.hold :]
        out.append((machine, stream, line))
        return out

    def _make_room(self, chars: int) -> list[Piece]:
        out: list[Piece] = []
        while self._held and self._chars + chars > self.budget:
            key = next(iter(self._held))
            text = self._held.pop(key)
            self._chars -= len(text)
            out.append((key[0], key[1], text))
        return out
