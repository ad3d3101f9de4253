"""What differs between Linux and Windows, behind one small interface.

``current()`` returns the implementation for this machine; tests construct either.
"""

from __future__ import annotations

import sys

from .base import Platform

__all__ = ["Platform", "current"]


def current() -> Platform:
    if sys.platform == "win32":
        from .windows import WindowsPlatform

        return WindowsPlatform()
    from .linux import LinuxPlatform

    return LinuxPlatform()
