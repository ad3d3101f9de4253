"""The ``View``: what the scenario runner tells whoever shows ``crc up`` / ``crc down``.

The runner and the steps call these methods (from any thread); the CLI's views
(cli/scenario_view.py: a live terminal view, plain lines, JSON lines) implement them, so
the master does not depend on the CLI. The base class shows nothing (the SDK and tests
use it as is).
"""

from __future__ import annotations

from typing import Any

__all__ = ["View"]


class View:
    """The calls the runner makes; the base class prints nothing (used by tests)."""

    def __enter__(self) -> View:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    def info(self, text: str, **doc: Any) -> None:
        """A note (``doc``: the same facts for --json)."""

    def machine(
        self, name: str, state: str | None = None, progress: str | None = None, **doc: Any
    ) -> None:
        """A machine's state or latest progress changed."""

    def step(self, event: str, name: str, **doc: Any) -> None:
        """started / retrying / succeeded / failed / skipped / done."""

    def output(self, step: str, machine: str | None, stream: str, text: str) -> None:
        """Output of a step's job on one machine."""

    def summary(self, doc: dict[str, Any]) -> None:
        """The end: ``doc`` has ``machines`` and ``steps`` lists (see runner.summary)."""
