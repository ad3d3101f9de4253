"""Connected-fleet benchmark: N agents held by one server process, a restart, a big job.

    .venv/bin/python bench/connected.py [--agents 10000] [--workers 4] [--no-write]

One `crc server run` process (SQLite, TLS, 127.0.0.1) and N simulated agents (the real
``Agent`` class, many per process: ``_common.py``'s swarm) in groups of at most 1,000
machines (``MAX_MACHINES_PER_GROUP``). It measures, in this order:

1. **connect**: from the swarm's start (enrollment included) until the server counts
   every machine connected (``ready`` in its database, read-only);
2. **idle**: the server's RSS, and its CPU over ``--idle-seconds`` with everyone
   connected and nothing to do (user + system seconds from /proc, as % of one core);
3. **restart**: the server is killed (SIGKILL) and started again on the same data;
   the time from the new process's start until every machine is connected again, and
   how many connection attempts the server turned away with 503 + Retry-After (the
   agents' own logs count them);
4. **job**: ``echo hi`` to every machine (one job per group, all started at once) until
   every target's result is stored: wall time, server CPU, and the targets
   ``succeeded`` with their output, counted in the database.

All simulated machines connect from 127.0.0.1, so the server's per-address bounds on
connections without a credential and on TLS handshakes in progress are raised to the
fleet size for the run (in ``server.json``; a real fleet comes from as many addresses
as machines). Everything it starts is stopped when it ends, fails or runs out of time;
it only uses 127.0.0.1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _common import Swarm, cpu_seconds, guarded, log, machine_info, mib, rss_kib, write_section

HERE = Path(__file__).resolve().parent
GROUP_SIZE = 1000
TARGETS = {"rss_mib": 1024.0, "idle_pct": 5.0, "reconnect_s": 60.0}


def raise_fd_limit_hard(want: int) -> int:
    """Raise RLIMIT_NOFILE (soft, and hard when allowed: root) to ``want``; the server
    and the swarm workers inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            want = hard
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return max(soft, want)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="crc-connected-"))
        self.server: Any = None
        self.client: Any = None
        self.swarm: Swarm | None = None
        self.groups: list[str] = []
        self.token = ""
        self.out: dict[str, Any] = {"agents": args.agents, "workers": args.workers}
        self.load = [os.getloadavg()[0]]
        self.cpu_all = [_machine_cpu()]

    # -- helpers --------------------------------------------------------------------------
    def db(self) -> sqlite3.Connection:
        path = self.work / "srv" / "crc.db"
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)

    def ready(self) -> int:
        with self.db() as c:
            return int(
                c.execute("SELECT count(*) FROM machines WHERE state = 'ready'").fetchone()[0]
            )

    def wait_all_ready(self, timeout: float) -> float | None:
        t = time.monotonic()
        deadline = t + timeout
        last = -1
        while time.monotonic() < deadline:
            n = self.ready()
            if n != last:
                log(f"  {n}/{self.args.agents} connected")
                last = n
            if n >= self.args.agents:
                return time.monotonic() - t
            time.sleep(0.5)
        return None

    def refusals(self) -> Counter[str]:
        """Failed connection attempts by kind, from the agents' warnings (one line each):
        ``told`` 503 with Retry-After, ``503`` without, ``other`` anything else, of
        which ``down`` refused by the kernel (no server listening)."""
        n: Counter[str] = Counter()
        for path in self.swarm.logs if self.swarm else []:
            with open(path, errors="replace") as fh:
                for line in fh:
                    if "connection to" not in line:
                        continue
                    if "HTTP 503" in line:
                        n["told" if "retrying in" in line else "503"] += 1
                    else:
                        n["other"] += 1
                        if "connect call failed" in line.lower() or "refused" in line.lower():
                            n["down"] += 1  # refused by the kernel: no server listening
        return n

    # -- lifecycle ------------------------------------------------------------------------
    def start_server(self) -> None:
        from cloudremotecontrol.master.localrun import ServerProcess

        if self.server is None:
            self.server = ServerProcess(self.work / "srv")
            self.server.init()
            cfg_path = self.work / "srv" / "server.json"
            cfg = json.loads(cfg_path.read_text())
            from dataclasses import fields

            from cloudremotecontrol.server.config import ServerSettings

            raised = {"max_unauthenticated_per_ip": max(64, self.args.agents)}
            if "max_handshakes_per_ip" in {f.name for f in fields(ServerSettings)}:
                raised["max_handshakes_per_ip"] = max(64, self.args.agents)
            cfg.setdefault("settings", {}).update(raised)
            cfg_path.write_text(json.dumps(cfg))
        self.server.start(timeout=60)
        log(f"server pid {self.server.proc.pid} at {self.server.url}")

    def close(self) -> None:
        try:
            if self.swarm is not None:
                self.swarm.stop()
        finally:  # the server goes whatever the swarm did
            if self.client is not None:
                self.client.close()
            if self.server is not None:
                self.server.stop()
            if not self.args.keep:
                shutil.rmtree(self.work, ignore_errors=True)

    # -- the phases -----------------------------------------------------------------------
    def connect(self) -> None:
        from cloudremotecontrol.master.client import Client

        self.start_server()
        self.token = self.server.add_user("bench")
        self.client = Client(self.server.url, self.token, self.server.fingerprint, timeout=120)
        keys: list[tuple[str, str]] = []
        n = self.args.agents
        for g in range((n + GROUP_SIZE - 1) // GROUP_SIZE):
            name = f"fleet{g:02d}"
            size = min(GROUP_SIZE, n - g * GROUP_SIZE)
            out = self.client.create_group(name, [f"m{g:02d}-{i:04d}" for i in range(size)])
            keys += [(m["name"], m["key"]) for m in out["machines"]]
            self.groups.append(name)
        t = time.monotonic()
        self.swarm = Swarm(
            self.work / "swarm",
            self.server.url,
            self.server.fingerprint,
            keys,
            self.args.workers,
            self.args.wave,
            self.args.connect_timeout,
            self.args.fold_window,
            facts_seconds=self.args.facts_seconds,
        )
        self.swarm.wait_connected(self.args.connect_timeout + 300)
        took = self.wait_all_ready(120)
        self.out["connect_s"] = time.monotonic() - t if took is not None else None
        self.out["connected"] = self.ready()
        log(f"connect: {self.out['connected']}/{n} after {time.monotonic() - t:.1f} s")
        total, _ = self.swarm.rss_kib()
        self.out["swarm_rss_mib"] = mib(total)
        self.out["refused_connect"] = dict(self.refusals())

    def idle(self) -> None:
        pid = self.server.proc.pid
        time.sleep(self.args.settle)  # the last arrivals' facts and acks
        c0, t0, m0 = cpu_seconds(pid), time.monotonic(), _machine_cpu()
        time.sleep(self.args.idle_seconds)
        c1, t1, m1 = cpu_seconds(pid), time.monotonic(), _machine_cpu()
        self.out["idle_cpu_pct"] = 100.0 * (c1 - c0) / (t1 - t0)
        self.out["idle_machine_busy_pct"] = _busy_pct(m0, m1)
        self.out["idle_seconds"] = t1 - t0
        self.out["server_rss_mib"] = mib(rss_kib(pid))
        self.out["server_hwm_mib"] = mib(rss_kib(pid, "VmHWM"))
        log(
            f"idle: server {self.out['idle_cpu_pct']:.2f} % of a core over {t1 - t0:.0f} s, "
            f"RSS {self.out['server_rss_mib']:.0f} MiB "
            f"(machine {self.out['idle_machine_busy_pct']:.0f} % busy)"
        )

    def restart(self) -> None:
        before = self.refusals()
        self.server.kill(signal.SIGKILL)
        log("server killed")
        time.sleep(self.args.down_seconds)
        m0 = _machine_cpu()
        t = time.monotonic()
        self.start_server()
        pid = self.server.proc.pid
        spy = self.profile(pid)
        took = self.wait_all_ready(self.args.reconnect_timeout)
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its stacks and exits
            spy.wait(120)
        self.out["reconnect_s"] = time.monotonic() - t if took is not None else None
        self.out["reconnected"] = self.ready()
        self.out["reconnect_server_cpu_s"] = cpu_seconds(pid)
        self.out["reconnect_machine_busy_pct"] = _busy_pct(m0, _machine_cpu())
        self.out["refused_reconnect"] = dict(self.refusals() - before)
        self.out["restart_rss_mib"] = mib(rss_kib(pid))
        log(
            f"restart: {self.out['reconnected']}/{self.args.agents} after "
            f"{time.monotonic() - t:.1f} s, failed attempts {self.out['refused_reconnect']}"
        )
        from cloudremotecontrol.master.client import Client

        self.client.close()  # its connection went with the old process
        for attempt in range(10):
            try:
                self.client = Client(
                    self.server.url, self.token, self.server.fingerprint, timeout=120
                )
                break
            except Exception as exc:  # noqa: BLE001 -- a server still busy: try again
                log(f"client: {exc}; trying again")
                time.sleep(5 + attempt)

    def profile(self, pid: int) -> subprocess.Popen[bytes] | None:
        if not self.args.profile_restart:
            return None
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        cmd = [
            exe,
            "record",
            "--pid",
            str(pid),
            "--rate",
            "50",
            "--format",
            "raw",
            "-o",
            self.args.profile_restart,
        ]
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def job(self) -> None:
        pid = self.server.proc.pid
        time.sleep(self.args.settle)
        c0, t0, m0 = cpu_seconds(pid), time.monotonic(), _machine_cpu()
        jobs = [self.client.start_job(g, "all", argv=["echo", "hi"])["job_id"] for g in self.groups]
        submitted = time.monotonic() - t0
        deadline = t0 + self.args.job_timeout
        done = 0
        while time.monotonic() < deadline:
            done = self.finished(jobs)
            if done >= self.args.agents:
                break
            time.sleep(0.5)
        took = time.monotonic() - t0
        self.out["job_s"] = took if done >= self.args.agents else None
        self.out["job_submit_s"] = submitted
        self.out["job_server_cpu_s"] = cpu_seconds(pid) - c0
        self.out["job_machine_busy_pct"] = _busy_pct(m0, _machine_cpu())
        ok, with_output = self.stored(jobs)
        self.out["job_succeeded"] = ok
        self.out["job_output"] = with_output
        # The same from the API (what a master sees).
        api_ok = 0
        for j in jobs:
            api_ok += sum(t["status"] == "succeeded" for t in self.client.job(j)["targets"])
        self.out["job_api_succeeded"] = api_ok
        log(
            f"job: {ok}/{self.args.agents} succeeded ({with_output} with output, API {api_ok}) "
            f"in {took:.1f} s, server CPU {self.out['job_server_cpu_s']:.1f} s"
        )

    def finished(self, jobs: list[str]) -> int:
        marks = ",".join("?" * len(jobs))
        with self.db() as c:
            row = c.execute(
                f"SELECT count(*) FROM job_targets WHERE job_id IN ({marks}) "
                "AND status IN ('succeeded', 'failed', 'lost', 'cancelled', 'timeout', "
                "'expired', 'skipped')",
                jobs,
            ).fetchone()
        return int(row[0])

    def stored(self, jobs: list[str]) -> tuple[int, int]:
        marks = ",".join("?" * len(jobs))
        with self.db() as c:
            ok = c.execute(
                f"SELECT count(*) FROM job_targets WHERE job_id IN ({marks}) "
                "AND status = 'succeeded' AND exit_code = 0",
                jobs,
            ).fetchone()[0]
            out = c.execute(
                f"SELECT count(*) FROM job_targets WHERE job_id IN ({marks}) AND output_bytes >= 3",
                jobs,
            ).fetchone()[0]
        return int(ok), int(out)


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    parts = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + parts[4]
    return sum(parts) - idle, sum(parts)


def _busy_pct(a: tuple[float, float], b: tuple[float, float]) -> float:
    total = b[1] - a[1]
    return 100.0 * (b[0] - a[0]) / total if total > 0 else 0.0


def _count(o: dict[str, Any], phase: str, kind: str) -> str:
    return str(o[phase].get(kind, 0)) if phase in o else "-"


def _fmt(v: Any, spec: str, unit: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{unit}"


def table(o: dict[str, Any]) -> str:
    n = o["agents"]
    rows = [
        ("agents (swarm processes)", f"{n} ({o['workers']})"),
        ("connected at first", f"{o.get('connected', 0)}/{n}"),
        ("first connect, enroll included", _fmt(o.get("connect_s"), ".1f", " s")),
        ("  attempts refused: 503 + Retry-After", _count(o, "refused_connect", "told")),
        ("  attempts refused: 503 alone", _count(o, "refused_connect", "503")),
        ("  attempts failed otherwise", _count(o, "refused_connect", "other")),
        ("    of which refused, no server listening", _count(o, "refused_connect", "down")),
        ("server RSS, all connected", _fmt(o.get("server_rss_mib"), ".0f", " MiB")),
        ("server RSS peak (VmHWM)", _fmt(o.get("server_hwm_mib"), ".0f", " MiB")),
        (
            "server CPU, idle",
            _fmt(
                o.get("idle_cpu_pct"), ".2f", f" % of a core over {o.get('idle_seconds', 0):.0f} s"
            ),
        ),
        ("restart: all connected again", _fmt(o.get("reconnect_s"), ".1f", " s")),
        ("  connected again", f"{o.get('reconnected', 0)}/{n}"),
        ("  attempts refused: 503 + Retry-After", _count(o, "refused_reconnect", "told")),
        ("  attempts refused: 503 alone", _count(o, "refused_reconnect", "503")),
        ("  attempts failed otherwise", _count(o, "refused_reconnect", "other")),
        ("    of which refused, no server listening", _count(o, "refused_reconnect", "down")),
        ("  server CPU until then", _fmt(o.get("reconnect_server_cpu_s"), ".1f", " s")),
        ("  server RSS then", _fmt(o.get("restart_rss_mib"), ".0f", " MiB")),
        (
            f"job to {n} targets ({(n + GROUP_SIZE - 1) // GROUP_SIZE} groups)",
            _fmt(o.get("job_s"), ".1f", " s"),
        ),
        ("  server CPU for the job", _fmt(o.get("job_server_cpu_s"), ".1f", " s")),
        ("  results stored: succeeded", f"{o.get('job_succeeded', 0)}/{n}"),
        ("  results stored: with output", f"{o.get('job_output', 0)}/{n}"),
        ("  succeeded per the API", f"{o.get('job_api_succeeded', 0)}/{n}"),
        ("swarm RSS (all agents)", _fmt(o.get("swarm_rss_mib"), ".0f", " MiB")),
    ]
    w = max(len(a) for a, _ in rows)
    return "\n".join(f"{a.ljust(w)}  {b}" for a, b in rows)


def verdicts(o: dict[str, Any]) -> list[str]:
    def v(ok: bool) -> str:
        return "met" if ok else "MISSED"

    n = o["agents"]
    rss, idle, rec = o.get("server_rss_mib"), o.get("idle_cpu_pct"), o.get("reconnect_s")
    return [
        f"- {n} connected, server RSS <= 1 GiB: {_fmt(rss, '.0f', ' MiB')}, "
        f"{v(rss is not None and rss <= TARGETS['rss_mib'] and o.get('connected') == n)}",
        f"- idle server CPU <= 5 % of a core: {_fmt(idle, '.2f', ' %')}, "
        f"{v(idle is not None and idle <= TARGETS['idle_pct'])}",
        f"- all connected within 60 s of a restart: {_fmt(rec, '.1f', ' s')}, "
        f"{v(rec is not None and rec <= TARGETS['reconnect_s'])}",
        f"- one job to {n} targets, every result stored: {o.get('job_succeeded', 0)}/{n}, "
        + (
            v(o.get("job_succeeded") == n and o.get("job_output") == n)
            if "job_s" in o
            else "not run (--no-job)"
        ),
    ]


BEGIN, END = "<!-- connected.py: begin -->", "<!-- connected.py: end -->"


def write_results(
    path: Path, command: str, text: str, checks: list[str], o: dict[str, Any], load: list[float]
) -> None:
    body = f"""{BEGIN}
Produced by `{command}` on {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}.

Machine: {machine_info()}.
Load average (1 min): {load[0]:.2f} before, {load[1]:.2f} after; whole machine busy
{_fmt(o.get("idle_machine_busy_pct"), ".0f", " %")} during the idle measurement,
{_fmt(o.get("reconnect_machine_busy_pct"), ".0f", " %")} during the reconnect storm,
{_fmt(o.get("job_machine_busy_pct"), ".0f", " %")} during the job (the swarm and other
work share the 2 cores with the server).

```
{text}
```

Targets (from the issue):

{chr(10).join(checks)}
{END}"""
    intro = """## Connected fleet (bench/connected.py)

One `crc server run` process (SQLite, TLS, 127.0.0.1) holding N simulated agents (the
real `Agent` class, many per process), in groups of 1,000. *First connect*: from the
swarm's start, enrollment included, until the server's database shows every machine
connected. *Idle*: server CPU (user + system, /proc) with everyone connected and
nothing to do. *Restart*: the server is killed with SIGKILL and started again; time from
the new process's start until every machine is connected again. *Attempts*: failed
connection attempts, from the agents' logs: refused with 503 + Retry-After (the login
bound, or the bound on connections without a credential, `httpguard.py`), with 503
alone (none expected), or failed otherwise (at a restart: the connections the kill cut,
one per agent, then refused while no server listened, counted apart, opening handshake
timed out, reset). *Job*:
`echo hi` to every machine, one job per group, all started at once, until every
target's result is stored (counted in the database, and through the API).

"""
    write_section(
        path, BEGIN, END, body, lambda old: old.rstrip("\n") + "\n\n" + intro + body + "\n"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--agents", type=int, default=10000)
    p.add_argument("--workers", type=int, default=4, help="swarm processes")
    p.add_argument("--wave", type=int, default=100, help="agents started at once per worker")
    p.add_argument("--fold-window", type=float, default=5.0, help="as in fanout.py")
    p.add_argument(
        "--facts-seconds",
        type=float,
        default=3600.0,
        help="how often each simulated agent re-reads its addresses (the agent's own is "
        "30 s: one `ip` process each time, which ten thousand agents sharing two cores "
        "cannot afford; they all have the same addresses anyway)",
    )
    p.add_argument("--connect-timeout", type=float, default=600.0)
    p.add_argument("--idle-seconds", type=float, default=30.0)
    p.add_argument("--settle", type=float, default=10.0, help="pause before measuring")
    p.add_argument("--down-seconds", type=float, default=2.0, help="server down for this long")
    p.add_argument("--reconnect-timeout", type=float, default=300.0)
    p.add_argument("--job-timeout", type=float, default=600.0)
    p.add_argument("--max-seconds", type=int, default=3600)
    p.add_argument("--no-job", action="store_true", help="stop after the restart")
    p.add_argument(
        "--profile-restart",
        metavar="FILE",
        help="record the restarted server with py-spy (on PATH or beside this Python) "
        "until every machine is connected again, into this file (collapsed stacks)",
    )
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--out", default=str(HERE / "RESULTS.md"))
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.agents < 1:
        raise SystemExit("connected: --agents must be >= 1")
    fds = raise_fd_limit_hard(max(65536, 4 * args.agents))
    log(f"file descriptor limit {fds}")
    bench = Bench(args)

    def work() -> None:
        bench.connect()
        bench.idle()
        bench.restart()
        if not args.no_job:
            bench.job()

    try:
        guarded("connected", args.max_seconds, work, bench.close)
    finally:
        bench.load.append(os.getloadavg()[0])
    text = table(bench.out)
    checks = verdicts(bench.out)
    print(text)
    print("\n".join(checks))
    if not args.no_write:
        rel = os.path.relpath(Path(__file__).resolve(), Path.cwd())
        command = " ".join([".venv/bin/python", rel, *(argv if argv is not None else sys.argv[1:])])
        write_results(Path(args.out), command, text, checks, bench.out, bench.load)
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
