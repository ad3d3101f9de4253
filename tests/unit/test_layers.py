"""Which part of the package may import which (docs/architecture.md, "The parts"),
read from the source: every import statement, also those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "cloudremotecontrol"

# part -> parts of ours it must never import (lazily or not)
FORBIDDEN = {
    "protocol": {"agent", "server", "master", "providers", "cli", "bootstrap"},
    # The agent package a VM gets leaves these out (bootstrap/package.py).
    "agent": {"server", "master", "providers", "bootstrap"},
    "server": {"master", "cli"},
    "master": {"server", "cli"},
    "providers": {"server", "master", "cli"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute module)`` for every import in ``path`` (relative ones resolved)."""
    package = ["cloudremotecontrol", *path.relative_to(SRC).parent.parts]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            out += [(node.lineno, f"{module}.{a.name}") for a in node.names]
    return out


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "cloudremotecontrol" and len(parts) > 1 else None


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_parts_import_only_what_they_may(part: str) -> None:
    bad = [
        f"{path.relative_to(SRC)}:{line}: {module}"
        for path in sorted((SRC / part).rglob("*.py"))
        for line, module in _imports(path)
        if _part(module) in FORBIDDEN[part]
    ]
    assert bad == []


def test_the_check_sees_relative_and_lazy_imports() -> None:
    """The checker is not vacuous: the CLI imports the master lazily, with dots."""
    found = {m for _, m in _imports(SRC / "cli" / "scenario_cmds.py")}
    assert "cloudremotecontrol.master.scenario.model.load_scenario" in found
