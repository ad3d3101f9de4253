"""The scenario file: YAML in, a typed, validated ``Scenario`` out.

The classes here are what the rest of the runner sees; ``parser.py`` builds them and
holds every check of the format documented in docs/scenarios.md. Problems carry the
file, line, column and field (see ``yamlnodes``), and all of them are reported at once::

    demo.yaml:14:7: steps.install.retries: expected a whole number from 0 to 100
    demo.yaml:20:5: steps[3].needs: no step named 'instal'

Steps without ``needs:`` run after the step written before them (a scenario reads top
to bottom); ``needs: [a, b]`` names exact dependencies and ``needs: []`` none, which is
how independent steps run in parallel.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ...protocol.rollout import Rollout
from .yamlcompose import gc_paused
from .yamlnodes import (
    MAX_SCENARIO_BYTES,
    NodeReader,
    Problem,
    ScenarioError,
    Where,
    parse_duration,
    read_bounded,
)

__all__ = [
    "STEP_KINDS",
    "Action",
    "HostsAction",
    "MachineDef",
    "Problem",
    "PushAction",
    "RebootAction",
    "RunAction",
    "Scenario",
    "ScenarioError",
    "SendAction",
    "Step",
    "WaitAction",
    "Where",
    "load_scenario",
    "parse_duration",
    "parse_scenario",
]

STEP_KINDS = ("run", "script", "push", "hosts", "wait", "send", "reboot")
DEFAULT_READY_TIMEOUT = 600.0
DEFAULT_STEP_TIMEOUT = 600.0
DEFAULT_RETRY_DELAY = 5.0
OsName = Literal["linux", "windows"]


# -- the model --------------------------------------------------------------------------
@dataclass(frozen=True)
class MachineDef:
    name: str
    os: OsName
    labels: dict[str, str]
    region: str | None
    plan: str | None
    image: str | None
    extra: dict[str, Any]  # provider overrides (for Vultr: further POST /instances fields)
    where: Where
    expose: tuple[int, ...] = ()  # ports `crc forward --scenario` opens to this machine

    @property
    def forwards(self) -> list[tuple[int, int]]:
        """``(local, remote)`` port pairs for ``expose``: the same port, or 8000 + it
        below 1024 (a port an operator can bind without privileges)."""
        return [(p if p >= 1024 else 8000 + p, p) for p in self.expose]


@dataclass(frozen=True)
class RunAction:
    """A command string (run by ``shell``, default: the machine's) or an argv."""

    command: str | None
    argv: tuple[str, ...] | None
    shell: str | None
    env: dict[str, str]
    cwd: str | None


@dataclass(frozen=True)
class PushAction:
    dest: str
    src: Path | None  # a local file (relative to the scenario file's directory)
    content: str | None  # or inline text (templated)
    mode: str | None
    owner: str | None


@dataclass(frozen=True)
class HostsAction:
    ip: str  # auto | private | public


@dataclass(frozen=True)
class WaitAction:
    """``ready``: the targets are ready; ``message``: each target sent message ``type``
    (at any time since the group exists); ``kv``: the group's key ``key`` exists."""

    kind: Literal["ready", "message", "kv"]
    type: str | None = None
    key: str | None = None


@dataclass(frozen=True)
class SendAction:
    type: str
    body: dict[str, Any]


@dataclass(frozen=True)
class RebootAction:
    """Reboot the targets and wait until each is back (ready again)."""


Action = RunAction | PushAction | HostsAction | WaitAction | SendAction | RebootAction


@dataclass(frozen=True)
class Step:
    name: str
    kind: str  # one of STEP_KINDS ("script" is a RunAction read from a file)
    action: Action
    to: str  # as sent to the server: a name, a,b, KEY=VALUE or all
    targets: tuple[str, ...]  # the machines ``to`` selects (resolved from the file)
    needs: tuple[str, ...]
    retries: int
    retry_delay: float
    timeout: float
    where: Where
    #: Rate control of a run/script step's job (``max_concurrency`` ... as in the API).
    rollout: Rollout | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    path: Path
    provider: str
    provider_settings: dict[str, Any]
    ttl: float | None
    ready_timeout: float
    machines: tuple[MachineDef, ...]
    variables: dict[str, Any]
    steps: tuple[Step, ...]
    description: str = ""
    digest: str = ""
    on_ttl: str = (
        "revoke"  # or "destroy": the server destroys the machines (Feature.SERVER_TEARDOWN)
    )

    def machine(self, name: str) -> MachineDef:
        for m in self.machines:
            if m.name == name:
                return m
        raise KeyError(name)

    @property
    def machine_names(self) -> list[str]:
        return [m.name for m in self.machines]


# -- entry points -----------------------------------------------------------------------
def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; ``ScenarioError`` lists every problem."""
    p = Path(path)
    return parse_scenario(read_bounded(p, MAX_SCENARIO_BYTES, "a scenario"), p)


def parse_scenario(text: str, path: str | Path = "scenario.yaml") -> Scenario:
    """Validate scenario ``text``; ``path`` names it in messages and anchors relative
    ``push: src:`` and ``script:`` paths."""
    from .parser import ScenarioParser  # the parser builds this module's classes

    p = Path(path)
    # A file by its name; a pipe (`crc up <(...)`, /dev/fd/63) by its whole path.
    shown = p.name if p.is_file() or not p.is_absolute() else str(p)
    with gc_paused():  # a large file is a tree of many nodes (yamlcompose.gc_paused)
        r = NodeReader(shown, text)
        try:
            scenario = ScenarioParser(r, p).scenario(hashlib.sha256(text.encode()).hexdigest())
        finally:
            r.loader.dispose()
    if r.problems or scenario is None:
        raise ScenarioError(r.problems or [Problem(Where(shown, 1, 1), "", "empty file")])
    return scenario
