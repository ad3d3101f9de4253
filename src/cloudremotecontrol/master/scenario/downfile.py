"""What ``crc down FILE`` reads of a scenario file: its name and provider, nothing else.

Tearing down needs only the group (the scenario's name) and where its machines are (the
provider and its settings). A file edited since ``crc up`` — a typo in a step, a
``script:`` file deleted — must not keep machines running (and, on a cloud, billing):
the rest of the file is checked as ``crc up`` does, and its problems are handed back to
be said, not raised. Only a name or provider that cannot be read stops ``crc down``,
with the way to tear the scenario down without its file (``crc down --group NAME``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import InvalidInput
from ...protocol.names import check_name
from .model import parse_scenario
from .parser import ScenarioParser, check_field
from .yamlcompose import gc_paused
from .yamlnodes import MAX_SCENARIO_BYTES, NodeReader, Problem, ScenarioError, Where, read_bounded

__all__ = ["DownFileError", "DownTarget", "read_for_down"]


@dataclass(frozen=True)
class DownTarget:
    """The group to tear down and its provider, and the file's other problems (ignored)."""

    name: str
    provider: str
    provider_settings: dict[str, Any]
    ignored: list[Problem] = field(default_factory=list)


def _hint(name: str | None) -> str:
    return (
        "`crc down` needs the scenario's name and provider: "
        f"`crc down --group {name or 'NAME'}` tears the scenario down without its file"
    )


class DownFileError(ScenarioError):
    """The name or the provider of the file cannot be read: ``crc down --group`` can."""

    def __init__(self, problems: list[Problem], name: str | None) -> None:
        super().__init__(problems)
        self.message = self.message.replace(
            "invalid scenario:", f"invalid scenario ({_hint(name)}):", 1
        )
        self.args = (self.message,)


def _about_name_or_provider(problem: Problem) -> bool:
    return problem.field in ("name", "provider") or problem.field.startswith("provider.")


def read_for_down(path: str | Path) -> DownTarget:
    """The name and provider of scenario file ``path``, with every other problem of the
    file in ``ignored``; ``DownFileError`` when the name or the provider is unreadable."""
    p = Path(path)
    try:
        text = read_bounded(p, MAX_SCENARIO_BYTES, "a scenario")
    except InvalidInput as exc:
        raise InvalidInput(f"{exc.message}: {_hint(None)}") from None
    try:
        s = parse_scenario(text, p)
    except ScenarioError as exc:
        ignored = exc.problems
    else:
        return DownTarget(s.name, s.provider, s.provider_settings)
    shown = p.name if p.is_file() or not p.is_absolute() else str(p)  # as parse_scenario
    with gc_paused():
        r = NodeReader(shown, text)
        try:
            name, provider, settings, problems = _essentials(r, ScenarioParser(r, p))
        finally:
            r.loader.dispose()
    if problems or name is None:
        raise DownFileError(problems or [Problem(Where(shown, 1, 1), "name", "missing")], name)
    return DownTarget(name, provider, settings, ignored)


def _essentials(
    r: NodeReader, parser: ScenarioParser
) -> tuple[str | None, str, dict[str, Any], list[Problem]]:
    """Read ``name`` and ``provider`` only: the problems about them (or about the file as
    a whole: not YAML, not a mapping)."""
    root = r.root()
    if root is None:
        if not r.problems:
            r.error(None, "", "empty file")
        return None, parser.provider, {}, list(r.problems)
    top = r.mapping(root, "")  # any field: the others are not read here
    if top is None:
        return None, parser.provider, {}, list(r.problems)
    # Of the mapping's problems (a key written twice...), those of the name or provider.
    problems = [pr for pr in r.problems if _about_name_or_provider(pr)]
    before = len(r.problems)
    name = None
    if "name" not in top:
        r.error(root, "name", "required field is missing")
    else:
        node = top["name"][1]
        text = r.string(node, "name")
        name = text and check_field(r, node, "name", check_name, text, "scenario name")
    settings = parser.provider_settings(top)
    problems += r.problems[before:]
    return name, parser.provider, settings, problems
