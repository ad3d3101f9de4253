"""Agent start-up and memory: ``crc agent run`` against the lean entry point
``python -m cloudremotecontrol.agent run``, each run as the service runs it.

One ``crc server run`` (SQLite, TLS, loopback); one machine enrolled once (its state
dir is reused, as after a reboot). Each run starts the agent process with
``NOTIFY_SOCKET`` set (as systemd's ``Type=notify`` does) and measures the time until
``READY=1`` (the service is up: scripts can reach it), the time until the server shows
the machine ``ready`` (connected, polled every 5 ms) and the agent's CPU time until
then (user + system, from /proc: what a loaded machine does not inflate), and VmRSS /
PSS once connected and after one job (``echo hi``). Medians of ``--runs`` runs of
each, taken in turn, after one warm-up round (which also writes the bytecode the
others load, in a cache of each entry's own). ``bench/agent_memory.py`` breaks the
memory down.

    .venv/bin/python bench/agent_start.py [--runs 7] [--variants] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_seconds, log, machine_info, mib, pss_kib, rss_kib, write_section

LEAN = ["-m", "cloudremotecontrol.agent", "run"]
ENTRIES: dict[str, tuple[list[str], dict[str, str]]] = {
    "crc agent run": (["-m", "cloudremotecontrol", "agent", "run"], {}),
    "python -m cloudremotecontrol.agent run": (LEAN, {}),
    "python -OO -m cloudremotecontrol.agent run": (["-OO", *LEAN], {}),
    # As `crc agent install` runs it on Python 3.11+: also without column positions, its
    # bytecode in a cache of its own (here each entry's, filled by the warm-up round;
    # agent/install.py).
    "as the service: -OO -X no_debug_ranges": (["-OO", "-X", "no_debug_ranges", *LEAN], {}),
}
# The lean entry point under settings that could lower its memory (--variants): glibc
# malloc arenas, CPython's allocator, docstrings, 3.11's column tables.
VARIANTS: dict[str, tuple[list[str], dict[str, str]]] = {
    f"  with {name}={value}": (LEAN, {name: value})
    for name, value in (
        ("MALLOC_ARENA_MAX", "2"),
        ("MALLOC_ARENA_MAX", "1"),
        ("PYTHONMALLOC", "malloc"),
        ("PYTHONNODEBUGRANGES", "1"),
    )
}


def one_run(
    entry: list[str],
    extra_env: dict[str, str],
    state: Path,
    client: Any,
    group: str,
    work: Path,
    cache: Path,
) -> dict[str, float]:
    sock_path = work / f"notify-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(30)
    # Each entry has its bytecode cache: a .pyc's name says its -O level, not whether it
    # has column positions (-X no_debug_ranges, PYTHONNODEBUGRANGES).
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "PYTHONPYCACHEPREFIX": str(cache)}
    # As on a VM, where the service writes its bytecode (or the bootstrap compiled it),
    # whatever this shell says: the warm-up round compiles, the measured ones do not.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(extra_env)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, *entry, "--state-dir", str(state), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(work / "agent.log", "ab"),
    )
    try:
        while b"READY=1" not in sock.recv(4096):
            pass
        t_ready = time.perf_counter() - t0
        while True:
            g = client.group(group)
            if g["machines"][0]["state"] == "ready":
                break
            time.sleep(0.005)
        t_conn = time.perf_counter() - t0
        cpu_conn = cpu_seconds(proc.pid)
        rss_conn, pss_conn = rss_kib(proc.pid), pss_kib(proc.pid)
        result = client.run_wait(group, "all", argv=["echo", "hi"])
        assert result.ok, result
        rss_job = rss_kib(proc.pid)
        return {
            "ready": t_ready,
            "connected": t_conn,
            "cpu": cpu_conn,
            "rss": mib(rss_conn),
            "pss": mib(pss_conn),
            "rss_job": mib(rss_job),
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        sock.close()
        sock_path.unlink(missing_ok=True)
        # The server must see it go before the next run waits for "ready" again.
        deadline = time.monotonic() + 30
        while client.group(group)["machines"][0]["state"] == "ready":
            if time.monotonic() > deadline:
                raise TimeoutError("the agent did not disconnect")
            time.sleep(0.01)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--variants", action="store_true", help="also the lean entry's variants")
    p.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    args = p.parse_args(argv)
    entries = {**ENTRIES, **(VARIANTS if args.variants else {})}
    from cloudremotecontrol.agent.core import enroll
    from cloudremotecontrol.agent.state import AgentState
    from cloudremotecontrol.master.client import Client
    from cloudremotecontrol.master.localrun import ServerProcess

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="crc-bench-agent-") as tmp:
        work = Path(tmp)
        server = ServerProcess(work / "srv").start()
        client = Client(server.url, server.add_user("bench"), server.fingerprint)
        try:
            out = client.create_group("g", ["m"])
            state = work / "state"
            st = AgentState(state)
            enroll(st, server.url, out["machines"][0]["key"], server.fingerprint)
            st.close()
            rows = []
            got: dict[str, list[dict[str, float]]] = {label: [] for label in entries}
            for i in range(args.runs + 1):  # A B A B ...: drift hits both alike
                for n, (label, (entry, extra_env)) in enumerate(entries.items()):
                    r = one_run(entry, extra_env, state, client, "g", work, work / f"pyc{n}")
                    if i:  # the first round warms up
                        got[label].append(r)
            for label, runs in got.items():
                med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                rows.append((label, med, runs))
                log(f"{label}: {med}")
        finally:
            client.close()
            server.stop()
    header = (
        f"{'entry point':44s}  {'start→READY=1':>13s}  {'start→connected':>15s}"
        f"  {'CPU to connected':>16s}"
        f"  {'RSS connected':>13s}  {'PSS':>8s}  {'RSS after a job':>15s}"
    )
    lines = [header, "-" * len(header)]
    for label, med, _ in rows:
        lines.append(
            f"{label:44s}  {med['ready']:>11.3f} s  {med['connected']:>13.3f} s"
            f"  {med['cpu']:>14.2f} s"
            f"  {med['rss']:>9.1f} MiB  {med['pss']:>4.1f} MiB  {med['rss_job']:>11.1f} MiB"
        )
    table = "\n".join(lines)
    print(table)
    detail = "\n".join(
        f"- {label.strip()}: connected after "
        + ", ".join(f"{r['connected']:.3f}" for r in runs)
        + " s; RSS "
        + ", ".join(f"{r['rss']:.1f}" for r in runs)
        + " MiB"
        for label, _, runs in rows
    )
    if not args.no_write:
        begin, end = "<!-- agent_start.py: begin -->", "<!-- agent_start.py: end -->"
        body = (
            f"{begin}\nProduced by `.venv/bin/python bench/agent_start.py"
            + (" --variants" if args.variants else "")
            + "` on "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n"
            f"Machine: {machine_info()}\nLoad average (1 min): {load_before:.2f} before, "
            f"{os.getloadavg()[0]:.2f} after. Medians of {args.runs} runs after a warm-up.\n\n"
            f"```\n{table}\n```\n\nAll runs:\n\n{detail}\n{end}"
        )
        results = Path(__file__).resolve().parent / "RESULTS.md"
        write_section(
            results, begin, end, body, lambda old: old.rstrip("\n") + "\n\n" + body + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
