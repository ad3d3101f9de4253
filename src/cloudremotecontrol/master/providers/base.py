"""The provider seam: what ``crc up`` / ``crc down`` need from a cloud (or from this computer).

A provider creates one machine per scenario slot, finds a scenario's machines again
(by tag, so ``crc down`` works from a fresh shell without local state), waits until they
run, and destroys them. Every provider marks its machines the same way::

    tags   crc-scenario:<scenario>   crc-machine:<machine>
    label  <scenario>-<machine>

Implementations: ``local`` (agents on this computer) and ``vultr`` (``vultr.py``, with the
fake Vultr API in ``vultr_fake.py`` for tests).
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from ...errors import CrcError

__all__ = [
    "MACHINE_TAG_PREFIX",
    "SCENARIO_TAG_PREFIX",
    "Instance",
    "MachineSpec",
    "Provider",
    "ProviderError",
    "instance_label",
    "machine_tag",
    "scenario_tag",
    "tag_value",
]

SCENARIO_TAG_PREFIX = "crc-scenario:"
MACHINE_TAG_PREFIX = "crc-machine:"

OsName = Literal["linux", "windows"]


class ProviderError(CrcError):
    """A provider could not do what was asked (refused key, quota, bad plan, timeout...).

    ``details`` carries ``provider`` and, for HTTP APIs, ``status`` (the HTTP status the
    provider answered) and ``provider_error`` (the provider's own message).
    """

    code = "provider_error"
    http_status = 502
    exit_code = 8


def scenario_tag(scenario: str) -> str:
    """The tag every machine of ``scenario`` carries: ``crc-scenario:<scenario>``."""
    return SCENARIO_TAG_PREFIX + scenario


def machine_tag(machine: str) -> str:
    """The tag naming the scenario slot a machine fills: ``crc-machine:<machine>``."""
    return MACHINE_TAG_PREFIX + machine


def instance_label(scenario: str, machine: str) -> str:
    """The instance label shown in the provider's console: ``<scenario>-<machine>``."""
    return f"{scenario}-{machine}"


def tag_value(tags: tuple[str, ...] | builtins.list[str], prefix: str) -> str | None:
    """The value of the first tag starting with ``prefix`` (``None`` if there is none)."""
    for tag in tags:
        if tag.startswith(prefix):
            return tag[len(prefix) :]
    return None


@dataclass(frozen=True)
class MachineSpec:
    """What to create for one scenario slot.

    ``image`` is provider-specific and kept as a string: for Vultr a numeric ``os_id``
    (``"2284"``) or an application ``image_id``. ``extra`` holds provider overrides
    (for Vultr: further ``POST /instances`` fields such as ``attach_vpc``).
    """

    name: str
    os: OsName
    region: str
    plan: str
    image: str
    labels: dict[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Instance:
    """A machine as the provider reports it.

    ``status`` is the provider's own word (Vultr: pending/active/suspended/resizing);
    ``ready`` is the portable verdict: running and booted. ``default_password`` is only
    known in the answer to ``create`` (Vultr never shows it again): keep it if you need
    it, it is left out of ``repr`` so it does not end up in logs.
    """

    id: str
    name: str
    label: str
    status: str
    ready: bool
    main_ip: str | None = None
    private_ip: str | None = None
    default_password: str | None = field(default=None, repr=False)
    tags: tuple[str, ...] = ()

    @property
    def scenario(self) -> str | None:
        """The scenario this instance belongs to, from its ``crc-scenario:`` tag."""
        return tag_value(self.tags, SCENARIO_TAG_PREFIX)


@runtime_checkable
class Provider(Protocol):
    """What every provider implements. All methods block; errors are ``ProviderError``."""

    name: str

    def create(self, scenario: str, spec: MachineSpec, startup_script: str) -> Instance:
        """Create the machine for ``spec`` in ``scenario``; it runs ``startup_script`` once
        at first boot (bash as root on Linux, PowerShell/cmd as Administrator on Windows).

        Returns at once (the machine is usually not ready yet): call ``wait_running``.
        """
        ...

    def get(self, instance_id: str) -> Instance | None:
        """The instance now, or ``None`` if it does not exist (any more)."""
        ...

    def destroy(self, instance_id: str) -> None:
        """Destroy the instance and what ``create`` made for it. Already gone is fine."""
        ...

    def wait_running(self, instance_id: str, timeout: float) -> Instance:
        """Poll until the instance is ready; ``ProviderError`` on timeout or if it vanishes."""
        ...

    def list(self, scenario: str) -> builtins.list[Instance]:
        """Every instance tagged with ``scenario`` (``crc-scenario:<scenario>``)."""
        ...
