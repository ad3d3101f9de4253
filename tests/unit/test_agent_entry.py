"""The lean agent entry point (``python -m cloudremotecontrol.agent``, what the service
runs) loads neither click nor the CLI, master or server code, nor their libraries, and
no module of the standard library that its connection does not load anyway: the
agent's resident memory beyond the interpreter, asyncio, ssl, sqlite3 and websockets is
its own code (bench/RESULTS.md, "Agent start-up and memory")."""

from __future__ import annotations

import json
import subprocess
import sys

# What the agent cannot do without: the event loop and TLS, its outbox, its log, its
# options, and its connection (websockets, which loads importlib.metadata, email,
# urllib.request and http.client unconditionally).
BASE = (
    "asyncio",
    "ssl",
    "sqlite3",
    "json",
    "logging",
    "argparse",
    "websockets.asyncio.client",
    "websockets.exceptions",
)
LEAN = (
    "cloudremotecontrol.agent.main",
    "cloudremotecontrol.agent.service",
    "cloudremotecontrol.agent.core",
)


def _modules(*imports: str) -> list[str]:
    code = (
        "import sys, json\n"
        + "".join(f"import {name}\n" for name in imports)
        + "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded: list[str] = json.loads(out.stdout)
    return loaded


def test_the_lean_agent_entry_point_loads_no_cli_master_or_server_code() -> None:
    bad = (
        "click",
        "cloudremotecontrol.cli",
        "cloudremotecontrol.master",
        "cloudremotecontrol.server",
        "pydantic",
        "httpx",
        "fastapi",
        "rich",
    )
    assert [m for m in _modules(*LEAN) if m.startswith(bad)] == []


def test_the_lean_agent_loads_no_library_module_its_connection_does_not_need() -> None:
    base = set(_modules(*BASE))
    extra = [
        m
        for m in _modules(*BASE, *LEAN)
        if m not in base and m != "cloudremotecontrol" and not m.startswith("cloudremotecontrol.")
    ]
    assert extra == []


def test_the_lean_agent_loads_no_heavy_module_it_has_no_use_for() -> None:
    # Each of these costs memory for as long as the agent runs; none is needed.
    heavy = (
        "ctypes",
        "multiprocessing",
        "concurrent.futures.process",
        "xml",
        "pydoc",
        "unittest",
        "http.server",
        "socketserver",
        "decimal",
        "tracemalloc",
        "sqlite3.dump",
        "pdb",
        "doctest",
    )
    assert [m for m in _modules(*LEAN) if m.startswith(heavy)] == []
