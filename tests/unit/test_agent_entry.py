"""The lean agent entry point (``python -m cloudremotecontrol.agent``, what the service
runs) loads neither click nor the CLI, master or server code, nor their libraries, and
no module of the standard library that its connection does not load anyway (but
pathlib and shutil, which it uses), and not what the connection library imports and an
idle agent never uses (agent/deferred.py): the agent's resident memory beyond the
interpreter, asyncio, ssl, sqlite3 and websockets is its own code (bench/RESULTS.md,
"Agent start-up and memory")."""

from __future__ import annotations

import json
import subprocess
import sys

from lean import MASTER_AND_SERVER

# What the agent cannot do without: the event loop and TLS, its outbox, its log, its
# options, and its connection (websockets; what it imports and an idle agent never uses,
# importlib.metadata and urllib.request with email and http.client, is deferred).
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
# What the agent's own code adds to that, and uses: paths everywhere, and
# ``shutil.which`` for its jobs and facts (its archives' bz2 and lzma are deferred); gc,
# built into the interpreter, frees argparse once the options are read (agent/main.py).
OWN = ("pathlib", "fnmatch", "ntpath", "shutil", "gc")
LEAN = (
    "cloudremotecontrol.agent.main",
    "cloudremotecontrol.agent.service",
    "cloudremotecontrol.agent.core",
)


def _modules(*imports: str) -> list[str]:
    # As the entry point starts (agent/main.py): what websockets imports and an idle
    # agent never uses is deferred first (agent/deferred.py).
    code = (
        "import sys, json\n"
        "from cloudremotecontrol.agent.deferred import defer\n"
        "defer()\n"
        + "".join(f"import {name}\n" for name in imports)
        + "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded: list[str] = json.loads(out.stdout)
    return loaded


def test_the_lean_agent_entry_point_loads_no_cli_master_or_server_code() -> None:
    bad = (*MASTER_AND_SERVER, "fastapi", "rich")
    assert [m for m in _modules(*LEAN) if m.startswith(bad)] == []


def test_the_lean_agent_loads_its_stream_code_only_when_a_stream_opens() -> None:
    # Shells and forwards (agent/streams.py, with relay.py and the terminal) are loaded
    # by the first stream.open; the frames that open them are part of the catalogue.
    loaded = _modules(*LEAN)
    deferred = ("cloudremotecontrol.agent.streams", "cloudremotecontrol.relay")
    assert [m for m in loaded if m in deferred or m == "cloudremotecontrol.agent.terminal"] == []
    assert "cloudremotecontrol.protocol.streams" in loaded


def test_the_lean_agent_loads_no_library_module_its_connection_does_not_need() -> None:
    base = set(_modules(*BASE))
    extra = [
        m
        for m in _modules(*BASE, *LEAN)
        if m not in base and m != "cloudremotecontrol" and not m.startswith("cloudremotecontrol.")
    ]
    assert sorted(extra) == sorted(OWN)


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
        # deferred (agent/deferred.py): loaded on first use only
        "email",
        "http.client",
        "zipfile",
        "csv",
        "_bz2",
        "_lzma",
    )
    assert [m for m in _modules(*LEAN) if m.startswith(heavy)] == []
