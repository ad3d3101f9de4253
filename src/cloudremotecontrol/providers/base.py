"""The provider seam: what ``crc up`` / ``crc down`` and the server's TTL teardown need
from a cloud (or from this computer).

A provider creates one machine per scenario slot, finds a scenario's machines again
(by tag, so ``crc down`` works from a fresh shell without local state), waits until they
run, and destroys them. Every provider marks its machines the same way::

    tags   crc-scenario:<scenario>   crc-machine:<machine>
    label  <scenario>-<machine>

What a provider can do beyond that is *declared*, not discovered: its class says so in
``capabilities`` (a ``Capabilities``), and callers ask ``capabilities.supports(Feature.X)``
before calling the matching method. The scenario parser reads the same declaration to
check a file (which OSes, which settings, which per-machine fields), so a provider is
described in one place: its class. Providers are found by name through the entry points
``cloudremotecontrol.providers`` (``registry.py``); the built-in ones are ``local``
(``local.py``) and ``vultr`` (``vultr.py``).
"""

from __future__ import annotations

import abc
import builtins
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..errors import ProviderError

if TYPE_CHECKING:
    from ..bootstrap import BootstrapParams

__all__ = [
    "MACHINE_TAG_PREFIX",
    "SCENARIO_TAG_PREFIX",
    "Capabilities",
    "Feature",
    "Instance",
    "MachineField",
    "MachineSpec",
    "OsName",
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
MachineField = Literal["region", "plan", "image"]


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

    ``status`` is the provider's own word (Vultr: pending/active/suspended/resizing;
    local: running/stopped/leftover); ``ready`` is the portable verdict: running and
    booted. ``stopped``: the machine is off or dead, waiting will not make it ready;
    ``leftover``: remains of a machine whose provider record is lost (a crash), good only
    for ``destroy`` (it is ``stopped`` too). ``default_password`` is only known in the answer to
    ``create`` (Vultr never shows it again): keep it if you need it, it is left out of
    ``repr`` so it does not end up in logs. ``main_ip`` (IPv4), ``v6_main_ip`` and
    ``private_ip`` are the addresses the provider gave it, ``None`` when it has none (yet):
    ``crc up`` tells twins apart by them (``scenario/twins.py``).
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
    stopped: bool = False
    leftover: bool = False
    v6_main_ip: str | None = None  # last: a provider that passes fields by position

    @property
    def scenario(self) -> str | None:
        """The scenario this instance belongs to, from its ``crc-scenario:`` tag."""
        return tag_value(self.tags, SCENARIO_TAG_PREFIX)


class Feature(str, Enum):
    """Operations a provider may offer beyond the required ones (see ``Provider``)."""

    START = "start"  # power a stopped machine on again: Provider.start
    REBOOT = "reboot"  # power-cycle a machine from outside: Provider.reboot
    CONSOLE = "console"  # the end of a machine's console output: Provider.console_tail
    # The server can destroy the machines when a group's TTL passes (on_ttl: destroy):
    # Provider.teardown_credential on the master, Provider.for_teardown on the server.
    SERVER_TEARDOWN = "server_teardown"


@dataclass(frozen=True)
class Capabilities:
    """What a provider declares about itself; read without creating a provider.

    ``settings`` are the scenario-level settings it takes beside ``name`` (``provider:
    {name: local, network: netns}``), each with its allowed values. ``required`` are the
    machine fields a scenario must give (here or in ``defaults``); ``machine_options``
    says whether a machine may carry provider-specific fields (``provider:`` under the
    machine, passed as ``MachineSpec.extra``): ``True`` any, a set of names those only
    (checked when the scenario is loaded, before anything is created).
    ``check_options`` finds what is wrong with one machine's options (their types, their
    combinations), also when the scenario is loaded: one message per problem.
    ``check_field`` finds what is wrong with one of a machine's ``region``, ``plan`` and
    ``image`` (named by its field), when the scenario is loaded too: a message or ``None``.
    ``image_options``: options that stand in for the machine's ``image`` (a snapshot,
    say), so a machine with one needs no ``image`` even when ``required`` names it.
    ``public_addresses``: an instance's ``main_ip`` is the machine's address on the
    internet (for templates' ``public_ip``); machines on this computer have none.
    ``liveness_interval``: how often (seconds) the runner asks the provider whether a
    machine that is not ready yet died.
    ``twins``: a slot may get a second instance (a create whose answer was lost and
    that is sent again before the provider lists the first one): ``crc up`` then looks
    for them at its liveness checks. A provider whose creates always answer says False.
    """

    features: frozenset[Feature] = frozenset()
    oses: frozenset[OsName] = frozenset({"linux"})
    settings: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    required: tuple[MachineField, ...] = ()
    machine_options: bool | frozenset[str] = False
    check_options: Callable[[Mapping[str, Any]], builtins.list[str]] | None = None
    check_field: Callable[[MachineField, str], str | None] | None = None
    image_options: frozenset[str] = frozenset()
    public_addresses: bool = True
    liveness_interval: float = 15.0
    twins: bool = True

    def supports(self, feature: Feature) -> bool:
        return feature in self.features


