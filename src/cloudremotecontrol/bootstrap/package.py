"""The agent package the server hands to VMs: one zipapp, pure Python, no PyPI needed.

A fresh VM has its own ``python3`` (>= 3.10) and nothing else we can rely on: no pip
index, no git, maybe no compiler. So the server ships the agent itself, as a zipapp
built from the code it runs (same version, by construction):

* ``cloudremotecontrol`` minus what only the server and the master need (``server/``,
  ``master/``, ``providers/``, ``bootstrap/``);
* ``click`` and ``websockets`` copied from this interpreter's site-packages, *without*
  websockets' optional C extension (``speedups*.so``): websockets then falls back to
  its pure-Python ``utils.apply_mask``, so the same bytes work on any CPython >= 3.10
  on any OS and architecture;
* their ``*.dist-info`` metadata and licences (both are BSD-licensed: the notices must
  travel with the copy);
* a ``__main__.py`` that runs the ``crc`` CLI: ``python3 crc-agent.pyz agent run ...``.

The build is deterministic (sorted entries, fixed timestamps), so every server replica
of the same version publishes the same SHA-256. ``agent_package()`` builds once per
process and keeps the bytes in memory (a few hundred KiB).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .. import __version__

__all__ = ["AgentPackage", "agent_package", "build_agent_package"]

# Parts of our own package the agent never imports (they need the server/master extras).
EXCLUDED_SUBPACKAGES = ("server", "master", "providers", "bootstrap")
EXCLUDED_FILES = ("agent/platform/fake_systemctl.py",)  # a test double, not for VMs
VENDORED = ("click", "websockets")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_DIST_INFO_KEEP = ("METADATA", "WHEEL", "top_level.txt")

MAIN = '''\
"""crc-agent zipapp: the CloudRemoteControl agent and its CLI (built by the server)."""
import sys

if sys.version_info < (3, 10):
    sys.stderr.write("crc: error: the agent needs Python >= 3.10, this is %s\\n"
                     % sys.version.split()[0])
    sys.exit(2)

try:
    from cloudremotecontrol.cli.main import main
except ImportError as exc:  # a broken copy: say so in one line
    sys.stderr.write("crc: error: damaged agent package (%s): download it again\\n" % exc)
    sys.exit(2)

try:
    main()
except ModuleNotFoundError as exc:
    # server/master commands need the full install: this package is the agent only.
    sys.stderr.write("crc: error: this command is not part of the agent package (missing "
                     "%s): install cloudremotecontrol[master] or [server] for it\\n" % exc.name)
    sys.exit(2)
'''


@dataclass(frozen=True)
class AgentPackage:
    data: bytes
    sha256: str
    version: str

    @property
    def filename(self) -> str:
        return f"crc-agent-{self.version}.pyz"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{name} is not installed: cannot build the agent package")
    return Path(next(iter(spec.submodule_search_locations)))


def _wanted(rel: Path) -> bool:
    if "__pycache__" in rel.parts or rel.suffix in (".pyc", ".pyo"):
        return False
    # Compiled extensions (and their sources) would tie the package to one platform.
    return rel.suffix not in (".so", ".pyd", ".c", ".pyi", ".dylib")


def _files(root: Path, prefix: str, skip_top: tuple[str, ...] = ()) -> list[tuple[str, Path]]:
    out = []
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        rel = path.relative_to(root)
        if rel.parts[0] in skip_top or rel.as_posix() in EXCLUDED_FILES or not _wanted(rel):
            continue
        out.append((f"{prefix}/{rel.as_posix()}", path))
    return out


def _dist_info(pkg_dir: Path, name: str) -> list[tuple[str, Path]]:
    """The installed distribution's metadata and licence files, if found beside it."""
    out: list[tuple[str, Path]] = []
    for info in sorted(pkg_dir.parent.glob(f"{name}-*.dist-info")):
        for path in info.rglob("*"):
            rel = path.relative_to(info)
            keep = rel.name in _DIST_INFO_KEEP or "licen" in rel.as_posix().lower()
            if path.is_file() and keep:
                out.append((f"{info.name}/{rel.as_posix()}", path))
    return out


def build_agent_package() -> AgentPackage:
    """Build the zipapp from the code of this process (see the module docstring)."""
    entries: list[tuple[str, Path]] = _files(
        _package_dir("cloudremotecontrol"), "cloudremotecontrol", EXCLUDED_SUBPACKAGES
    )
    for name in VENDORED:
        pkg = _package_dir(name)
        entries += _files(pkg, name)
        entries += _dist_info(pkg, name)
    buf = io.BytesIO()
    # A zipapp is a zip with a shebang line in front (PEP 441), written first so the
    # offsets in the zip's directory are those of the whole file (as zipapp does).
    buf.write(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for arcname, data in sorted(
            [(a, p.read_bytes()) for a, p in entries] + [("__main__.py", MAIN.encode())]
        ):
            info = zipfile.ZipInfo(arcname, _ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    data = buf.getvalue()
    return AgentPackage(data, hashlib.sha256(data).hexdigest(), __version__)


_lock = threading.Lock()
_cached: AgentPackage | None = None


def agent_package() -> AgentPackage:
    """The package for this server process, built on first use and then kept."""
    global _cached
    with _lock:
        if _cached is None:
            _cached = build_agent_package()
        return _cached
