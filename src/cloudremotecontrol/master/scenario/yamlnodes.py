"""Reading YAML with line numbers: a composed node tree, read node by node.

Why not ``yaml.safe_load`` plus a schema library: users need to be told *where* a file is
wrong (``demo.yaml:14:7: steps.install.retries: ...``), and ``safe_load`` throws the
marks away. PyYAML's composer keeps a mark per node (libyaml's, where the two agree:
``yamlcompose``); ``NodeReader`` turns nodes into values and records every problem with
its file, line, column and field path, so one run reports all of them. Duplicate keys,
which ``safe_load`` silently resolves to the last one, are a problem too.
"""

from __future__ import annotations

import math
import os
import re
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ...errors import InvalidInput
from ...fslinks import file_kind
from .yamlcompose import compose, is_plain

C = TypeVar("C", bound=str)  # one of a choice's values (a Literal type, or str)

__all__ = [
    "MAX_EXPANDED_NODES",
    "MAX_SCENARIO_BYTES",
    "NodeReader",
    "Problem",
    "ScenarioError",
    "Where",
    "parse_duration",
    "read_bounded",
    "regular_file_problem",
]

MAX_SCENARIO_BYTES = 4 << 20  # a scenario file
# Nodes of a file once its aliases are expanded: a few lines of anchors and aliases
# can stand for billions of values (a "billion laughs"), which a template would render.
MAX_EXPANDED_NODES = 1_000_000

# The longest wait, delay or timeout a scenario may give (a group lasts at most that long
# too): past it, a typo (``1.0e+30``), and a delay a thread cannot even wait for.
MAX_DURATION = 365 * 86400.0

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


# -- problems ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Where:
    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Problem:
    where: Where
    field: str
    message: str

    def __str__(self) -> str:
        return (
            f"{self.where}: {self.field}: {self.message}"
            if self.field
            else f"{self.where}: {self.message}"
        )


def _not_a_name(knode: yaml.Node, key: object, allowed: tuple[str, ...] | None) -> str:
    """Why a mapping's key is refused: YAML 1.1 reads ``on``, ``no``, ``yes``, ``off``,
    numbers and dates as other types than strings."""
    expected = f" (expected one of: {', '.join(allowed)})" if allowed else ""
    if not isinstance(knode, yaml.ScalarNode):
        return "keys must be strings" + expected
    text = knode.value if len(knode.value) <= 40 else knode.value[:40] + "..."
    return (
        f"key {text!r} is not a string in YAML (it reads as {type(key).__name__} {key!r}): "
        f"quote it if it is meant{expected}"
    )


class ScenarioError(InvalidInput):
    """The scenario file is invalid; ``problems`` lists each with file:line:column, in
    the order of the file."""

    code = "invalid_scenario"
    multiline = True

    def __init__(self, problems: list[Problem]) -> None:
        problems = sorted(problems, key=lambda p: (p.where.file, p.where.line, p.where.column))
        shown = [_shortened(str(p)) for p in problems[:20]]
        if len(problems) > 20:
            shown.append(f"... and {len(problems) - 20} more")
        super().__init__("invalid scenario:\n  " + "\n  ".join(shown))
        self.problems = problems


MAX_PROBLEM_CHARS = 400  # a problem quotes the file's text: a 4 MiB name is not echoed


def _shortened(text: str) -> str:
    if len(text) <= MAX_PROBLEM_CHARS:
        return text
    return text[: MAX_PROBLEM_CHARS - 1] + "…"


def parse_duration(value: object, maximum: float = MAX_DURATION) -> float:
    """``90``, ``"90s"``, ``"15m"``, ``"8h"``, ``"2d"`` -> seconds, at most ``maximum``
    (``ValueError`` if not)."""
    if isinstance(value, bool) or (isinstance(value, float) and math.isnan(value)):
        raise ValueError("expected a duration such as 90s, 15m or 8h")  # YAML's .nan too
    if isinstance(value, (int, float)):
        # A whole number too large for a float (YAML reads 400 digits as one) is too long.
        seconds = float(value) if abs(value) < 1e300 else (math.inf if value > 0 else -1.0)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(f"{value!r} is not a duration: use e.g. 90s, 15m or 8h")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    if seconds > maximum:  # YAML's .inf among them
        raise ValueError(f"a duration must be at most {maximum / 86400:g}d")
    return seconds


