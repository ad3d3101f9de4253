"""Providers: where a scenario's machines are made (a cloud, or this computer).

Shared by the master (``crc up`` / ``crc down``, the SDK) and the server (the teardown
when a group's TTL passes), so neither imports the other. The public surface:

* ``Provider`` and its declared ``Capabilities`` / ``Feature`` (base.py): the seam;
* ``make_provider`` / ``provider_class`` / ``provider_names`` (registry.py): providers by
  name, from the entry points ``cloudremotecontrol.providers``;
* ``destroy_scenario`` (destroy.py): destroy a scenario's machines and verify none is left.

Built-in providers: ``local.LocalProvider`` (agents on this computer) and
``vultr.VultrProvider`` (needs httpx: ``cloudremotecontrol[master]`` or ``[server]``).
docs/architecture.md says how to add one.
"""

from ..errors import ProviderError
from .base import (
    MACHINE_TAG_PREFIX,
    SCENARIO_TAG_PREFIX,
    Capabilities,
    Feature,
    Instance,
    MachineSpec,
    Provider,
    instance_label,
    machine_tag,
    scenario_tag,
    tag_value,
)
from .destroy import Destroyed, destroy_scenario
from .registry import (
    DEFAULT_PROVIDER,
    ENTRY_POINT_GROUP,
    make_provider,
    provider_class,
    provider_names,
    teardown_providers,
)

__all__ = [
    "DEFAULT_PROVIDER",
    "ENTRY_POINT_GROUP",
    "MACHINE_TAG_PREFIX",
    "SCENARIO_TAG_PREFIX",
    "Capabilities",
    "Destroyed",
    "Feature",
    "Instance",
    "MachineSpec",
    "Provider",
    "ProviderError",
    "destroy_scenario",
    "instance_label",
    "machine_tag",
    "make_provider",
    "provider_class",
    "provider_names",
    "scenario_tag",
    "tag_value",
    "teardown_providers",
]
