"""The Windows service starts as lean as the Linux one: ``-OO -X no_debug_ranges -X
pycache_prefix=...`` on its command line, bytecode compiled by `crc agent install` (the
LocalSystem service compiles nothing), no click/CLI/master/server code, neither
argparse nor gettext once its options are read, and the standard-library modules
agent/deferred.py defers left unloaded by a connected agent that ran a job.

What the service process loaded is read from inside it: a ``sitecustomize`` in the
Windows Python (this module's prefix only) writes, when the service host exits, the
modules it really loaded (a deferred module whose code never ran is not counted) and
its ``sys.flags.optimize``.

The agent skips websockets' proxy lookup only where it would find no proxy: on Windows
also none in the registry's Internet Settings, which the last test sets.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from wine_machine import STATE_DIR, WineMachine

from lean import MASTER_AND_SERVER

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "system"))
from tcp_relay import ConnectProxy  # tests/system's loopback relay

DUMP_DIR = r"C:\crc-test\modules"
SITECUSTOMIZE = r"""
import atexit, json, os, sys

def _crc_dump_modules():
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is None or spec.name != "cloudremotecontrol.agent.winservice":
        return
    loaded = sorted(n for n, m in list(sys.modules.items())
                    if m is not None and type(m).__name__ != "_Deferred")
    os.makedirs(DUMP_DIR, exist_ok=True)
    with open(os.path.join(DUMP_DIR, f"{os.getpid()}.json"), "w") as fh:
        json.dump({"optimize": sys.flags.optimize, "argv": sys.orig_argv,
                   "modules": loaded}, fh)

atexit.register(_crc_dump_modules)
""".replace("DUMP_DIR", repr(DUMP_DIR))

# What the lean start leaves out: the command line's packages, and what
# agent/deferred.py defers (with what they import).
NEVER = (
    *MASTER_AND_SERVER,
    "cloudremotecontrol.agent.main",
    "urllib.request",
    "importlib.metadata",
    "http.client",
    "email",
    "zipfile",
    "csv",
    "bz2",
    "_bz2",
    "lzma",
    "_lzma",
    "pickle",
    # read the service host's options, then unloaded (agent/options.py)
    "argparse",
    "gettext",
)


def _service_command(win: WineMachine) -> str:
    out = win.prefix.python(
        "-c",
        (
            "import win32service as ws\n"
            "scm = ws.OpenSCManager(None, None, ws.SC_MANAGER_ALL_ACCESS)\n"
            "h = ws.OpenService(scm, 'crc-agent', ws.SERVICE_QUERY_CONFIG)\n"
            "print(ws.QueryServiceConfig(h)[3])"
        ),
        check=True,
    )
    return out.stdout.strip()


def _cache_files(root: Path) -> dict[str, float]:
    """The cache's bytecode (not the test's own sitecustomize's) and when it was written."""
    found = root.rglob("*.pyc") if root.exists() else ()
    return {str(p): p.stat().st_mtime for p in found if not p.name.startswith("sitecustomize.")}


def _stopped_service_dump(win: WineMachine) -> dict[str, Any]:
    dumps = win.prefix.host_path(DUMP_DIR)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = sorted(dumps.glob("*.json")) if dumps.exists() else []
        if found:
            return dict(json.loads(found[-1].read_text()))
        time.sleep(0.5)
    raise AssertionError(f"the service wrote no module list\n{win.prefix.diagnose()}")


