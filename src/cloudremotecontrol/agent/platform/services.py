"""The service seam: register the agent with the OS's service manager.

One ``ServiceSpec`` says what to run; a ``ServiceManager`` (systemd on Linux, the
Windows Service Control Manager on Windows) makes it a boot-time service that restarts
on failure. Every ``install`` is idempotent: run twice, the second run changes nothing
and does not restart a running agent (unless asked to, after an upgrade).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

__all__ = ["SERVICE_NAME", "ServiceChange", "ServiceManager", "ServiceSpec"]

SERVICE_NAME = "crc-agent"
LEAN_MODULE = "cloudremotecontrol.agent"  # python -m cloudremotecontrol.agent run ...


@dataclass(frozen=True)
class ServiceSpec:
    """What the service runs: ``python *entry agent run *run_args`` (for the installed
    package, ``python -m cloudremotecontrol.agent run *run_args``).

    ``entry`` is how ``python`` reaches this copy of crc: ``("-m", "cloudremotecontrol")``
    for an installed package (the bootstrap's venv), or ``("/path/crc-agent.pyz",)``.
    ``python_options`` go to ``python`` before the entry (``-OO`` and its bytecode
    cache: agent/install.py).
    """

    python: str
    entry: tuple[str, ...]
    run_args: tuple[str, ...]
    python_options: tuple[str, ...] = ()
    description: str = "CloudRemoteControl agent"
    name: str = SERVICE_NAME
    display_name: str = "CloudRemoteControl agent"

    @property
    def argv(self) -> list[str]:
        if tuple(self.entry[-2:]) == ("-m", "cloudremotecontrol"):
            # The installed package's lean entry point (agent/main.py): the agent
            # without click and the CLI, master and server code.
            return [
                self.python,
                *self.python_options,
                *self.entry[:-1],
                LEAN_MODULE,
                "run",
                *self.run_args,
            ]
        return [self.python, *self.python_options, *self.entry, "agent", "run", *self.run_args]


@dataclass(frozen=True)
class ServiceChange:
    location: str  # unit file, or the service's registry name
    definition_changed: bool  # written or updated (False: it was exactly so already)
    action: str  # "started", "restarted" or "running" (was running, left alone)


class ServiceManager(abc.ABC):
    kind: str = ""

    @abc.abstractmethod
    def definition(self, spec: ServiceSpec) -> str:
        """The service definition as text (unit file / service settings), for review."""

    def command(self, spec: ServiceSpec) -> list[str]:
        """The command line this manager registers for ``spec`` (what ``install``
        reports): ``spec.argv`` unless the platform runs a host of its own."""
        return spec.argv

    @abc.abstractmethod
    def install(self, spec: ServiceSpec, restart: bool = False) -> ServiceChange:
        """Register or update the service, enable it at boot and make sure it runs
        (restarted if its definition changed or ``restart``). Returns once it is up."""

    @abc.abstractmethod
    def uninstall(self, name: str = SERVICE_NAME, stop: bool = True) -> bool:
        """Stop, disable and remove the service; False if it was not installed. With
        ``stop=False`` (the service removing itself as it exits) it is disabled and its
        definition removed, but left to end on its own."""

    @abc.abstractmethod
    def is_active(self, name: str = SERVICE_NAME) -> bool:
        """Whether the service is running now."""
