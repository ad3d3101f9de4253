"""Standard-library modules the agent's libraries import and an idle agent never uses,
loaded on their first use instead of at start-up.

websockets (15-16) imports ``importlib.metadata`` at the top of ``websockets/version.py``
(used only by a development checkout, never by a release) and ``urllib.request`` for its
proxy lookup (``getproxies()`` and ``proxy_bypass()``; at the top of ``websockets/uri.py``
in 15, of ``websockets/proxy.py`` since 16). With what they import (email, zipfile, csv,
http.client, ...) they are about 2 MiB of the agent's resident memory, for as long as it
runs; ``shutil`` (which the agent uses for ``which()``) imports ``bz2`` and ``lzma``,
with their libraries, for its archives: 0.3 MiB more (bench/RESULTS.md, "Agent start-up
and memory"); ``logging.handlers`` (the Windows service's log file) imports ``pickle``.

``defer()`` puts, before websockets is imported, a module object for each in
``sys.modules`` that holds only the module's import metadata (``__spec__``, ``__name__``,
``__file__``, ...): the ``import`` statements bind it as they would bind the module, and
the first access to any other attribute (``urllib.request.getproxies``) runs the real
module's code in that same object, under a lock, after which it is the ordinary module.
Nothing is replaced or stubbed: whoever uses the module gets all of it, only later.
``importlib.util.LazyLoader`` does not do for this: the ``import`` statement reads the
module's ``__spec__`` (to see whether it is still being initialised), and with
LazyLoader any attribute, ``__spec__`` included, loads it (CPython 3.10-3.13).

What would still load ``urllib.request`` at once is websockets' proxy lookup, which
runs for every connection opened with its default ``proxy=True``. ``proxy_option()``
says when that lookup cannot find a proxy (no ``*_proxy`` variable in the environment
and, on Windows, no proxy enabled in the registry's Internet Settings, read with the
built-in ``winreg``; macOS is not read): the agent then connects with
``proxy=None``, which is what the lookup would have answered. Wherever a proxy may be
configured, websockets looks it up as before (and loads ``urllib.request`` for it); the
agent's HTTPS calls (agent/http.py) use urllib, and its proxies, as before.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import types
from typing import Any

__all__ = ["DEFERRED", "defer", "proxy_option", "windows_proxy_enabled"]

# Each module, and the extension module it needs (if it has none, it is not deferred:
# shutil's ``import bz2`` must keep failing where it would fail).
DEFERRED = (
    ("importlib.metadata", None),
    ("urllib.request", None),
    ("bz2", "_bz2"),  # shutil imports both for its archives, which the agent never makes
    ("lzma", "_lzma"),
    # logging.handlers imports it for its SocketHandler; the Windows service's log file
    # (a RotatingFileHandler, agent/winservice.py) needs the module, not pickle.
    ("pickle", "_pickle"),
)

_loading = threading.RLock()
_running: set[str] = set()  # the deferred modules whose code runs now (under _loading)


class _Deferred(types.ModuleType):
    """A module whose code has not run yet: it runs on the first attribute lookup
    that the module's import metadata does not answer. Another thread looking up an
    attribute meanwhile waits for it to finish, as it would wait for an import."""

    def __getattr__(self, attr: str) -> Any:
        spec = self.__spec__
        assert spec is not None and spec.loader is not None  # set by defer()
        with _loading:
            if type(self) is _Deferred:
                if spec.name in _running:  # its own code (or what it imports) looks early
                    raise AttributeError(
                        f"partially initialized module {spec.name!r} has no attribute {attr!r}"
                    )
                _running.add(spec.name)
                try:
                    spec.loader.exec_module(self)
                except BaseException:
                    # As a failed import: no half-run module left behind.
                    sys.modules.pop(spec.name, None)
                    parent, _, child = spec.name.rpartition(".")
                    if parent in sys.modules:
                        vars(sys.modules[parent]).pop(child, None)
                    raise
                finally:
                    _running.discard(spec.name)
                self.__class__ = types.ModuleType  # type: ignore[assignment]
        return getattr(self, attr)


def defer(modules: tuple[tuple[str, str | None], ...] = DEFERRED) -> None:
    """Make each of ``modules`` (name, extension module it needs or None) load on first
    use. A module already imported, or not found, is left as it is. Call it before
    anything imports them (the lean entry point does, before it imports websockets)."""
    for name, needs in modules:
        if name in sys.modules or (needs and importlib.util.find_spec(needs) is None):
            continue
        spec = importlib.util.find_spec(name)  # imports the parent package, if any
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        module.__class__ = _Deferred
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)


def proxy_option() -> dict[str, Any]:
    """Keyword arguments for websockets' ``connect``: ``{"proxy": None}`` where its
    proxy lookup (the default, ``proxy=True``) would surely find no
    proxy, else none (the lookup runs, as by default). ``urllib.request.getproxies()``
    is the environment's ``<scheme>_proxy`` variables (any case) that have a value;
    only without one, on Windows, the proxy of the Internet Settings in the registry
    (``windows_proxy_enabled``); on macOS also the system settings (not read here: the
    lookup always runs there)."""
    if sys.platform == "darwin":
        return {}
    for name, value in os.environ.items():
        if value and name.lower().endswith("_proxy"):
            return {}
    if sys.platform == "win32":
        import winreg

        if windows_proxy_enabled(winreg):
            return {}
    return {"proxy": None}


INTERNET_SETTINGS = r"Software\Microsoft\Windows\CurrentVersion\Internet Settings"


def windows_proxy_enabled(winreg: Any) -> bool:
    """Whether ``urllib.request``'s Windows lookup (``getproxies_registry``) may find a
    proxy: ``ProxyEnable`` set in the user's ``Internet Settings`` (for the service,
    LocalSystem's). False only where the key or the value is missing or the value is
    0, as the lookup finds then; any other error answers True, so that the lookup
    runs and decides. ``winreg`` is the module (a stand-in in the tests)."""
    try:
        key = winreg.OpenKey(winreg.HKEY_CURRENT_USER, INTERNET_SETTINGS)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        enabled = winreg.QueryValueEx(key, "ProxyEnable")[0]
    except FileNotFoundError:
        return False
    except OSError:
        return True
    finally:
        key.Close()
    return bool(enabled) if isinstance(enabled, int) else True
