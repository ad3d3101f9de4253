"""CloudRemoteControl: coordinate freshly created cloud machines.

The SDK (docs/sdk.md): ``from cloudremotecontrol import Client`` (or ``AsyncClient``).
It needs the ``master`` extra; the agent's base install does not import it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0.dev0"

__all__ = ["AsyncClient", "Client", "__version__"]

if TYPE_CHECKING:
    from .master.aclient import AsyncClient
    from .master.client import Client


def __getattr__(name: str) -> Any:
    # Lazy: the agent (click and websockets only) imports this package too.
    if name == "Client":
        from .master.client import Client

        return Client
    if name == "AsyncClient":
        from .master.aclient import AsyncClient

        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
