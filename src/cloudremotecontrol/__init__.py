"""CloudRemoteControl: coordinate freshly created cloud machines.

The SDK (docs/sdk.md): ``from cloudremotecontrol import Client`` (or ``AsyncClient``).
It needs the ``master`` extra; the agent's base install does not import it.
"""

from __future__ import annotations

# Not typing's (16 ms to import): `crc` loads this first, and a Ctrl-C then would
# print a traceback (cli/entry.py answers one from then on).
TYPE_CHECKING = False

__version__ = "0.2.0.dev0"

__all__ = ["AsyncClient", "Client", "__version__"]

if TYPE_CHECKING:
    from typing import Any

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
