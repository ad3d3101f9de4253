"""``{{ machines.mysql.private_ip }}``: the scenario's only template syntax.

Deliberately tiny instead of Jinja: a tag is a dotted path into a context of plain data,
optionally followed by one filter. There are no expressions, loops, attribute calls or
includes, so a scenario file can never run code on the master, and every reference can
be checked when the file is loaded (``check``), long before a machine exists.

    {{ vars.db_name }}                    a variable of the scenario
    {{ scenario.name }}                   the scenario (= group) name
    {{ machines.mysql.private_ip }}       a machine's address on the private network
    {{ machines.web.labels.role }}        a label
    {{ machines.db.ips.0 }}               list items by index
    {{ vars.password | quote }}           shell-quoted (shlex.quote; in a command: as always)
    {{ machines.web | json }}             JSON
    {{ vars.flags | raw }}                in a command: inserted as is, unquoted

A value that is not known yet (a machine that has not reported an address) is an error
at render time, never an empty string that would make a command do something else. The
variables are known when the file is loaded: a path into them that leads nowhere, or to
null (but with ``| json``: ``null``), is refused then, as an unclosed ``{{`` is. There is
no escape: a literal ``{{`` is a variable's value (``{{ vars.open }}``, ``open: "{{"``).

In shell code (``render(..., dialect=...)``: a ``run:`` string, a ``script:`` file, the
script of ``[sh, -c, ...]``) every value is quoted for the place it lands in, unless
the tag says ``| raw``: machines report hostnames and addresses, and a machine is not
trusted to write its peers' commands (``shellquote.py`` says how).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Container, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ...errors import InvalidInput
from . import shellquote

__all__ = [
    "MACHINE_FIELDS",
    "Reference",
    "TemplateError",
    "check",
    "references",
    "render",
    "render_value",
]

_TAG = re.compile(r"\{\{(.*?)\}\}", re.S)
_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*$")

FILTERS: dict[str, Callable[[str], str]] = {
    "quote": shlex.quote,
    "json": lambda s: s,  # the value is JSON-encoded before filters apply: see _format
    "raw": lambda s: s,  # in shell code: not quoted (see render)
}

# What ``machines.<name>.`` offers; ``labels`` and ``facts`` take one more segment.
MACHINE_FIELDS = frozenset(
    {
        "name",
        "state",
        "os",
        "hostname",
        "ip",
        "private_ip",
        "public_ip",
        "ips",
        "labels",
        "facts",
        "instance_id",
    }
)
_ROOTS = ("vars", "machines", "scenario")


class TemplateError(InvalidInput, ValueError):
    """A tag that cannot be parsed or resolved; the message names the tag. An input
    error (a step that meets one fails with it, not as an internal error)."""


@dataclass(frozen=True)
class Reference:
    text: str  # the tag as written, for messages
    path: tuple[str, ...]
    filter: str | None


def references(text: str) -> Iterator[Reference]:
    """Every tag in ``text`` (``TemplateError`` for a malformed one, or a ``{{`` that
    no ``}}`` closes: a tag that would otherwise pass as text, unfilled)."""
    end = 0
    for match in _TAG.finditer(text):
        end = match.end()
        inner = match.group(1).strip()
        expr, bar, filt = inner.partition("|")
        expr, filt = expr.strip(), filt.strip()
        if not _PATH.match(expr):
            raise TemplateError(
                f"{{{{ {inner} }}}}: expected a dotted name such as "
                "machines.web.private_ip or vars.NAME"
            )
        if bar and filt not in FILTERS:
            raise TemplateError(
                f"{{{{ {inner} }}}}: unknown filter {filt!r} (known: {', '.join(sorted(FILTERS))})"
            )
        yield Reference(match.group(0), tuple(expr.split(".")), filt if bar else None)
    # A "{{" before the last tag would have started a tag: only one after it is unclosed.
    start = text.find("{{", end)
    if start >= 0:
        line = text[start:].split("\n", 1)[0]
        shown = line if len(line) <= 40 else line[:40] + "..."
        raise TemplateError(
            f"{shown}: `{{{{` with no matching `}}}}` (a tag is {{{{ NAME }}}}; a literal {{{{ "
            'is a variable\'s value: open: "{{" in `variables:`, then {{ vars.open }})'
        )


def check(
    text: str, variables: Mapping[str, Any], machines: Container[str], dialect: str | None = None
) -> list[str]:
    """Problems with the tags of ``text``, found without any machine running; with
    ``dialect`` (shell code), also tags placed where no quoting is safe."""
    problems = []
    try:
        refs = list(references(text))
    except TemplateError as exc:
        return [str(exc)]
    for ref in refs:
        root, rest = ref.path[0], ref.path[1:]
        if root not in _ROOTS:
            problems.append(
                f"{ref.text}: unknown name {root!r} (use vars., machines. or scenario.)"
            )
        elif root == "vars":
            if not rest:
                problems.append(f"{ref.text}: name a variable, e.g. vars.NAME")
            elif rest[0] not in variables:
                problems.append(f"{ref.text}: no variable {rest[0]!r} in `variables:`")
            else:  # the variables are known now: the whole path, and the value's text
                try:
                    _format(ref, _lookup({"vars": variables}, ref))
                except TemplateError as exc:
                    problems.append(str(exc))
        elif root == "scenario":
            if rest != ("name",):
                problems.append(f"{ref.text}: only scenario.name exists")
        elif not rest:
            problems.append(f"{ref.text}: name a machine, e.g. machines.web.private_ip")
        elif rest[0] not in machines:
            problems.append(f"{ref.text}: no machine {rest[0]!r} in `machines:`")
        elif len(rest) > 1 and rest[1] not in MACHINE_FIELDS:
            problems.append(
                f"{ref.text}: machines have no field {rest[1]!r} (known: "
                f"{', '.join(sorted(MACHINE_FIELDS))})"
            )
        elif len(rest) > 2 and rest[1] == "labels" and isinstance(machines, Mapping):
            # The labels are the file's (its machines are made with them).
            labels = getattr(machines[rest[0]], "labels", None)
            if isinstance(labels, Mapping) and rest[2] not in labels:
                known = ", ".join(sorted(labels)) or "none"
                problems.append(
                    f"{ref.text}: machine {rest[0]!r} has no label {rest[2]!r} (its labels: "
                    f"{known})"
                )
    if dialect is not None and refs:
        try:
            _placements(text, refs, dialect)
        except TemplateError as exc:
            problems.append(str(exc))
    return problems


def _pieces(text: str, refs: list[Reference]) -> list[str | None]:
    """``text`` as static parts and None for each tag to quote (``| raw`` tags are left
    out: they are code, and the lexer reads around them)."""
    pieces: list[str | None] = []
    pos = 0
    for match, ref in zip(_TAG.finditer(text), refs, strict=True):
        pieces.append(text[pos : match.start()])
        if ref.filter != "raw":
            pieces.append(None)
        pos = match.end()
    pieces.append(text[pos:])
    return pieces


def _placements(
    text: str, refs: list[Reference], dialect: str
) -> list[shellquote.Placement | None]:
    """Each tag's context in shell code (None for ``| raw``, which is not quoted)."""
    quoted = [ref for ref in refs if ref.filter != "raw"]
    try:
        places = iter(shellquote.placements(_pieces(text, refs), dialect))
    except shellquote.QuotingError as exc:
        i = exc.tag_index if exc.tag_index is not None and exc.tag_index < len(quoted) else 0
        raise TemplateError(f"{quoted[i].text}: {exc}") from None
    return [None if ref.filter == "raw" else next(places) for ref in refs]


