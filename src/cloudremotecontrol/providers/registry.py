"""Providers by name, registered in one place: the entry points ``cloudremotecontrol.providers``.

A distribution adds a provider by naming its class in its own metadata; nothing in this
package changes. The built-in ones are registered the same way, in CloudRemoteControl's
pyproject.toml. A third party's ``pyproject.toml``::

    [project.entry-points."cloudremotecontrol.providers"]
    hetzner = "crc_hetzner:HetznerProvider"

After ``pip install crc-hetzner``, scenarios may say ``provider: hetzner``, and
``crc up`` / ``crc down`` use it. The class subclasses ``Provider`` (base.py) and its
``name`` is the entry point's name. Looking names up reads installed metadata, not the
providers' code: a provider's module (and what it imports) loads only when it is used.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from ..errors import InvalidInput, ProviderError
from .base import Feature, Provider

__all__ = [
    "DEFAULT_PROVIDER",
    "ENTRY_POINT_GROUP",
    "make_provider",
    "provider_class",
    "provider_names",
    "teardown_providers",
]

ENTRY_POINT_GROUP = "cloudremotecontrol.providers"
# What a scenario without ``provider:`` runs on: this computer (docs/scenarios.md).
DEFAULT_PROVIDER = "local"


def _entries() -> dict[str, list[EntryPoint]]:
    found: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        same = found.setdefault(ep.name, [])
        if all(other.value != ep.value for other in same):  # one dist seen twice on the path
            same.append(ep)
    return found


def provider_names() -> list[str]:
    """Every registered provider's name, sorted."""
    return sorted(_entries())


def provider_class(name: str) -> type[Provider]:
    """The class registered as ``name``; ``InvalidInput`` naming the registered ones if
    there is none, ``ProviderError`` if it cannot be loaded or is not a ``Provider``."""
    entries = _entries()
    eps = entries.get(name)
    if not eps:
        known = ", ".join(sorted(entries)) or "none: is cloudremotecontrol installed?"
        raise InvalidInput(f"unknown provider {name!r} (registered: {known})", field="provider")
    if len(eps) > 1:
        raise ProviderError(
            f"provider {name!r} is registered more than once "
            f"({', '.join(ep.value for ep in eps)}): uninstall all but one",
            provider=name,
        )
    ep = eps[0]
    try:
        cls = ep.load()
    except (ImportError, AttributeError) as exc:
        raise ProviderError(
            f"provider {name!r} ({ep.value}) cannot be loaded: {exc} (is its package "
            "installed with its dependencies? `crc up` needs cloudremotecontrol[master])",
            provider=name,
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise ProviderError(
            f"provider {name!r} ({ep.value}) is not a cloudremotecontrol Provider class",
            provider=name,
        )
    if getattr(cls, "name", None) != name:
        raise ProviderError(
            f"provider {name!r} ({ep.value}) calls itself {getattr(cls, 'name', None)!r}: "
            "the entry point's name and the class's name must be the same",
            provider=name,
        )
    return cls


def make_provider(
    name: str, settings: Mapping[str, Any] | None = None, server_url: str | None = None
) -> Provider:
    """The provider a scenario (or a group's ``settings.crc_up``) names, made from its
    ``provider:`` settings; ``server_url`` is where its machines' agents connect."""
    return provider_class(name).from_settings(settings or {}, server_url=server_url)


def teardown_providers() -> list[str]:
    """The providers whose machines the server can destroy when a TTL passes
    (``Feature.SERVER_TEARDOWN``), among those that load here."""
    out = []
    for name in provider_names():
        try:
            cls = provider_class(name)
        except ProviderError:
            continue
        if cls.capabilities.supports(Feature.SERVER_TEARDOWN):
            out.append(name)
    return out
