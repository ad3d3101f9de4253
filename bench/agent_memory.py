"""Agent memory, decomposed: what the connected agent's resident memory is made of.

Measured as on a VM: the agent package the server hands out (bootstrap/package.py),
unpacked into a venv made without pip, as ``fetch_agent.py`` installs it (no setuptools
``.pth``, websockets without its C speedups), once per interpreter given.

1. The import ladder: fresh processes of that venv's python, each importing one more
   layer than the one before: the interpreter alone; asyncio (which loads ssl,
   subprocess, inspect, typing, ...); sqlite3, json, logging and argparse;
   ``websockets.asyncio.client``, as the lean entry point imports it (``importlib.
   metadata``, ``urllib.request``, ``bz2`` and ``lzma`` deferred: agent/deferred.py);
   the agent's own modules (what the lean entry point loads before it connects); and,
   for comparison, what the deferred modules cost once used (as before they were
   deferred).
2. The agent itself (``python -m cloudremotecontrol.agent run``, enrolled once,
   ``NOTIFY_SOCKET`` set, connected to a loopback server and idle for a second): RSS,
   the anonymous part, and RSS by mapping from ``/proc/PID/smaps``; then the same as
   the service runs it (``crc agent install``'s options: ``-OO``, on 3.11+ ``-X
   no_debug_ranges``, with the bytecode cache the install compiles, agent/install.py);
   then the first start of an agent
   unpacked without byte-compiling it (as ``fetch_agent.py`` did before it compiled at
   install), which compiles its modules as it imports them.

    .venv/bin/python bench/agent_memory.py [--python PATH ...] [--no-write]
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_seconds, log, machine_info, mib, write_section

LADDER = [
    ("interpreter (site, encodings)", ""),
    ("+ asyncio, ssl", "import asyncio, ssl"),
    ("+ sqlite3, json, logging, argparse", "import sqlite3, json, logging, argparse"),
    (
        "+ websockets.asyncio.client",
        "from cloudremotecontrol.agent.deferred import defer\ndefer()\n"
        "import websockets.asyncio.client",
    ),
    (
        "+ the agent's modules",
        "import cloudremotecontrol.agent.main, cloudremotecontrol.agent.service, "
        "cloudremotecontrol.agent.core",
    ),
    (
        "(+ what the agent defers, if loaded)",
        "import importlib.metadata, urllib.request, bz2, lzma\n"
        "importlib.metadata.version, urllib.request.getproxies, bz2.compress, lzma.compress",
    ),
]
PROBE = (
    "import sys\n{imports}\n"
    "f = {{l.split(':')[0]: int(l.split()[1]) for l in open('/proc/self/status') if 'kB' in l}}\n"
    "print(f['VmRSS'], f['RssAnon'], f['RssFile'] + f['RssShmem'], len(sys.modules))\n"
)


def make_venv(python: str, where: Path, precompile: bool = True) -> str:
    """A venv of ``python`` without pip holding the agent package, as on a VM (byte-
    compiled, as ``fetch_agent.py`` installs it; ``precompile=False``: as it did before)."""
    from cloudremotecontrol.bootstrap.package import build_agent_package

    subprocess.run([python, "-m", "venv", "--without-pip", str(where)], check=True)
    venv_python = str(where / "bin" / "python")
    site = subprocess.run(
        [venv_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with zipfile.ZipFile(io.BytesIO(build_agent_package().data)) as zf:
        zf.extractall(site)
    if precompile:
        subprocess.run([venv_python, "-m", "compileall", "-q", site], check=True)
    return venv_python


def ladder(python: str) -> list[tuple[str, int, int, int, int]]:
    rows = []
    for i, (label, _) in enumerate(LADDER):
        imports = "\n".join(code for _, code in LADDER[: i + 1] if code)
        got = []
        for _ in range(3):  # the median of three fresh processes
            out = subprocess.run(
                [python, "-c", PROBE.format(imports=imports)],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            ).stdout.split()
            got.append(tuple(int(x) for x in out))
        rss, anon, file, mods = sorted(got)[1]
        rows.append((label, rss, anon, file, mods))
    return rows


def group_of(path: str) -> str:
    name = os.path.basename(path)
    if not path:
        return "anonymous (pymalloc arenas, large buffers, stacks)"
    if path == "[heap]":
        return "[heap] (malloc: objects > 512 B, OpenSSL, SQLite)"
    if path.startswith("["):
        return "other kernel mappings ([stack], [vdso], ...)"
    for prefix, label in (
        ("libpython", "the interpreter (libpython, or the python executable)"),
        ("python3", "the interpreter (libpython, or the python executable)"),
        ("libcrypto", "libcrypto + libssl (OpenSSL)"),
        ("libssl", "libcrypto + libssl (OpenSSL)"),
        ("libsqlite3", "libsqlite3"),
        ("libc.", "libc, libm, ld.so"),
        ("libm.", "libc, libm, ld.so"),
        ("ld-linux", "libc, libm, ld.so"),
    ):
        if name.startswith(prefix):
            return label
    if ".cpython-" in name or name.endswith(".so") or ".so." in name:
        return "other shared objects (stdlib extension modules, libz, ...)"
    if path.startswith("/usr/lib/locale") or "locale" in path:
        return "locale data"
    return "other files (SQLite -shm, ...)"


def smaps_by_group(pid: int) -> dict[str, int]:
    groups: collections.Counter[str] = collections.Counter()
    current = ""
    with open(f"/proc/{pid}/smaps") as fh:
        for line in fh:
            parts = line.split()
            if not parts[0].endswith(":"):  # a mapping's header line
                current = group_of(parts[5] if len(parts) > 5 else "")
            elif parts[0] == "Rss:":
                groups[current] += int(parts[1])
    return dict(groups)


def status(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as fh:
        return {
            line.split(":")[0]: int(line.split()[1])
            for line in fh
            if line.startswith(("VmRSS", "RssAnon", "RssFile", "RssShmem", "Threads"))
        }


def service_options(venv_python: str) -> list[str]:
    """The options ``crc agent install`` gives the service's python in that venv (``-OO``,
    ``-X no_debug_ranges`` on 3.11+, and its bytecode cache, compiled now, as the
    install does: agent/install.py)."""
    out = subprocess.run(
        [
            venv_python,
            "-c",
            "import json, sys\nfrom cloudremotecontrol.agent.install import optimized_options\n"
            "print(json.dumps(optimized_options(sys.executable)))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    options: list[str] = json.loads(out.stdout)
    return options


def connected_agent(
    python: str, state: Path, client: Any, work: Path, options: list[str] | None = None
) -> dict[str, Any]:
    sock_path = work / f"notify-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(30)
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # the service writes its bytecode, if any
    argv = [python, *(options or []), "-m", "cloudremotecontrol.agent", "run", "--state-dir"]
    argv.append(str(state))
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [*argv, "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(work / "agent.log", "ab"),
    )
    try:
        while b"READY=1" not in sock.recv(4096):
            pass
        deadline = time.monotonic() + 60
        while client.group("g")["machines"][0]["state"] != "ready":
            if time.monotonic() > deadline:
                raise TimeoutError("the agent did not connect")
            time.sleep(0.01)
        took, cpu = time.perf_counter() - t0, cpu_seconds(proc.pid)
        time.sleep(1.0)  # idle: the first facts are collected and sent
        return {
            "status": status(proc.pid),
            "groups": smaps_by_group(proc.pid),
            "connected": took,
            "cpu": cpu,
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        sock.close()
        sock_path.unlink(missing_ok=True)
        deadline = time.monotonic() + 30
        while client.group("g")["machines"][0]["state"] == "ready":
            if time.monotonic() > deadline:
                raise TimeoutError("the agent did not disconnect")
            time.sleep(0.01)


def version_of(python: str) -> str:
    return subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--python",
        action="append",
        help="an interpreter to measure (repeatable; default: the one running this)",
    )
    p.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    args = p.parse_args(argv)
    from cloudremotecontrol.agent.core import enroll
    from cloudremotecontrol.agent.state import AgentState
    from cloudremotecontrol.master.client import Client
    from cloudremotecontrol.master.localrun import ServerProcess

    pythons = args.python or [getattr(sys, "_base_executable", sys.executable)]
    load_before = os.getloadavg()[0]
    sections = []
    with tempfile.TemporaryDirectory(prefix="crc-bench-mem-") as tmp:
        work = Path(tmp)
        server = ServerProcess(work / "srv").start()
        client = Client(server.url, server.add_user("bench"), server.fingerprint)
        try:
            out = client.create_group("g", ["m"])
            state = work / "state"
            st = AgentState(state)
            enroll(st, server.url, out["machines"][0]["key"], server.fingerprint)
            st.close()
            for n, python in enumerate(pythons):
                version = version_of(python)
                log(f"Python {version}: venv, ladder")
                venv_python = make_venv(python, work / f"venv{n}")
                rows = ladder(venv_python)
                log(f"Python {version}: the agent, connected")
                connected_agent(venv_python, state, client, work)  # warm-up
                agent = connected_agent(venv_python, state, client, work)
                log(f"Python {version}: the agent as the service runs it")
                options = service_options(venv_python)
                connected_agent(venv_python, state, client, work, options)  # warm-up
                service = connected_agent(venv_python, state, client, work, options)
                service["options"] = options
                log(f"Python {version}: the first start of an agent not byte-compiled")
                cold_python = make_venv(python, work / f"cold{n}", precompile=False)
                cold = connected_agent(cold_python, state, client, work)
                sections.append(render(version, rows, agent, service, cold))
                print(sections[-1], flush=True)
        finally:
            client.close()
            server.stop()
    if not args.no_write:
        begin, end = "<!-- agent_memory.py: begin -->", "<!-- agent_memory.py: end -->"
        body = (
            f"{begin}\nProduced by `.venv/bin/python bench/agent_memory.py "
            + " ".join(f"--python {py}" for py in args.python or [])
            + f"` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n"
            f"Machine: {machine_info()}\nLoad average (1 min): {load_before:.2f} before, "
            f"{os.getloadavg()[0]:.2f} after. Ladder: the median of three processes per "
            "row.\n\n```\n" + "\n\n".join(sections) + f"\n```\n{end}"
        )
        results = Path(__file__).resolve().parent / "RESULTS.md"
        write_section(
            results, begin, end, body, lambda old: old.rstrip("\n") + "\n\n" + body + "\n"
        )
    return 0


def render(
    version: str,
    rows: list[tuple[str, int, int, int, int]],
    agent: dict[str, Any],
    service: dict[str, Any],
    cold: dict[str, Any],
) -> str:
    header = (
        f"Python {version}: import ladder{'':13s}  {'RSS':>9s}  {'step':>9s}"
        f"  {'anon':>9s}  {'file':>9s}  {'modules':>7s}"
    )
    lines = [header, "-" * len(header)]
    previous = 0
    for label, rss, anon, file, mods in rows:
        step = f"{mib(rss - previous):+5.1f} MiB" if previous else ""
        lines.append(
            f"{label:42s}  {mib(rss):5.1f} MiB  {step:>9s}  {mib(anon):5.1f} MiB"
            f"  {mib(file):5.1f} MiB  {mods:7d}"
        )
        previous = rss
    st = agent["status"]
    lines += [
        "",
        f"the agent, connected and idle: RSS {mib(st['VmRSS']):.1f} MiB (anon "
        f"{mib(st['RssAnon']):.1f}, file {mib(st['RssFile'] + st['RssShmem']):.1f}), "
        f"{st['Threads']} threads; start → connected {agent['connected']:.2f} s, "
        f"{agent['cpu']:.2f} s of CPU; by mapping:",
    ]
    for group, kib in sorted(agent["groups"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {mib(kib):5.1f} MiB  {group}")
    ss = service["status"]
    lines.append(
        f"as the service runs it (python {' '.join(service['options'])}): RSS "
        f"{mib(ss['VmRSS']):.1f} MiB (anon {mib(ss['RssAnon']):.1f}, file "
        f"{mib(ss['RssFile'] + ss['RssShmem']):.1f}); start → connected "
        f"{service['connected']:.2f} s, {service['cpu']:.2f} s of CPU"
    )
    cs = cold["status"]
    lines.append(
        f"the first start of an agent installed without byte-compiling it (it compiles "
        f"itself): RSS {mib(cs['VmRSS']):.1f} MiB (anon {mib(cs['RssAnon']):.1f}); start → "
        f"connected {cold['connected']:.2f} s, {cold['cpu']:.2f} s of CPU"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