def _lookup(context: Mapping[str, Any], ref: Reference) -> Any:
    value: Any = context
    for i, seg in enumerate(ref.path):
        number = int(seg) if seg.isascii() and seg.isdigit() and len(seg) <= 18 else None
        if isinstance(value, Mapping) and seg in value:
            value = value[seg]
        elif isinstance(value, Mapping) and number is not None and _int_key(value, number):
            value = value[number]  # a YAML key written as a number: ports: {80: web}
        elif isinstance(value, (list, tuple)) and number is not None and number < len(value):
            value = value[number]
        else:
            where = ".".join(ref.path[:i]) or "the context"
            raise TemplateError(f"{ref.text}: {where} has no {seg!r}{_parts(value)}")
    if value is None and ref.path[0] == "vars":
        if ref.filter == "json":
            return None  # JSON has null
        raise TemplateError(
            f"{ref.text}: {'.'.join(ref.path)} is null in `variables:` (a key with no "
            'value, null or ~): give it a value ("" for empty text), or write | json for null'
        )
    if value is None:
        raise TemplateError(f"{ref.text}: no value yet (the machine has not reported it)")
    return value


def _int_key(mapping: Mapping[Any, Any], number: int) -> bool:
    return any(type(k) is int and k == number for k in mapping)


def _parts(value: Any) -> str:
    """What ``value`` has instead, for a path that leads nowhere in it."""
    if isinstance(value, Mapping):
        keys = ", ".join(sorted(str(k) for k in value))
        if not keys:
            return " (an empty mapping)"
        return f" (its keys: {keys if len(keys) <= 200 else keys[:200] + '...'})"
    if isinstance(value, (list, tuple)):
        if not value:
            return " (an empty list)"
        last = len(value) - 1
        return f" (a list of {len(value)}: index 0{f' to {last}' if last else ''})"
    return " (a single value, not a mapping or a list)"


