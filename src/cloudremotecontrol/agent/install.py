"""``crc agent install`` / ``uninstall``: enroll once, then make the agent a service.

Enrollment happens here, in the foreground, not in the service: the startup script
learns at once whether the key worked (used, expired, wrong server) and stops with that
message, and the service's command line never carries a key - it only names the state
directory, where the credential now lives. The key file is deleted after a successful
enrollment (the key is burnt by then anyway).

Running ``install`` again is safe: an enrolled machine ignores the key, an unchanged
service definition is not rewritten, and a running agent is left running (``restart``
asks for a restart, e.g. after the bootstrap upgraded the code).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

from ..errors import InvalidInput, KeyRejected, Unavailable
from .platform import Platform
from .platform.services import SERVICE_NAME, ServiceManager, ServiceSpec
from .state import (
    AgentState,
    Credential,
    dirs_to_make,
    discard_made_state_dir,
    read_credential,
    remove_key_file,
)

__all__ = ["SERVICE_MARKER", "agent_command", "install_agent", "uninstall_agent"]

SERVICE_MARKER = "service.json"  # in the state dir: this agent is the installed service
# What the service imports in its life (the lean entry point with argparse, which it
# imports to read its options and unloads then, then on demand: jobs, facts, files,
# logs, streams, shells, HTTPS calls, and what agent/deferred.py defers).
SERVICE_IMPORTS = (
    "cloudremotecontrol.agent.main",
    "argparse",
    "cloudremotecontrol.agent.service",
    "cloudremotecontrol.agent.core",
    "cloudremotecontrol.agent.facts",
    "cloudremotecontrol.agent.runner",
    "cloudremotecontrol.agent.files",
    "cloudremotecontrol.agent.follow_log",
    "cloudremotecontrol.agent.hosts_file",
    "cloudremotecontrol.agent.streams",
    "cloudremotecontrol.agent.terminal",
    "cloudremotecontrol.agent.http",
    "websockets.asyncio.client",
    "urllib.request",
    "importlib.metadata",
    "bz2",
    "lzma",
    "pickle",
)
# The Windows service host's (agent/winservice.py, with pywin32's modules; terminal.py
# and the lean entry point are Linux's).
WINDOWS_SERVICE_IMPORTS = (
    "cloudremotecontrol.agent.winservice",
    "cloudremotecontrol.agent.platform.windows",
    "cloudremotecontrol.agent.platform.winsvc",
    "cloudremotecontrol.agent.conpty",
    *(
        name
        for name in SERVICE_IMPORTS
        if name not in ("cloudremotecontrol.agent.main", "cloudremotecontrol.agent.terminal")
    ),
    "pywintypes",
    "servicemanager",
    "win32api",
    "win32event",
    "win32service",
    "win32serviceutil",
)

log = logging.getLogger("crc.agent")


def agent_command() -> tuple[str, tuple[str, ...]]:
    """``(python, entry)`` that runs this very copy of crc (venv, site-packages or zipapp).

    ``sys.executable`` is kept as is, not resolved: a venv's python is a symlink whose
    path is what selects the venv.
    """
    import cloudremotecontrol

    for parent in Path(cloudremotecontrol.__file__).parents:
        if parent.is_file() and zipfile.is_zipfile(parent):
            return sys.executable, (str(parent),)
    return sys.executable, ("-m", "cloudremotecontrol")


def bytecode_cache(platform: str = sys.platform) -> Path | None:
    r"""Where the service's ``-OO`` bytecode goes: ``pycache`` in the venv this copy of
    crc is installed in (the bootstrap's, PREFIX/venv), beside its code and removed
    with it. On Windows, where the bootstrap puts the code in the plain directory
    PREFIX\lib (fetch_agent.py's ``site`` layout): ``pycache`` beside the directory
    that holds the package, PREFIX\pycache. Not in the state directory, which the
    agent may remove as it exits (``uninstall_on_delete``) while its last imports
    would write there. ``None`` outside a venv elsewhere (the service then runs
    without ``-OO``). ``crc agent uninstall`` removes it if install created it
    (recorded in ``service.json``)."""
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix) / "pycache"
    if platform == "win32":
        import cloudremotecontrol

        return Path(cloudremotecontrol.__file__).parents[2] / "pycache"
    return None


def optimized_options(python: str) -> tuple[str, ...]:
    """The options that make the service's python run without docstrings and asserts
    (``-OO``: about 1 MiB less resident memory; the agent's code neither asserts what
    it checks nor reads a docstring) and, on Python 3.11 and later, without the column
    positions of tracebacks (``-X no_debug_ranges``), with its bytecode in a cache of
    its own (``-X pycache_prefix``, ``bytecode_cache()``): distributions ship only the
    standard library's plain ``.pyc``, and a service that compiled what it imports
    would keep the compiler's memory for as long as it runs. Filled here, by importing
    what the service imports, with its interpreter and options. ``()`` (a plain
    ``python``) where that fails, or without a cache (``bytecode_cache()``). On Windows
    the options go on the service's command line before the service host's module
    (agent/winservice.py, hosted by ``python.exe`` itself), and the cache is filled
    with what that host imports."""
    cache = bytecode_cache()
    if cache is None:
        return ()
    imports = WINDOWS_SERVICE_IMPORTS if sys.platform == "win32" else SERVICE_IMPORTS
    # On Python 3.11 and later, no column positions in the code objects (PEP 657): 0.15
    # MiB less resident; the service's logged tracebacks keep their files and line
    # numbers and lose only the ``^^^^`` markers under each line. The cache below is
    # compiled with it. (``python`` is this interpreter: agent_command().)
    ranges = ("-X", "no_debug_ranges") if sys.version_info >= (3, 11) else ()
    options = ("-OO", *ranges, "-X", f"pycache_prefix={cache}")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    try:
        subprocess.run(
            [python, *options, "-c", "import " + ", ".join(imports)],
            env=clean,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=True,
            timeout=300,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        log.warning(
            "could not compile the service's bytecode (%s%s): it runs without -OO",
            exc,
            f": {detail.decode(errors='replace').strip()[-300:]}" if detail else "",
        )
        return ()
    return options


def _enroll(
    platform: Platform, state_dir: Path, url: str, key: str, fingerprint: str | None, wait: float
) -> Credential:
    from .core import enroll

    deadline = time.monotonic() + wait
    delay = 1.0
    made = dirs_to_make(state_dir)  # removed again if refused before a key is presented
    state = AgentState(state_dir, protect=platform.protect_file)
    try:
        while True:
            try:
                return enroll(state, url, key, fingerprint)
            except Unavailable as exc:
                # The network may still be coming up at first boot; a refused key or a
                # fingerprint mismatch is final and raised at once.
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("%s: retrying in %.0f s", exc.message, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
    finally:
        unused = bool(made) and state.unused()
        state.close()
        if unused:  # a bad --url or --fingerprint: the state dir made is removed again
            discard_made_state_dir(made)


def install_agent(
    platform: Platform,
    state_dir: Path,
    *,
    url: str | None = None,
    key: str | None = None,
    key_file: str | None = None,
    fingerprint: str | None = None,
    gate_ready: bool = False,
    restart: bool = False,
    wait: float = 300.0,
    manager: ServiceManager | None = None,
    hosts_file: str | None = None,
) -> dict[str, Any]:
    """Enroll if needed, then register, enable and start the service. Idempotent."""
    state_dir = Path(state_dir)
    cred = read_credential(state_dir)
    enrolled_now = False
    if cred is None:
        if key is None and key_file is not None:
            try:
                key = Path(key_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise KeyRejected(f"cannot read key file {key_file}: {exc.strerror}") from None
            except UnicodeDecodeError:
                raise InvalidInput(
                    f"key file {key_file} is not text: expected the crck_... key "
                    "`crc group create` printed"
                ) from None
        if not url or not key:
            raise KeyRejected(
                "this machine is not enrolled yet: give --url and --key or "
                "--key-file (the single-use key of `crc group create` or "
                "`crc bootstrap`)"
            )
        cred = _enroll(platform, state_dir, url, key, fingerprint, wait)
        enrolled_now = True
    if key_file is not None:
        # Used or not needed: either way it must not stay on disk (a regular file only).
        why = remove_key_file(key_file)
        if why is not None:
            log.warning("did not remove the key file %s: %s", key_file, why)
    python, entry = agent_command()
    run_args = (
        "--state-dir",
        str(state_dir),
        *(("--gate-ready",) if gate_ready else ()),
        *(("--hosts-file", str(Path(hosts_file).absolute())) if hosts_file else ()),
    )
    lean = entry == ("-m", "cloudremotecontrol")  # not a zipapp: its bytecode is cached
    marker = state_dir / SERVICE_MARKER
    cache = bytecode_cache() if lean else None
    # Ours to remove at uninstall: a cache this install creates, or an earlier one did.
    owned = cache is not None and (
        not cache.exists() or _read_marker(marker).get("bytecode_cache") == str(cache)
    )
    spec = ServiceSpec(
        python=python,
        entry=entry,
        run_args=run_args,
        python_options=optimized_options(python) if lean else (),
        description=f"CloudRemoteControl agent ({cred.group}/{cred.machine} at {cred.url})",
    )
    mgr = manager or platform.service_manager()
    # The agent this service runs knows it is one (for a group's uninstall_on_delete);
    # uninstall learns from it which bytecode cache install created.
    record: dict[str, str] = {"service": spec.name, "manager": mgr.kind}
    if owned and cache is not None and cache.is_dir():
        record["bytecode_cache"] = str(cache)
    text = json.dumps(record)
    if not marker.exists() or marker.read_text() != text:
        # As everything in the state directory: readable by the agent's user only.
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
    if os.name == "posix":
        os.chmod(marker, 0o600)  # one an older install made with the umask's mode too
    change = mgr.install(spec, restart=restart)
    return {
        "service": spec.name,
        "manager": mgr.kind,
        "definition": change.location,
        "definition_changed": change.definition_changed,
        "action": change.action,
        "enrolled_now": enrolled_now,
        "group": cred.group,
        "machine": cred.machine,
        "url": cred.url,
        "state_dir": str(state_dir),
        "command": mgr.command(spec),
    }


def _read_marker(marker: Path) -> dict[str, Any]:
    try:
        found = json.loads(marker.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _remove_bytecode_cache(recorded: object) -> str | None:
    """Remove the service's bytecode cache that install recorded as created by it
    (``service.json``); nothing else: a path not so recorded, not a directory of that
    name, or a link is left alone."""
    if not isinstance(recorded, str) or not recorded:
        return None
    cache = Path(recorded)
    if cache.name != "pycache" or not cache.is_absolute() or cache.is_symlink():
        return None
    if not cache.is_dir():
        return None
    try:
        shutil.rmtree(cache)
    except OSError as exc:
        log.warning("could not remove the service's bytecode cache %s: %s", cache, exc)
        return None
    return str(cache)


def uninstall_agent(
    platform: Platform,
    state_dir: Path,
    *,
    purge: bool = False,
    manager: ServiceManager | None = None,
    stop: bool = True,
) -> dict[str, Any]:
    """Stop and remove the service and the bytecode cache install created for it; with
    ``purge`` also the credential and queue. With ``stop=False``: the service's own
    agent removing it as it exits."""
    state_dir = Path(state_dir)
    # What is asked of the state directory is checked before the service is touched:
    # a refusal (exit 2) leaves the service as it was.
    if state_dir.exists() and not state_dir.is_dir():
        raise InvalidInput(
            f"{state_dir} is not a directory: give the agent's state directory with --state-dir"
        )
    if (
        purge
        and state_dir.exists()
        and not any((state_dir / n).exists() for n in ("credential.json", "agent.db"))
    ):
        raise InvalidInput(
            f"{state_dir} does not look like an agent state directory "
            "(no credential.json, no agent.db): not removing it"
        )
    mgr = manager or platform.service_manager()
    removed = mgr.uninstall(SERVICE_NAME, stop=stop)
    purged = False
    marker = state_dir / SERVICE_MARKER
    cache = _remove_bytecode_cache(_read_marker(marker).get("bytecode_cache"))
    marker.unlink(missing_ok=True)
    if purge and state_dir.exists():
        shutil.rmtree(state_dir)
        purged = True
    kept = not purge and (state_dir / "credential.json").exists()
    return {
        "service": SERVICE_NAME,
        "manager": mgr.kind,
        "removed": removed,
        "state_dir": str(state_dir),
        "purged": purged,
        "bytecode_cache_removed": cache,
        # Only where there is one: a mistyped --state-dir has no credential to keep.
        "note": f"credential kept in {state_dir}: reinstalling "
        "resumes as the same machine (--purge removes it)"
        if kept
        else None,
    }
