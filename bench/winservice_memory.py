"""The Windows service's memory and modules, before and after a change, under Wine.

Each measurement is one Windows machine of the Windows test tier (tests/windows: a copy
of the template prefix from ``tests/windows/setup.sh``, Windows CPython 3.12 with
pywin32): a server on loopback, the agent fetched from that server's
``/v1/agent/package`` into the Windows Python and byte-compiled as the bootstrap does,
``crc agent install`` (which registers and starts the ``crc-agent`` service), the
machine ready, one ``cmd`` job, then 5 s idle
(``after, no -OO``: this tree installed with ``optimized_options`` turned off, so that
the service runs without ``-OO -X ...``: the deferred imports alone).
Then the resident memory (``VmRSS``) and ``Pss`` of the service's process, which under
Wine is a Linux process holding Wine's own DLLs and the interpreter: compare the two
trees within a run, as a ratio, not with a Windows figure. Last the service is stopped,
and a ``sitecustomize`` in the Windows Python writes, as the service host exits, the
modules it really loaded (a module agent/deferred.py deferred and nothing used is not
counted) and ``sys.flags.optimize``.

The tree measured is the one the server (and so the agent package) comes from:
``--base SRC`` measures that source tree too, in alternation with this one, each round.

    flock /tmp/crc-bench.lock .venv/bin/python bench/winservice_memory.py \\
        --base /work/wt/base/src [--rounds 3] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# tests/windows (the Wine machine, test_wine_lean's sitecustomize) and tests/ (lean.py,
# which test_wine_lean imports, as pytest finds it)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "windows"))

from _common import log, machine_info, mib, pss_kib, rss_kib, write_section

HERE = Path(__file__).resolve().parent

CACHE = Path(os.environ.get("CRC_WINE_CACHE", "/var/cache/crc-wine"))
DUMP_DIR = r"C:\crc-test\modules"
WATCHED = (
    "click",
    "cloudremotecontrol.cli",
    "cloudremotecontrol.master",
    "cloudremotecontrol.server",
    "urllib.request",
    "importlib.metadata",
    "http.client",
    "email",
    "zipfile",
    "bz2",
    "lzma",
    # read the service host's options, then unloaded (agent/options.py)
    "argparse",
    "gettext",
)


PRECOMPILE = (
    "import compileall, os, sys\n"
    "for name in ('cloudremotecontrol', 'websockets', 'click'):\n"
    "    compileall.compile_dir(os.path.join(sys.argv[1], name), quiet=2)"
)
# Prints the registered service's command line.
SERVICE_COMMAND = (
    "import win32service as ws\n"
    "scm = ws.OpenSCManager(None, None, ws.SC_MANAGER_ALL_ACCESS)\n"
    "h = ws.OpenService(scm, 'crc-agent', ws.SERVICE_QUERY_CONFIG)\n"
    "print(ws.QueryServiceConfig(h)[3])"
)
# `crc agent install` with the service's interpreter options turned off (``plain``).
PLAIN_INSTALL = (
    "import sys\n"
    "from cloudremotecontrol.agent import install\n"
    "install.optimized_options = lambda python: ()\n"
    "sys.argv[0] = 'crc'\n"
    "from cloudremotecontrol.cli.main import main\n"
    "main()"
)


def one(tmp: Path, plain: bool) -> dict[str, Any]:
    """One machine of the tree this interpreter imports; its figures as a dict."""
    from test_wine_lean import SITECUSTOMIZE
    from wine_machine import WineMachine, WinePrefix, tear_down

    from cloudremotecontrol.master.localrun import ServerProcess

    manifest = json.loads((CACHE / "current" / "manifest.json").read_text())
    server = ServerProcess(tmp / "srv").start()
    prefix = WinePrefix(Path(manifest["prefix"]), tmp)
    machine = WineMachine(server, prefix, tmp)
    try:
        prefix.start()
        machine.package = machine.install_agent_package()
        # Byte-compiled as the bootstrap does (fetch_agent.py, ``precompile``): no tree
        # compiles its code at the service's first start.
        prefix.python("-c", PRECOMPILE, machine.package["site"], timeout=300, check=True)
        prefix.host_path(machine.package["site"] + r"\sitecustomize.py").write_text(
            SITECUSTOMIZE, encoding="utf-8"
        )
        install = (
            (lambda *a, **kw: prefix.python("-c", PLAIN_INSTALL, *a, **kw)) if plain else prefix.crc
        )
        out = install(*machine.install_args(), timeout=180)
        if out.returncode != 0:
            raise RuntimeError(f"crc agent install failed:\n{out.stdout}\n{out.stderr}")
        machine.wait_state("ready", timeout=120)
        command = prefix.python("-c", SERVICE_COMMAND, check=True).stdout.strip()
        job = machine.crc("run", "g", "--to", "win", "--shell", "cmd", "--", "echo bench")
        if job.returncode != 0:
            raise RuntimeError(f"the job failed: {job.stdout} {job.stderr}")
        time.sleep(5)
        (pid,) = prefix.pids("cloudremotecontrol.agent.winservice")
        rss, pss = rss_kib(pid), pss_kib(pid)
        prefix.run("sc", "stop", "crc-agent")
        prefix.wait_sc("STOPPED", timeout=60)
        dumps = prefix.host_path(DUMP_DIR)
        deadline = time.monotonic() + 60
        while not (dumps.exists() and any(dumps.glob("*.json"))):
            if time.monotonic() > deadline:
                raise RuntimeError("the service wrote no module list")
            time.sleep(0.5)
        dump = json.loads(sorted(dumps.glob("*.json"))[-1].read_text())
        modules = dump["modules"]
        return {
            "command": command,
            "rss_kib": rss,
            "pss_kib": pss,
            "optimize": dump["optimize"],
            "modules": len(modules),
            "watched": sorted(
                n for n in modules if any(n == w or n.startswith(w + ".") for w in WATCHED)
            ),
        }
    finally:
        tear_down(machine, prefix, server)


def measure(src: Path, label: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(src), "CRC_BENCH_PLAIN": str(int("no -OO" in label))}
    with tempfile.TemporaryDirectory(prefix="crc-winmem-") as tmp:
        out = subprocess.run(
            [sys.executable, __file__, "--one", tmp],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    if out.returncode != 0:
        raise SystemExit(f"{label}: the measurement failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    log(f"{label}: RSS {mib(result['rss_kib']):.1f} MiB, {result['modules']} modules")
    return result


def grouped(names: list[str]) -> str:
    """``email (15), http.client, ...``: each watched module with how many of its
    submodules (itself included) were loaded."""
    counts = {w: sum(n == w or n.startswith(w + ".") for n in names) for w in WATCHED}
    return ", ".join(w if c == 1 else f"{w} ({c})" for w, c in sorted(counts.items()) if c) or "-"


def table(results: dict[str, list[dict[str, Any]]], rounds: int) -> str:
    rows = [
        f"{'tree':<14} {'RSS (median)':>13} {'RSS each':>24} {'Pss (median)':>13} "
        f"{'modules':>8} {'optimize':>9}  watched modules loaded",
        "-" * 110,
    ]
    for label, runs in results.items():
        rss = [mib(r["rss_kib"]) for r in runs]
        pss = [mib(r["pss_kib"]) for r in runs]
        last = runs[-1]
        rows.append(
            f"{label:<14} {statistics.median(rss):>9.1f} MiB "
            f"{' '.join(f'{v:.1f}' for v in rss):>24} {statistics.median(pss):>9.1f} MiB "
            f"{last['modules']:>8} {last['optimize']:>9}  {grouped(last['watched'])}"
        )
    commands = "\n".join(f"{label}: {runs[-1]['command']}" for label, runs in results.items())
    return "\n".join(rows) + f"\n\nService command lines:\n{commands}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="the source tree to compare with (its src/)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(Path(args.one), os.environ.get("CRC_BENCH_PLAIN") == "1")))
        return
    this = HERE.parent / "src"
    trees = ([("before", args.base)] if args.base else []) + [
        ("after, no -OO", this),
        ("after", this),
    ]
    results: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in trees}
    for _ in range(args.rounds):
        for label, src in trees:
            results[label].append(measure(src, label))
    body = table(results, args.rounds)
    print(body)
    if args.no_write:
        return
    begin, end = "<!-- winservice_memory.py: begin -->", "<!-- winservice_memory.py: end -->"
    text = (
        f"{begin}\nProduced by `.venv/bin/python bench/winservice_memory.py --base "
        f"BASE/src --rounds {args.rounds}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."
        f"\n\nMachine: {machine_info()}\n\n```\n{body}```\n{end}"
    )
    results_md = HERE / "RESULTS.md"
    write_section(results_md, begin, end, text, lambda old: old.rstrip("\n") + "\n\n" + text + "\n")


if __name__ == "__main__":
    main()
