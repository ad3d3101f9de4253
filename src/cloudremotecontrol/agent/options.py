"""Reading an agent's options with argparse, then letting argparse go.

argparse, with the gettext it imports, is used for nothing else in an agent's life:
unless it was loaded before, it is unloaded once the options are read, and the memory
its classes and code held goes to what the agent loads next (asyncio, ssl, websockets),
not to a module that an agent running for months never calls again. Both entry points
use it: the lean one (``python -m cloudremotecontrol.agent``, agent/main.py) and the
Windows service host (agent/winservice.py).
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from typing import TypeVar

__all__ = ["PARSING_MODULES", "read_once"]

# Used only to read the options, before the agent loads anything else.
PARSING_MODULES = ("argparse", "gettext")

_T = TypeVar("_T")


def read_once(parse: Callable[[], _T]) -> _T:
    """``parse()`` (``--help`` and bad options exit there, as argparse does), then the
    parsing modules it loaded are unloaded."""
    loaded = set(sys.modules)
    options = parse()
    unloaded = False
    for name in PARSING_MODULES:
        if name not in loaded and sys.modules.pop(name, None) is not None:
            unloaded = True
    if unloaded:
        gc.collect()  # their classes and functions refer to each other: a cycle
    return options