class Provider(abc.ABC):
    """What every provider implements. All methods block; errors are ``ProviderError``.

    A subclass sets ``name`` (its registry name) and ``capabilities``, implements the
    abstract methods, and the optional ones its ``capabilities.features`` list. Register
    it under the entry point group ``cloudremotecontrol.providers`` (see registry.py).
    A provider may hold connections: ``close()`` it (or use it as a context manager).
    """

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()

    # -- making one ----------------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def from_settings(cls, settings: Mapping[str, Any], *, server_url: str | None) -> Provider:
        """The provider a scenario asks for: ``settings`` are its ``provider:`` settings
        (already checked against ``capabilities.settings``); ``server_url`` is where the
        machines' agents will connect. Credentials come from the environment."""

    @classmethod
    def for_teardown(cls, credential: str) -> Provider:
        """On the server: a provider acting with the ``credential`` a master handed over
        (``teardown_credential``), to destroy a group's machines when its TTL passes."""
        raise ProviderError(f"the server cannot destroy {cls.name} machines", provider=cls.name)

    # -- required ------------------------------------------------------------------------
    @abc.abstractmethod
    def create(self, scenario: str, spec: MachineSpec, startup_script: str) -> Instance:
        """Create the machine for ``spec`` in ``scenario``; it runs ``startup_script`` once
        at first boot (bash as root on Linux, PowerShell/cmd as Administrator on Windows).

        Returns at once (the machine is usually not ready yet): call ``wait_running``.
        """

    @abc.abstractmethod
    def get(self, instance_id: str) -> Instance | None:
        """The instance now, or ``None`` if it does not exist (any more)."""

    @abc.abstractmethod
    def destroy(self, instance_id: str) -> None:
        """Destroy the instance and what ``create`` made for it. Already gone is fine."""

    @abc.abstractmethod
    def wait_running(self, instance_id: str, timeout: float) -> Instance:
        """Poll until the instance is ready; ``ProviderError`` on timeout or if it vanishes."""

    @abc.abstractmethod
    def list(self, scenario: str) -> builtins.list[Instance]:
        """Every instance tagged with ``scenario`` (``crc-scenario:<scenario>``)."""

    # -- with defaults -------------------------------------------------------------------
    def startup_script(self, spec: MachineSpec, params: BootstrapParams) -> str:
        """What ``spec``'s machine runs at first boot to become an enrolled machine:
        by default the bootstrap script of ``crc bootstrap`` for its OS (installs the
        agent as a service from the server, then enrolls with ``params.key``)."""
        from ..bootstrap import render

        return render(spec.os, None, params)

    def cleanup(self, scenario: str) -> dict[str, int]:
        """After every instance of ``scenario`` is gone: remove what the provider keeps
        for the scenario beside its instances; returns counts by kind (Vultr:
        ``{"startup_scripts": n}``). Nothing by default."""
        return {}

    def describe(self) -> str:
        """A few words on how this provider will run machines here ('' if nothing to say)."""
        return ""

    def close(self) -> None:  # noqa: B027 -- optional: most providers hold nothing
        """Release connections and other resources. Nothing by default."""

    def __enter__(self) -> Provider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- optional: call only where capabilities.supports(Feature.X) ----------------------
    def start(self, instance_id: str) -> Instance:
        """``Feature.START``: power a stopped machine on again (a boot)."""
        raise self._unsupported(Feature.START)

    def reboot(self, instance_id: str) -> Instance:
        """``Feature.REBOOT``: power-cycle the machine and boot it again."""
        raise self._unsupported(Feature.REBOOT)

    def console_tail(self, instance_id: str, chars: int = 2000) -> str:
        """``Feature.CONSOLE``: the end of what the machine's boot and agent printed."""
        raise self._unsupported(Feature.CONSOLE)

    def teardown_credential(self) -> str:
        """``Feature.SERVER_TEARDOWN``: the credential the server needs to destroy this
        scenario's machines on its own (the user's explicit opt-in: ``on_ttl: destroy``)."""
        raise self._unsupported(Feature.SERVER_TEARDOWN)

    def _unsupported(self, feature: Feature) -> ProviderError:
        return ProviderError(
            f"the {self.name} provider does not offer {feature.value}", provider=self.name
        )