def regular_file_problem(path: Path) -> str | None:
    """Why ``path`` is not a regular file that can be read (it does not exist, or is a
    FIFO, a device, a socket or a directory), or None when it is one. Only ``stat``:
    nothing is opened (opening a FIFO waits for a writer)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"no such file: {path}"
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    if stat.S_ISREG(mode):
        return None
    return f"{path} is not a regular file but {file_kind(mode)}"


def _is_fifo(path: Path) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


def read_bounded(path: Path, limit: int, what: str) -> str:
    """The UTF-8 text of ``path`` (a regular file, or a pipe: ``crc up <(envsubst <
    lab.yaml)``) with its line ends made ``\n`` (as ``read_text`` does: a script saved
    on Windows runs in sh), refused past ``limit`` bytes without reading further.
    Anything else (a device such as ``/dev/zero``, a socket, a directory) is refused
    before it is read. It is opened without waiting (``O_NONBLOCK``): a named FIFO no
    program writes to reads as empty at once, where a plain open would wait for a
    writer for ever."""
    why = regular_file_problem(path)
    if why is not None and why.startswith(f"{path} is not") and not _is_fifo(path):
        raise InvalidInput(f"{why}: {what} is read from a regular file only")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fd).st_mode  # the file opened (not replaced since the stat)
        if stat.S_ISFIFO(mode):
            os.set_blocking(fd, True)  # opened: now read what its writer sends, to EOF
        elif not stat.S_ISREG(mode):
            raise InvalidInput(
                f"{path} is not a regular file but {file_kind(mode)}: {what} is read from a "
                "regular file only"
            )
        try:
            data = fh.read(limit + 1)
        except OSError as exc:
            raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise InvalidInput(f"{path} is over {limit >> 10} KiB, the most {what} may be")
    try:
        return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as exc:
        # Where, as an editor shows it: the line, and the column in bytes of that line.
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise InvalidInput(
            f"cannot read {path}: not UTF-8 text (line {line}, column {column}: byte "
            f"0x{data[exc.start]:02x}); save it as UTF-8"
        ) from None


def expanded_nodes(root: yaml.Node, cap: int) -> int:
    """How many nodes ``root`` holds once every alias is expanded (an alias is the node
    it names, shared in the composed tree), counted without expanding, up to ``cap``."""
    # Most files have no alias: then it is the number of nodes, found in one pass.
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            return _expanded_with_aliases(root, cap)
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            for pair in node.value:
                stack.extend(pair)
    return min(len(seen), cap)


def _expanded_with_aliases(root: yaml.Node, cap: int) -> int:
    size: dict[int, int] = {}
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        children = _children(node)
        if done:
            size[id(node)] = min(cap, 1 + sum(size.get(id(c), 0) for c in children))
        elif id(node) not in seen:  # an alias inside itself counts once (refused later)
            seen.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in children)
    return size[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


_INT_TAG = "tag:yaml.org,2002:int"
# Plain scalars YAML 1.1 reads as other than text (``=`` and ``<<`` are tags of their
# own, which no value is constructed for): where text is meant (``as_written``), a plain
# scalar of one of these is taken as the text written. Null (``K:``, ``~``) is not.
_AS_WRITTEN_TAGS = frozenset(
    f"tag:yaml.org,2002:{t}" for t in ("int", "float", "bool", "timestamp", "value", "merge")
)


def _written(node: yaml.Node) -> str | None:
    """The text of ``node`` if it is a plain scalar YAML reads as a number, a boolean or
    a date (``010``, ``true``, ``2024-01-31``), as written; else None."""
    if is_plain(node) and node.tag in _AS_WRITTEN_TAGS:
        return str(node.value)
    return None


def _huge_integer(node: yaml.Node) -> yaml.ScalarNode | None:
    """The integer scalar of ``node``'s subtree with more digits than Python converts
    (``sys.get_int_max_str_digits``, 4300 by default), or None."""
    limit = getattr(sys, "get_int_max_str_digits", lambda: 4300)()
    seen: set[int] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if isinstance(n, yaml.ScalarNode):
            if n.tag == _INT_TAG and limit and sum(c.isdigit() for c in n.value) > limit:
                return n
        else:
            stack.extend(_children(n))
    return None


class NodeReader:
    """Reads a composed YAML tree, collecting problems instead of stopping at the first."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.text = text
        self.problems: list[Problem] = []
        self._refused = False  # the text has a character YAML allows nowhere
        try:
            self.loader = yaml.SafeLoader(text)
        except yaml.reader.ReaderError as exc:
            self._refused = True
            self.loader = yaml.SafeLoader("")
            before = text[: exc.position]
            where = Where(file, before.count("\n") + 1, len(before) - before.rfind("\n"))
            char = exc.character if isinstance(exc.character, int) else ord(exc.character)
            self.problems.append(
                Problem(
                    where,
                    "",
                    f"not valid YAML: character U+{char:04X} is not allowed in a YAML file "
                    f"({'a control character' if char < 0xA0 else 'a non-character'}: "
                    "remove it)",
                )
            )
        self._unreadable: set[int] = set()  # nodes whose value() failed (told once)

    def where(self, node: yaml.Node | None) -> Where:
        mark = node.start_mark if node is not None else None
        if mark is None:
            return Where(self.file, 1, 1)
        return Where(self.file, mark.line + 1, mark.column + 1)

    def error(self, node: yaml.Node | None, path: str, message: str) -> None:
        if node is not None and id(node) in self._unreadable:
            return  # told once already: what is wrong with it, not that it is not a string
        self.problems.append(Problem(self.where(node), path, message))

    def root(self) -> yaml.Node | None:
        if self._refused:
            return None
        try:
            node = compose(self.text, self.loader)
            if node is not None and expanded_nodes(node, MAX_EXPANDED_NODES + 1) > (
                MAX_EXPANDED_NODES
            ):
                self.problems.append(
                    Problem(
                        Where(self.file, 1, 1),
                        "",
                        f"over {MAX_EXPANDED_NODES} values once its aliases (*name) are "
                        "expanded: use fewer aliases of large anchors",
                    )
                )
                return None
            return node
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = (
                Where(self.file, mark.line + 1, mark.column + 1) if mark else Where(self.file, 1, 1)
            )
            self.problems.append(Problem(where, "", f"not valid YAML: {exc.problem}"))
        except yaml.YAMLError as exc:
            self.problems.append(Problem(Where(self.file, 1, 1), "", f"not valid YAML: {exc}"))
        except RecursionError:  # PyYAML's composer recurses once per level of nesting
            self.problems.append(Problem(Where(self.file, 1, 1), "", "nested too deeply"))
        return None

    def value(self, node: yaml.Node, path: str = "") -> Any:
        """The plain Python value of a subtree (scalars typed as YAML 1.1 says); ``None``,
        with the problem recorded once (at ``path``), for one that has none: an alias
        inside itself (``&x [*x]``), an unknown tag (``!foo``), a date that does not
        exist, an integer of more digits than Python converts."""
        try:
            return self.loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as exc:
            huge = _huge_integer(node) if isinstance(exc, ValueError) else None
            if huge is not None and id(node) not in self._unreadable:
                digits = sum(c.isdigit() for c in huge.value)
                self.problems.append(
                    Problem(self.where(huge), path, f"number too large ({digits} digits)")
                )
                self._unreadable.add(id(node))
            elif id(node) not in self._unreadable:
                problem = getattr(exc, "problem", None) or str(exc)
                if isinstance(exc, RecursionError):
                    problem = "nested too deeply"
                self.error(node, "", f"not valid YAML: {problem}")
                self._unreadable.add(id(node))
            return None

    def mapping(
        self, node: yaml.Node, path: str, allowed: tuple[str, ...] | None = None
    ) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
        """``{key: (key_node, value_node)}``, or None (problem recorded) if not a mapping."""
        if not isinstance(node, yaml.MappingNode):
            self.error(node, path, "expected a mapping (key: value lines)")
            return None
        self.loader.flatten_mapping(node)  # YAML merge keys (<<: *anchor)
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            key = self.value(knode, path) if isinstance(knode, yaml.ScalarNode) else None
            if not isinstance(key, str):
                self.error(knode, path, _not_a_name(knode, key, allowed))
                continue
            sub = f"{path}.{key}" if path else key
            if key in out:
                self.error(knode, sub, "duplicate key (the earlier one would be ignored)")
                continue
            if allowed is not None and key not in allowed:
                self.error(knode, sub, f"unknown field (expected one of: {', '.join(allowed)})")
                continue
            out[key] = (knode, vnode)
        return out

    def string(
        self, node: yaml.Node, path: str, *, empty: bool = False, as_written: bool = False
    ) -> str | None:
        """The text of a scalar. ``as_written``: where the file gives text (a command, an
        argv's element, a path, an env value), an unquoted number, boolean or date is the
        text written (``cwd: 010`` is ``"010"``, not YAML's 8); null is still refused."""
        written = _written(node) if as_written else None
        if written is not None:
            return written
        value = self.value(node, path) if isinstance(node, yaml.ScalarNode) else None
        if isinstance(value, bool) or value is None or not isinstance(value, (str, int, float)):
            self.error(node, path, "expected a string")
            return None
        text = str(value)
        if not text and not empty:
            self.error(node, path, "must not be empty")
            return None
        return text

    def str_list(self, node: yaml.Node, path: str, *, as_written: bool = False) -> list[str] | None:
        """A string or a list of strings (``as_written``: each as ``string`` takes it)."""
        if as_written and _written(node) is not None:
            return [str(_written(node))]
        if isinstance(node, yaml.ScalarNode) and self.value(node, path) is not None:
            one = self.string(node, path)
            return None if one is None else [one]
        if isinstance(node, yaml.ScalarNode):  # null: the empty list
            return []
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, path, "expected a string or a list of strings")
            return None
        items = [
            self.string(n, f"{path}[{i}]", as_written=as_written) for i, n in enumerate(node.value)
        ]
        return None if any(i is None for i in items) else [i for i in items if i is not None]

    def str_map(
        self, node: yaml.Node, path: str, *, as_written: bool = False
    ) -> dict[str, str] | None:
        """``{key: text}``. ``as_written``: an unquoted number, boolean or date is taken
        as the text written (``PORT: 010`` is ``"010"``, ``DEBUG: yes`` is ``"yes"``),
        not as the value YAML reads (8, True); only null (``K:``, ``~``) is refused. Plain
        is plain to both composers (``yamlcompose.is_plain``)."""
        entries = self.mapping(node, path)
        if entries is None:
            return None
        out = {}
        for key, (_, vnode) in entries.items():
            text = self.string(vnode, f"{path}.{key}", empty=True, as_written=as_written)
            if text is not None:
                out[key] = text
        return out

    def integer(
        self, node: yaml.Node, path: str, minimum: int = 0, maximum: int = 100
    ) -> int | None:
        value = self.value(node, path) if isinstance(node, yaml.ScalarNode) else None
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            self.error(node, path, f"expected a whole number from {minimum} to {maximum}")
            return None
        return value

    def duration(self, node: yaml.Node, path: str, maximum: float = MAX_DURATION) -> float | None:
        value = self.value(node, path) if isinstance(node, yaml.ScalarNode) else None
        try:
            return parse_duration(value, maximum)
        except ValueError as exc:
            self.error(node, path, str(exc))
            return None

    def choice(self, node: yaml.Node, path: str, choices: tuple[C, ...]) -> C | None:
        text = self.string(node, path)
        if text is None:
            return None
        for choice in choices:
            if text == choice:
                return choice
        self.error(node, path, f"{text!r} is not one of: {', '.join(choices)}")
        return None
