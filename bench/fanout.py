"""Fan-out benchmark: one real server, many real agents, `echo hi` to all of them.

    .venv/bin/python bench/fanout.py [--sizes 30,100,1000] [--real 30] [--no-write]

One `crc server run` process (SQLite, TLS, loopback port) serves two kinds of agents:

* a *swarm*: N instances of the real ``cloudremotecontrol.agent.core.Agent`` class, each
  with its own ``AgentState`` (own state dir, own SQLite outbox), enrolled with its own
  single-use key over HTTPS and holding its own TLS WebSocket, many per process in one
  asyncio loop, spread over a few worker processes (one per core);
* ``--real`` separate `crc agent run` processes, exactly as a VM runs them.

For each size it reports the agents connected (by the server's account), the server's
RSS, the RSS per agent, the wall time of the real `crc run G --to all -- echo hi` process
(start-up included) until every result reached the master, and the same job through
the SDK (``Client.run`` on a warm client). It also times `crc --version` alone.

Everything it starts is killed when it ends, fails, is interrupted or runs out of time
(``--max-seconds``); it only uses 127.0.0.1. The swarm, the /proc measurements and the
writing of RESULTS.md are shared with ``replicas.py`` (``_common.py``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    Swarm,
    add_swarm_options,
    cpu_seconds,
    crc_exe,
    guarded,
    log,
    machine_info,
    mib,
    pss_kib,
    raise_fd_limit,
    rss_kib,
    sdk_job,
    write_section,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGETS = {"cli_s": 0.5, "sdk_s": 0.1, "agent_mib": 30.0, "k_agents_s": 1.0}
SALT = "Salt on this machine: 2.96 s CLI, 1.35 s API for 30 minions, 117 MiB RSS per minion"


def thread_names(pid: int) -> dict[str, str]:
    """Python's names of process ``pid``'s threads by thread id, from ``py-spy dump``
    when py-spy is installed (Python 3.11 does not name its threads for the kernel);
    empty otherwise."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        return {}
    try:
        out = subprocess.run(
            [exe, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(re.findall(r'^Thread (\d+) \([^)]*\): "([^"]*)"', out, re.MULTILINE))


def thread_cpu(pid: int, names: dict[str, str]) -> dict[str, float]:
    """User + system CPU seconds of process ``pid``'s threads so far, summed by kind:
    ``loop`` (the main thread: the event loop), ``writer`` (SQLite's writer thread, if
    ``names`` tells it), ``other`` (reader threads, everything else)."""
    out = {"loop": 0.0, "writer": 0.0, "other": 0.0}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if task.name == str(pid):
            kind = "loop"
        elif names.get(task.name, "").startswith("crc-sqlite-writer"):
            kind = "writer"
        else:
            kind = "other"
        out[kind] += (int(fields[11]) + int(fields[12])) / tick
    return out


# -- the benchmark ------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="crc-bench-"))
        self.server: Any = None
        self.client: Any = None
        self.agents: list[Any] = []
        self.swarm: Swarm | None = None
        self.rows: list[dict[str, Any]] = []
        self.cli_env: dict[str, str] = {}
        self.cli_startup: list[float] = []
        self.load_start = os.getloadavg()[0]

    # lifecycle
    def start(self) -> None:
        from cloudremotecontrol.master.client import Client
        from cloudremotecontrol.master.localrun import ServerProcess

        self.server = ServerProcess(self.work / "srv").start()
        token = self.server.add_user("bench")
        self.client = Client(self.server.url, token, self.server.fingerprint)
        self.cli_env = {
            **os.environ,
            "CRC_URL": self.server.url,
            "CRC_TOKEN": token,
            "CRC_FINGERPRINT": self.server.fingerprint,
            "CRC_CONFIG_DIR": str(self.work / "cfg"),
            "NO_COLOR": "1",
        }
        log(f"server pid {self.server.proc.pid} at {self.server.url}")

    def close(self) -> None:
        if self.swarm is not None:
            self.swarm.stop()
            self.swarm = None
        self.stop_agents()
        if self.client is not None:
            self.client.close()
        if self.server is not None:
            self.server.stop()
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)

    def stop_agents(self) -> None:
        for a in self.agents:  # all at once, then wait for each
            if a.alive():
                a.proc.terminate()
        for a in self.agents:
            a.stop()
        self.agents = []

    # measurements
    def time_cli_startup(self) -> None:
        exe = crc_exe()
        for _ in range(self.args.cli_runs + 1):
            t = time.perf_counter()
            subprocess.run([exe, "--version"], check=True, capture_output=True, timeout=60)
            self.cli_startup.append(time.perf_counter() - t)
        self.cli_startup.pop(0)  # warm-up (page cache)

    def wait_ready(self, group: str, n: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            ready = sum(m["state"] == "ready" for m in self.client.group(group)["machines"])
            if ready == n or time.monotonic() > deadline:
                return ready
            time.sleep(0.2)

    def cli_run(self, group: str, n: int) -> float:
        argv = [crc_exe(), "run", group, "--to", "all", "--", "echo", "hi"]
        t = time.perf_counter()
        r = subprocess.run(argv, capture_output=True, text=True, env=self.cli_env, timeout=120)
        took = time.perf_counter() - t
        his = sum(line.endswith("] hi") for line in r.stdout.splitlines())
        if r.returncode != 0 or his != n:
            raise RuntimeError(
                f"crc run: exit {r.returncode}, {his}/{n} answers: {r.stderr[-1000:]}"
            )
        return took

    def sdk_run(self, group: str, n: int) -> float:
        return sdk_job(self.client, group, n)

    def measure(
        self,
        kind: str,
        group: str,
        n: int,
        connected: int,
        agent_pids: list[int],
        agent_rss: float,
        agent_rss_marginal: float | None,
        agent_pss: float | None = None,
    ) -> None:
        pid = self.server.proc.pid
        self.sdk_run(group, n)  # warm-up: connection, server caches

        def agents_cpu() -> float:
            return sum(cpu_seconds(p, children=True) for p in agent_pids)

        cpu, cpu_agents, cpu_me = cpu_seconds(pid), agents_cpu(), time.process_time()
        names = thread_names(pid)
        threads = thread_cpu(pid, names)
        sdk = [self.sdk_run(group, n) for _ in range(self.args.sdk_runs)]
        runs = max(1, len(sdk))
        server_cpu = (cpu_seconds(pid) - cpu) / runs
        split = {k: (v - threads.get(k, 0.0)) / runs for k, v in thread_cpu(pid, names).items()}
        if not any(name.startswith("crc-sqlite-writer") for name in names.values()):
            # Without py-spy the writer cannot be told apart: its CPU is in "other".
            split["other"] += split.pop("writer")
        agent_cpu = (agents_cpu() - cpu_agents) / runs
        client_cpu = (time.process_time() - cpu_me) / runs
        cli = [self.cli_run(group, n) for _ in range(self.args.cli_runs)]
        row = {
            "agents": n,
            "kind": kind,
            "connected": connected,
            "server_rss_mib": mib(rss_kib(pid)),
            "server_cpu_s": server_cpu,
            "server_threads_s": split,
            "agents_cpu_s": agent_cpu,
            "client_cpu_s": client_cpu,
            "agent_rss_mib": agent_rss,
            "agent_marginal_mib": agent_rss_marginal,
            "agent_pss_mib": agent_pss,
            "cli_s": statistics.median(cli) if cli else math.nan,
            "cli_all": cli,
            "sdk_s": statistics.median(sdk),
            "sdk_all": sdk,
        }
        self.rows.append(row)
        log(
            f"{kind} {n}: server CPU per job {server_cpu:.3f} s ("
            + ", ".join(f"{k} {v:.3f}" for k, v in split.items())
            + ("" if "writer" in split else "; writer not told apart: py-spy is not installed")
            + ")"
        )
        log(
            f"{kind} {n}: connected {connected}, CLI {row['cli_s']:.3f} s, "
            f"SDK {row['sdk_s']:.3f} s (runs {', '.join(f'{x:.3f}' for x in sdk)})"
        )

    def run_real(self, n: int) -> None:
        from cloudremotecontrol.master.localrun import AgentProcess

        group = f"real{n}"
        out = self.client.create_group(group, [f"r{i:04d}" for i in range(n)])
        for m in out["machines"]:
            self.agents.append(
                AgentProcess(
                    self.work / "real" / m["name"],
                    self.server.url,
                    m["key"],
                    self.server.fingerprint,
                    extra=["--log-level", "warning"],
                ).start()
            )
        connected = self.wait_ready(group, n, self.args.connect_timeout)
        per_agent = statistics.mean(rss_kib(a.proc.pid) for a in self.agents)
        pss = statistics.mean(pss_kib(a.proc.pid) for a in self.agents)
        try:
            self.measure(
                "processes",
                group,
                n,
                connected,
                [a.proc.pid for a in self.agents],
                mib(per_agent),
                None,
                mib(pss),
            )
        finally:
            self.stop_agents()
            self.client.delete_group(group)

    def run_swarm(self, n: int) -> None:
        group = f"swarm{n}"
        out = self.client.create_group(group, [f"s{i:04d}" for i in range(n)])
        keys = [(m["name"], m["key"]) for m in out["machines"]]
        workers = max(1, min(self.args.workers, (n + 99) // 100))
        t = time.perf_counter()
        self.swarm = Swarm(
            self.work / group,
            self.server.url,
            self.server.fingerprint,
            keys,
            workers,
            self.args.wave,
            self.args.connect_timeout,
            self.args.fold_window,
        )
        try:
            self.swarm.wait_connected(self.args.connect_timeout + 120)
            connected = self.wait_ready(group, n, 30)
            log(
                f"swarm {n}: {self.swarm.connected} agents connected in {workers} processes "
                f"after {time.perf_counter() - t:.1f} s (enroll included)"
            )
            total, base = self.swarm.rss_kib()
            self.measure(
                f"in-process x{workers}",
                group,
                n,
                connected,
                [p.pid for p in self.swarm.procs],
                mib(total) / n,
                mib(total - base) / n,
            )
        finally:
            self.swarm.stop()
            self.swarm = None
            self.client.delete_group(group)


# -- report -------------------------------------------------------------------------------
def table(rows: list[dict[str, Any]], cli_startup: float) -> str:
    head = [
        "agents",
        "kind",
        "connected",
        "server RSS",
        "RSS/agent",
        "CPU/job server",
        "CPU/job agents",
        "crc run (CLI)",
        "Client.run (SDK)",
    ]
    body = []
    for r in rows:
        per = f"{r['agent_rss_mib']:.1f} MiB"
        if r["agent_marginal_mib"] is not None:
            per += f" ({r['agent_marginal_mib']:.2f} marginal)"
        if r.get("agent_pss_mib"):
            per += f" (PSS {r['agent_pss_mib']:.1f})"
        body.append(
            [
                str(r["agents"]),
                r["kind"],
                f"{r['connected']}/{r['agents']}",
                f"{r['server_rss_mib']:.0f} MiB",
                per,
                f"{r['server_cpu_s']:.3f} s",
                f"{r['agents_cpu_s']:.3f} s",
                f"{r['cli_s']:.3f} s",
                f"{r['sdk_s']:.3f} s",
            ]
        )
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [head, ["-" * w for w in widths], *body]
    ]
    lines.append(f"`crc --version` alone (CLI start-up): {cli_startup:.3f} s")
    return "\n".join(lines)


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    out = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    for r in rows:
        if r["agents"] == 30:
            out.append(
                f"- CLI `echo hi` to 30 agents ({r['kind']}) <= 0.5 s: "
                f"{r['cli_s']:.3f} s, {verdict(r['cli_s'] <= TARGETS['cli_s'])}"
            )
            out.append(
                f"- SDK `echo hi` to 30 agents ({r['kind']}) <= 0.1 s: "
                f"{r['sdk_s']:.3f} s, {verdict(r['sdk_s'] <= TARGETS['sdk_s'])}"
            )
        if r["kind"] == "processes":
            out.append(
                f"- RSS per agent process <= 30 MiB: {r['agent_rss_mib']:.1f} MiB, "
                f"{verdict(r['agent_rss_mib'] <= TARGETS['agent_mib'])}"
            )
        if r["agents"] >= 1000:
            best = min(r["sdk_s"], r["cli_s"])
            out.append(
                f"- {r['agents']} agents all answered in < 1 s: SDK {r['sdk_s']:.3f} s,"
                f" CLI {r['cli_s']:.3f} s, {verdict(best < TARGETS['k_agents_s'])}"
            )
    return out


BEGIN, END = "<!-- fanout.py: begin -->", "<!-- fanout.py: end -->"


def write_results(
    path: Path,
    command: str,
    text: str,
    rows: list[dict[str, Any]],
    checks: list[str],
    args: argparse.Namespace,
    load: list[float],
) -> None:
    """Write the measured part of ``path`` between the BEGIN/END markers, keeping what
    was written by hand around them (analysis, profiles)."""
    runs = "\n".join(
        f"- {r['agents']} {r['kind']}: CLI "
        f"{', '.join(f'{x:.3f}' for x in r['cli_all'])}; SDK "
        f"{', '.join(f'{x:.3f}' for x in r['sdk_all'])}"
        for r in rows
    )
    floors = "\n".join(
        f"- {r['agents']} {r['kind']}: server {r['server_cpu_s']:.3f} + agents (with their "
        f"`echo`) {r['agents_cpu_s']:.3f} + SDK client {r['client_cpu_s']:.3f} = "
        f"{r['server_cpu_s'] + r['agents_cpu_s'] + r['client_cpu_s']:.3f} CPU-s per job: "
        f"on {os.cpu_count()} cores no run can take less than "
        f"{(r['server_cpu_s'] + r['agents_cpu_s'] + r['client_cpu_s']) / (os.cpu_count() or 1):.3f}"
        f" s"
        for r in rows
    )
    body = f"""{BEGIN}
Produced by `{command}` on {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}.

Machine: {machine_info()}.
Load average (1 min): {load[0]:.2f} before, {load[1]:.2f} after; other work shares this
machine, so compare medians, and CPU per job rather than wall time.
Medians of {args.cli_runs} CLI and {args.sdk_runs} SDK runs, after one warm-up run.

```
{text}
```

Targets (from the issue; {SALT}):

{chr(10).join(checks)}

CPU per job (from /proc, during the SDK runs):

{floors}

All runs (seconds):

{runs}
{END}"""
    intro = """# Fan-out benchmark results

One `crc server run` process (SQLite, TLS, 127.0.0.1). *processes*: separate
`crc agent run` processes. *in-process xW*: the real `Agent` class (own state dir,
SQLite outbox, enrollment and TLS WebSocket each) many per process in W processes;
their RSS/agent is the processes' VmRSS divided by the agents, *marginal* leaves out what
the processes held before the first agent existed; PSS counts shared library pages once.
The job is `crc run G --to all -- echo hi` (a real process, wall time until it exits,
i.e. until every result reached the master) and `Client.run(G, "all", argv=["echo", "hi"])`
on a warm SDK client (wall time until every target's final status). Server RSS is VmRSS
after the runs, of the one server process that served every row so far. CPU/job: user +
system seconds per SDK run, of the server and of all agent processes including the
`echo` they ran. Everything runs on the same cores, so the agents' own work delays the
server: on real VMs each agent has its own CPU.

"""
    write_section(path, BEGIN, END, body, lambda old: intro + body + "\n" + old)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--sizes", default="30,100,1000", help="swarm sizes, comma separated (max 1000: one group)"
    )
    p.add_argument(
        "--real", type=int, default=30, help="number of `crc agent run` processes (0: none)"
    )
    p.add_argument("--cli-runs", type=int, default=5)
    p.add_argument("--sdk-runs", type=int, default=10)
    add_swarm_options(p, connect_timeout=120.0, max_seconds=1200, out=HERE / "RESULTS.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if any(not 1 <= s <= 1000 for s in sizes):
        raise SystemExit("fanout: sizes must be 1..1000 (one group)")
    raise_fd_limit()
    bench = Bench(args)

    def work() -> None:
        bench.start()
        bench.time_cli_startup()
        if args.real:
            bench.run_real(args.real)
        for n in sizes:
            bench.run_swarm(n)

    guarded("fanout", args.max_seconds, work, bench.close)
    text = table(bench.rows, statistics.median(bench.cli_startup))
    checks = verdicts(bench.rows)
    print(text)
    print("\n".join(checks))
    if not args.no_write:
        rel = os.path.relpath(Path(__file__).resolve(), Path.cwd())
        command = " ".join([".venv/bin/python", rel, *(argv if argv is not None else sys.argv[1:])])
        write_results(
            Path(args.out),
            command,
            text,
            bench.rows,
            checks,
            args,
            [bench.load_start, os.getloadavg()[0]],
        )
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