def _json(ref: Reference, value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except ValueError:
        raise TemplateError(f"{ref.text}: NaN and Infinity have no JSON form") from None
    except TypeError as exc:  # a YAML !!binary, !!set or date: not JSON
        raise TemplateError(f"{ref.text}: no JSON form ({exc})") from None


def _format(ref: Reference, value: Any, in_shell: bool = False) -> str:
    filt = ref.filter
    if filt == "json":
        return _json(ref, value)
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (dict, list, tuple)):
        text = _json(ref, value)
    elif isinstance(value, (bytes, bytearray, set, frozenset)):  # YAML !!binary, !!set
        raise TemplateError(
            f"{ref.text}: a YAML !!binary or !!set value has no text form; give a string or a list"
        )
    else:
        text = str(value)
    if in_shell:  # shell code quotes every value for its place: see render
        return text
    return FILTERS[filt](text) if filt else text


def render(text: str, context: Mapping[str, Any], dialect: str | None = None) -> str:
    """``text`` with every tag replaced from ``context`` (``TemplateError`` if unknown).

    With ``dialect`` (``sh``, ``cmd``, ``powershell``) ``text`` is shell code: each value
    is quoted for its place in it (``shellquote``), except with ``| raw``."""
    if "{{" not in text:
        return text
    refs = list(references(text))
    places = _placements(text, refs, dialect) if dialect else [None] * len(refs)
    out: list[str] = []
    spans: list[tuple[int, int, shellquote.Placement]] = []
    pos = length = 0
    for ref, match, place in zip(refs, _TAG.finditer(text), places, strict=True):
        before = text[pos : match.start()]
        value = _format(ref, _lookup(context, ref), in_shell=dialect is not None)
        if place is not None:
            try:
                value = shellquote.escape(value, place)
            except shellquote.QuotingError as exc:
                raise TemplateError(f"{ref.text}: {exc}") from None
            start = length + len(before)
            spans.append((start, start + len(value), place))
        out += [before, value]
        length += len(before) + len(value)
        pos = match.end()
    out.append(text[pos:])
    rendered = "".join(out)
    try:
        shellquote.verify_rendered(rendered, spans)
    except shellquote.QuotingError as exc:
        raise TemplateError(f"{text[:60]!r}...: {exc}") from None
    return rendered


def render_value(value: Any, context: Mapping[str, Any]) -> Any:
    """Render every string inside ``value`` (dicts, lists), keys included."""
    if isinstance(value, str):
        return render(value, context)
    if isinstance(value, dict):
        return {render(str(k), context): render_value(v, context) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [render_value(v, context) for v in value]
    return value