def test_the_service_runs_lean_from_bytecode_compiled_at_install(win: WineMachine) -> None:
    command = _service_command(win)
    assert " -OO -X no_debug_ranges -X " in command, command
    assert "pycache_prefix=" in command and "-m cloudremotecontrol.agent.winservice" in command
    cache = win.prefix.host_path(
        command.split("pycache_prefix=", 1)[1].split(" -m ", 1)[0].strip('"')
    )
    compiled = _cache_files(cache)
    assert any(p.endswith("winservice.cpython-312.opt-2.pyc") for p in compiled), sorted(compiled)
    assert any("websockets" in p for p in compiled), sorted(compiled)

    # The service again, with the module list written as it exits.
    sitecustomize = win.prefix.host_path(win.package["site"] + r"\sitecustomize.py")
    sitecustomize.write_text(SITECUSTOMIZE, encoding="utf-8")
    assert win.prefix.run("sc", "stop", "crc-agent").returncode == 0
    win.prefix.wait_sc("STOPPED", timeout=60)
    assert win.prefix.run("sc", "start", "crc-agent").returncode == 0
    win.prefix.wait_sc("RUNNING")
    win.wait_state("ready")
    out = win.crc("run", "g", "--to", "win", "--shell", "cmd", "--", "echo lean")
    assert out.returncode == 0 and "lean" in out.stdout, (out.stdout, out.stderr)
    assert win.prefix.run("sc", "stop", "crc-agent").returncode == 0
    win.prefix.wait_sc("STOPPED", timeout=60)
    dump = _stopped_service_dump(win)

    assert dump["optimize"] == 2, dump["argv"]
    loaded = set(dump["modules"])
    assert "websockets.asyncio.client" in loaded and "win32service" in loaded  # it ran
    left_out = sorted(
        name for name in loaded if any(name == n or name.startswith(n + ".") for n in NEVER)
    )
    assert left_out == [], left_out
    # Everything the service imported was compiled at install: it wrote no bytecode.
    assert _cache_files(cache) == compiled


SETTINGS = r"HKCU\Software\Microsoft\Windows\CurrentVersion\Internet Settings"


def test_the_service_connects_through_the_proxy_of_the_registry(win: WineMachine) -> None:
    proxy = ConnectProxy()
    try:
        if win.prefix.sc_state() == "RUNNING":
            assert win.prefix.run("sc", "stop", "crc-agent").returncode == 0
            win.prefix.wait_sc("STOPPED", timeout=60)
        win.wait_state("offline", timeout=60)
        for name, kind, value in (
            ("ProxyServer", "REG_SZ", f"127.0.0.1:{proxy.port}"),
            ("ProxyEnable", "REG_DWORD", "1"),
        ):
            win.prefix.run(
                "reg", "add", SETTINGS, "/v", name, "/t", kind, "/d", value, "/f", check=True
            )
        assert win.prefix.run("sc", "start", "crc-agent").returncode == 0
        win.prefix.wait_sc("RUNNING")
        win.wait_state("ready")
        assert f"CONNECT 127.0.0.1:{win.server.port} HTTP/1.1" in proxy.requests, (
            proxy.requests,
            win.prefix.service_log(),
        )
    finally:
        win.prefix.run(
            "reg", "add", SETTINGS, "/v", "ProxyEnable", "/t", "REG_DWORD", "/d", "0", "/f"
        )
        proxy.close()


def test_install_reports_the_registered_command_and_uninstall_removes_its_cache(
    win: WineMachine,
) -> None:
    # --json says what the Service Control Manager holds: the service host's command
    # line, not the Linux one (`-m cloudremotecontrol.agent run`).
    registered = _service_command(win)
    assert subprocess.list2cmdline(win.install_report["command"]) == registered
    windows_cache = registered.split("pycache_prefix=", 1)[1].split(" -m ", 1)[0].strip('"')
    cache = win.prefix.host_path(windows_cache)
    assert cache.is_dir() and _cache_files(cache)
    # The agent is in the Windows Python's own site-packages here: its Lib directory is
    # the cache's parent, and only the cache, which install created, goes.
    lib = cache.parent
    assert (lib / "site-packages" / "cloudremotecontrol").is_dir()

    out = win.prefix.crc("agent", "uninstall", "--state-dir", STATE_DIR, "--json", timeout=180)

    assert out.returncode == 0, (out.stdout, out.stderr)
    report = json.loads(out.stdout)
    assert report["removed"] is True and report["purged"] is False
    assert win.prefix.sc_state() is None
    assert not cache.exists()
    assert report["bytecode_cache_removed"].lower() == windows_cache.lower()
    assert (lib / "site-packages" / "cloudremotecontrol").is_dir()
    assert (lib / "site-packages" / "win32").is_dir()  # pywin32, the Python's own
    assert win.prefix.host_path(STATE_DIR + r"\credential.json").exists()
