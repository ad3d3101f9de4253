"""Replicas benchmark: the same swarm against SQLite, PostgreSQL and two PostgreSQL replicas.

    .venv/bin/python bench/replicas.py [--agents 1000] [--runs 7] [--seconds 10] [--no-write]
                                       [--baseline COMMIT]

Three configurations, each on a fresh server (and, for PostgreSQL, a database this
benchmark creates on ``--postgres`` and drops at the end):

* ``sqlite``: one `crc server run` process, SQLite (the default);
* ``postgres``: one `crc server run` process on PostgreSQL;
* ``replicas``: two `crc server run` processes sharing that database and one certificate
  (as behind a load balancer); half of the agents connect to each, and the jobs are
  submitted and followed alternately through each, so half of every job's targets are
  reached through the other replica (``NOTIFY`` from the submitting replica wakes the
  one holding the agent's connection) and half of the results come back the same way.

The agents are the swarm of ``fanout.py`` (``_common.py``: the real ``Agent`` class, own
state dir, SQLite outbox, enrollment and TLS WebSocket each, many per process). For each
configuration it measures:

* **job**: the wall time of ``Client.run(G, "all", argv=["echo", "hi"])`` on a warm SDK
  client until every agent's final status reached the master (median of ``--runs``,
  after one warm-up run through each replica);
* **messages/s**: every agent sends ``user.bench`` messages to the master through its
  real ``Agent.emit`` (committed to its outbox, then sent) for ``--seconds``, at most
  ``--window`` of its own unacknowledged at a time; counted are the messages the server
  acknowledged, which it does only after the message and its event are committed to the
  database (the server's durable message path: ``apply_agent_message``, one event
  insert, then the ack frame);

and the CPU seconds of the server process(es), of this database's PostgreSQL backends
and of the agents, per job and per 1,000 messages, from /proc.

``--baseline COMMIT`` runs each PostgreSQL configuration twice, first with the servers
of ``COMMIT`` (its ``src``, from ``git archive``, first on their ``PYTHONPATH``; the
agents are this tree's), then with this tree's: an A/B measured in one run, on the same
machine under the same load, printed as ratios.

Everything it starts is killed when it ends, fails, is interrupted or runs out of time
(``--max-seconds``); it only uses 127.0.0.1 (and refuses a ``--postgres`` elsewhere).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from _common import (
    Swarm,
    add_swarm_options,
    cpu_seconds,
    guarded,
    log,
    machine_info,
    raise_fd_limit,
    sdk_job,
    write_section,
)

HERE = Path(__file__).resolve().parent
CONFIGS = {
    "sqlite": "SQLite, 1 server",
    "postgres": "PostgreSQL, 1 server",
    "replicas": "PostgreSQL, 2 replicas",
}
ADMIN_URL = os.environ.get("CRC_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
COUNTERS = ("server", "agents", "postgres", "listen", "wal", "xids", "commits")
BEGIN, END = "<!-- replicas.py: begin -->", "<!-- replicas.py: end -->"


# -- PostgreSQL -----------------------------------------------------------------------------
def _loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host in ("", "localhost") or host.startswith("/"):  # empty/path: a Unix socket
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Postgres:
    """An admin connection: creates and drops the benchmark's database and reads what
    its backends did (CPU from /proc, WAL written, transaction ids used)."""

    def __init__(self, admin_url: str) -> None:
        import psycopg

        self.admin_url = admin_url
        self.conn = psycopg.connect(admin_url, autocommit=True, connect_timeout=5)
        self.databases: list[str] = []

    def settings(self) -> str:
        version = self.conn.execute("SHOW server_version").fetchone()[0]
        vals = {
            k: self.conn.execute(f"SHOW {k}").fetchone()[0]
            for k in ("fsync", "synchronous_commit", "shared_buffers")
        }
        return f"PostgreSQL {version} ({', '.join(f'{k}={v}' for k, v in vals.items())})"

    def create_database(self) -> str:
        name = f"crc_bench_{secrets.token_hex(6)}"
        self.conn.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        log(f"database {name} made (dropped at the end)")
        return urllib.parse.urlsplit(self.admin_url)._replace(path=f"/{name}").geturl()

    def drop_databases(self) -> None:
        for name in list(self.databases):
            self.conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            self.databases.remove(name)

    def close(self) -> None:
        try:
            self.drop_databases()
        finally:
            self.conn.close()

    def backends(self, url: str) -> dict[int, tuple[float, str]]:
        """CPU seconds so far and last statement of each backend serving ``url``'s
        database (the servers' write, read and LISTEN connections)."""
        name = urllib.parse.urlsplit(url).path.lstrip("/")
        rows = self.conn.execute(
            "SELECT pid, query FROM pg_stat_activity WHERE datname = %s", (name,)
        ).fetchall()
        return {pid: (cpu_seconds(pid), query or "") for pid, query in rows}

    def position(self, url: str) -> tuple[int, int, int]:
        """(WAL bytes written so far, next transaction id: cluster-wide counters;
        transactions committed in ``url``'s database, as the statistics show them: a
        busy backend reports them at most once a second)."""
        name = urllib.parse.urlsplit(url).path.lstrip("/")
        row = self.conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint, "
            "pg_snapshot_xmax(pg_current_snapshot())::text::bigint, "
            "(SELECT xact_commit FROM pg_stat_database WHERE datname = %s)",
            (name,),
        ).fetchone()
        return int(row[0]), int(row[1]), int(row[2] or 0)


# -- one configuration ---------------------------------------------------------------------
class Config:
    """The servers, SDK clients and swarms of one configuration."""

    def __init__(
        self, kind: str, work: Path, database: str | None, env: dict[str, str] | None = None
    ) -> None:
        self.kind = kind
        self.work = work
        self.database = database
        self.env = env  # the servers' environment (a baseline's PYTHONPATH)
        self.servers: list[Any] = []
        self.clients: list[Any] = []
        self.swarms: list[Swarm] = []

    def start(self, n_servers: int) -> str:
        """Start the servers (replicas share the first one's certificate); return the
        benchmark user's token."""
        from cloudremotecontrol.master.client import Client
        from cloudremotecontrol.master.localrun import ServerProcess

        first = ServerProcess(self.work / "r0", database=self.database, env=self.env)
        first.init()
        self.servers.append(first)
        for i in range(1, n_servers):
            self.servers.append(first.replica(self.work / f"r{i}"))
        for s in self.servers:
            s.start()
        token = first.add_user("bench")
        self.clients = [Client(s.url, token, s.fingerprint) for s in self.servers]
        log(f"{self.kind}: server pids {[s.proc.pid for s in self.servers]}")
        return token

    def server_cpu(self) -> float:
        return sum(cpu_seconds(s.proc.pid) for s in self.servers)

    def agents_cpu(self) -> float:
        return sum(cpu_seconds(p.pid, children=True) for sw in self.swarms for p in sw.procs)

    def close(self) -> None:
        for sw in self.swarms:
            sw.stop()
        self.swarms = []
        for c in self.clients:
            c.close()
        self.clients = []
        for s in self.servers:
            s.stop()
        self.servers = []


class Sample:
    """CPU of servers, database backends and agents, WAL and xids at one moment."""

    def __init__(self, cfg: Config, pg: Postgres | None) -> None:
        self.t = time.perf_counter()
        self.server = cfg.server_cpu()
        self.agents = cfg.agents_cpu()
        self.backends = pg.backends(cfg.database) if pg and cfg.database else {}
        self.wal, self.xid, self.commits = (
            pg.position(cfg.database) if pg and cfg.database else (0, 0, 0)
        )

    def since(self, before: Sample) -> dict[str, Any]:
        per_backend = {
            pid: (cpu - before.backends.get(pid, (0.0, ""))[0], query)
            for pid, (cpu, query) in self.backends.items()
        }
        return {
            "seconds": self.t - before.t,
            "server": self.server - before.server,
            "agents": self.agents - before.agents,
            "postgres": sum(c for c, _ in per_backend.values()),
            "listen": sum(c for c, q in per_backend.values() if q.startswith("LISTEN")),
            "backends": len(per_backend),
            "wal": self.wal - before.wal,
            "xids": self.xid - before.xid,
            "commits": self.commits - before.commits,
        }


# -- the benchmark ------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="crc-bench-replicas-"))
        self.pg: Postgres | None = None
        self.pg_settings = ""
        self.cfg: Config | None = None
        self.rows: list[dict[str, Any]] = []
        self.load_start = os.getloadavg()[0]
        self.baseline_env: dict[str, str] | None = None
        if args.baseline:
            src = self.work / "baseline"
            src.mkdir()
            archive = subprocess.run(
                ["git", "-C", str(HERE.parent), "archive", args.baseline, "src"],
                check=True,
                capture_output=True,
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
            self.baseline_env = {"PYTHONPATH": str(src / "src")}

    def close(self) -> None:
        if self.cfg is not None:
            self.cfg.close()
            self.cfg = None
        if self.pg is not None:
            self.pg.close()
            self.pg = None
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)

    def run(self, kind: str, baseline: bool = False) -> None:
        n = self.args.agents
        database = None
        if kind != "sqlite":
            if self.pg is None:
                self.pg = Postgres(self.args.postgres)
                self.pg_settings = self.pg.settings()
            database = self.pg.create_database()
        name = f"{kind}-baseline" if baseline else kind
        env = self.baseline_env if baseline else None
        cfg = self.cfg = Config(kind, self.work / name, database, env)
        try:
            cfg.start(2 if kind == "replicas" else 1)
            t = time.perf_counter()
            out = cfg.clients[0].create_group("bench", [f"s{i:04d}" for i in range(n)])
            keys = [(m["name"], m["key"]) for m in out["machines"]]
            workers = max(1, min(self.args.workers, (n + 99) // 100))
            # Replicas: agents alternate between them, each replica's share in its own
            # swarm processes (at least one each).
            shares = [keys[i :: len(cfg.servers)] for i in range(len(cfg.servers))]
            per = max(1, workers // len(cfg.servers))
            for i, (srv, share) in enumerate(zip(cfg.servers, shares, strict=True)):
                if share:
                    cfg.swarms.append(
                        Swarm(
                            self.work / name / f"swarm-r{i}",
                            srv.url,
                            srv.fingerprint,
                            share,
                            per,
                            self.args.wave,
                            self.args.connect_timeout,
                            self.args.fold_window,
                        )
                    )
            for sw in cfg.swarms:
                sw.wait_connected(self.args.connect_timeout + 120)
            connected = self.wait_ready(cfg, n, 60)
            log(
                f"{kind}: {sum(sw.connected for sw in cfg.swarms)} agents connected in "
                f"{sum(len(sw.procs) for sw in cfg.swarms)} processes after "
                f"{time.perf_counter() - t:.1f} s (enroll included); {connected} ready"
            )
            if connected != n:
                raise RuntimeError(f"{kind}: only {connected}/{n} agents ready")
            row = {
                "kind": kind,
                "baseline": baseline,
                "agents": n,
                "connected": connected,
                "swarm_procs": sum(len(sw.procs) for sw in cfg.swarms),
            }
            row.update(self.measure_jobs(cfg, n))
            row.update(self.measure_messages(cfg))
            self.rows.append(row)
            log(
                f"{kind}: job median {row['job_s']:.3f} s "
                f"({', '.join(f'{x:.3f}' for x in row['job_all'])}); "
                f"{row['msg_rate']:.0f} messages/s"
            )
        finally:
            cfg.close()
            self.cfg = None
            if self.pg is not None:
                self.pg.drop_databases()

    def wait_ready(self, cfg: Config, n: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            machines = cfg.clients[0].group("bench")["machines"]
            ready = sum(m["state"] == "ready" for m in machines)
            if ready == n or time.monotonic() > deadline:
                return ready
            time.sleep(0.2)

    def measure_jobs(self, cfg: Config, n: int) -> dict[str, Any]:
        for c in cfg.clients:  # warm-up: connections, server caches, each replica
            sdk_job(c, "bench", n)
        before = Sample(cfg, self.pg)
        runs = [
            sdk_job(cfg.clients[i % len(cfg.clients)], "bench", n) for i in range(self.args.runs)
        ]
        d = Sample(cfg, self.pg).since(before)
        k = max(1, len(runs))
        return {
            "job_s": statistics.median(runs),
            "job_all": runs,
            "job_cpu": {key: d[key] / k for key in COUNTERS},
            "job_backends": d["backends"],
        }

    def measure_messages(self, cfg: Config) -> dict[str, Any]:
        a = self.args
        cmd = {
            "cmd": "emit",
            "type": "user.bench",
            "warmup": a.warmup,
            "seconds": a.seconds,
            "window": a.window,
            "drain": 30,
        }
        for sw in cfg.swarms:
            sw.send(cmd)
        time.sleep(a.warmup)
        before = Sample(cfg, self.pg)
        time.sleep(a.seconds)
        d = Sample(cfg, self.pg).since(before)
        replies = [r for sw in cfg.swarms for r in sw.replies(a.warmup + a.seconds + 60)]
        if any("error" in r for r in replies):
            raise RuntimeError(f"swarm: {replies}")
        acked = sum(r["acked"] for r in replies)
        rate = sum(r["acked"] / r["seconds"] for r in replies if r["seconds"] > 0)
        pending = sum(r["pending"] for r in replies)
        if pending:
            log(f"{cfg.kind}: {pending} messages still unacknowledged 30 s after the end")
        per_k = 1000.0 / max(1.0, rate * d["seconds"])
        return {
            "msg_rate": rate,
            "msg_acked": acked,
            "msg_pending": pending,
            "msg_senders": sum(r["senders"] for r in replies),
            "msg_cpu": {key: d[key] * per_k for key in COUNTERS},
        }


# -- report -------------------------------------------------------------------------------
def label(row: dict[str, Any], baseline: str = "") -> str:
    return CONFIGS[row["kind"]] + (f" ({baseline or 'baseline'})" if row.get("baseline") else "")


def _ratio(new: dict[str, Any], old: dict[str, Any], key: str) -> str:
    return f"{new['msg_cpu'][key] / max(old['msg_cpu'][key], 1e-9):.2f}x"


def ab(rows: list[dict[str, Any]], baseline: str) -> list[str]:
    """This tree against the baseline, per configuration run with both."""
    out = []
    for r in rows:
        old = next((b for b in rows if b.get("baseline") and b["kind"] == r["kind"]), None)
        if r.get("baseline") or old is None:
            continue

        out.append(
            f"- {CONFIGS[r['kind']]}, this tree / {baseline}: messages/s "
            f"{r['msg_rate']:.0f} / {old['msg_rate']:.0f} = "
            f"{r['msg_rate'] / max(old['msg_rate'], 1e-9):.2f}x; CPU per 1,000 messages, "
            f"server {r['msg_cpu']['server']:.3f} / {old['msg_cpu']['server']:.3f} s = "
            f"{_ratio(r, old, 'server')}, PostgreSQL backends "
            f"{r['msg_cpu']['postgres']:.3f} / {old['msg_cpu']['postgres']:.3f} s = "
            f"{_ratio(r, old, 'postgres')}; job CPU server {r['job_cpu']['server']:.3f} / "
            f"{old['job_cpu']['server']:.3f} s, PostgreSQL {r['job_cpu']['postgres']:.3f} / "
            f"{old['job_cpu']['postgres']:.3f} s."
        )
    return out


def _cpu(value: float, present: bool = True) -> str:
    return f"{value:.3f} s" if present else "-"


def table(rows: list[dict[str, Any]], baseline: str = "") -> str:
    head = [
        "configuration",
        "agents",
        "Client.run (median)",
        "CPU/job server",
        "CPU/job postgres",
        "messages/s",
        "CPU/1k msg server",
        "CPU/1k msg postgres",
    ]
    body = []
    for r in rows:
        pg = r["kind"] != "sqlite"
        body.append(
            [
                label(r, baseline),
                f"{r['connected']}/{r['agents']}",
                f"{r['job_s']:.3f} s",
                _cpu(r["job_cpu"]["server"]),
                _cpu(r["job_cpu"]["postgres"], pg),
                f"{r['msg_rate']:.0f}",
                _cpu(r["msg_cpu"]["server"]),
                _cpu(r["msg_cpu"]["postgres"], pg),
            ]
        )
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [head, ["-" * w for w in widths], *body]
    )


def details(rows: list[dict[str, Any]], baseline: str = "") -> list[str]:
    out = []

    def pg(c: dict[str, float], commits: bool) -> str:
        # Commits only under steady load: idle backends report theirs 10 s later.
        return (
            f" + PostgreSQL backends {c['postgres']:.3f} (of which LISTEN "
            f"{c['listen']:.3f}) s; "
            + (f"{c['commits']:.0f} commits, " if commits else "")
            + f"{c['xids']:.0f} xids (one per savepoint that wrote), "
            f"{c['wal'] / 1024:.0f} KiB of WAL"
        )

    for r in rows:
        j, m = r["job_cpu"], r["msg_cpu"]
        on_pg = r["kind"] != "sqlite"
        line = (
            f"- {label(r, baseline)}: per job, CPU server {j['server']:.3f} + agents "
            f"(with their `echo`) {j['agents']:.3f}"
        )
        line += pg(j, False) if on_pg else " s"
        line += f". Per 1,000 messages, CPU server {m['server']:.3f} + agents {m['agents']:.3f}"
        line += pg(m, True) if on_pg else " s"
        line += f". {r['msg_acked']} messages acknowledged from {r['msg_senders']} senders"
        if r["msg_pending"]:
            line += f", {r['msg_pending']} still unacknowledged 30 s later"
        out.append(line + ".")
    return out


def write_results(
    path: Path,
    command: str,
    text: str,
    rows: list[dict[str, Any]],
    args: argparse.Namespace,
    load: list[float],
    pg_settings: str,
) -> None:
    base = args.baseline or ""
    runs = "\n".join(
        f"- {label(r, base)}: {', '.join(f'{x:.3f}' for x in r['job_all'])}" for r in rows
    )
    procs = ", ".join(f"{label(r, base)} {r['swarm_procs']}" for r in rows)
    versus = ab(rows, base)
    abtext = (
        f"""
A/B in this run: the servers of `{base}` (baseline, run first) and of this tree, one
after the other on the same machine:

{chr(10).join(versus)}
"""
        if versus
        else ""
    )
    db = f"{pg_settings}, on the same machine." if pg_settings else "No PostgreSQL run."
    body = f"""{BEGIN}
Produced by `{command}` on {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}.

Machine: {machine_info()}. {db}
Load average (1 min): {load[0]:.2f} before, {load[1]:.2f} after; servers, database and
agents share the same cores, so compare medians and CPU rather than wall time.
{args.agents} simulated agents (swarm processes: {procs}). Job: median of {args.runs}
`Client.run` after one warm-up run per replica. Messages: {args.seconds:g} s after a
{args.warmup:g} s warm-up, at most {args.window} unacknowledged per agent.

```
{text}
```

CPU from /proc (PostgreSQL: the backends of the benchmark's database). Commits (during
the messages only): that database's statistics, reads included (a busy backend reports
them once a second, so they lag a little); xids and WAL: cluster-wide counters.

{chr(10).join(details(rows, base))}
{abtext}
All job runs (seconds; replicas: submitted through replica 1, 2, 1, ...):

{runs}
{END}"""
    intro = """## Replicas benchmark (`replicas.py`)

The same swarm of simulated agents (the real `Agent` class, as in the fan-out benchmark)
against one server on SQLite, one server on PostgreSQL, and two server replicas sharing
one PostgreSQL database and certificate. With replicas, half of the agents connect to
each, and jobs are submitted and followed alternately through each replica, so every job
crosses between replicas through `NOTIFY` (half of its targets are held by the other
replica, and half of its results come back from there). *Client.run*: wall time of
`Client.run(G, "all", argv=["echo", "hi"])` on a warm SDK client until every agent's
final status reached the master. *messages/s*: every agent sends `user.bench` messages
to the master through its real `Agent.emit` (committed to its SQLite outbox, then sent
over its WebSocket) with at most a few unacknowledged each; counted are the messages the
server acknowledged, which it does only once the message and its `message` event are
committed to the database: the server's durable message path, the same one every
`job.output`, `job.result` or `progress` takes. CPU per job and per 1,000 messages is
user + system time of the server process(es) and of the benchmark database's
PostgreSQL backends.

"""
    write_section(
        path, BEGIN, END, body, lambda old: old.rstrip("\n") + "\n\n" + intro + body + "\n"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--agents", type=int, default=1000, help="simulated agents (1..1000)")
    p.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help=f"which configurations, comma separated ({', '.join(CONFIGS)})",
    )
    p.add_argument("--runs", type=int, default=7, help="timed jobs per configuration")
    p.add_argument(
        "--seconds", type=float, default=10.0, help="duration of the message measurement"
    )
    p.add_argument(
        "--warmup", type=float, default=2.0, help="messages sent before the measurement starts"
    )
    p.add_argument(
        "--window", type=int, default=4, help="unacknowledged messages allowed per agent"
    )
    p.add_argument(
        "--baseline",
        default="",
        metavar="COMMIT",
        help="also run each PostgreSQL configuration with the servers of this commit"
        " (git archive of its src), first: an A/B in one run",
    )
    p.add_argument(
        "--postgres",
        default=ADMIN_URL,
        help="admin URL of a PostgreSQL on this machine (default: $CRC_TEST_POSTGRES"
        " or postgres@127.0.0.1:5432, trust auth)",
    )
    add_swarm_options(p, connect_timeout=180.0, max_seconds=1500, out=HERE / "RESULTS.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kinds = [k.strip() for k in args.configs.split(",") if k.strip()]
    if not kinds or any(k not in CONFIGS for k in kinds):
        raise SystemExit(f"replicas: --configs takes {', '.join(CONFIGS)}")
    if not 1 <= args.agents <= 1000:
        raise SystemExit("replicas: --agents must be 1..1000 (one group)")
    if args.runs < 1 or args.seconds <= 0 or args.window < 1:
        raise SystemExit("replicas: --runs, --seconds and --window must be positive")
    if any(k != "sqlite" for k in kinds) and not _loopback(args.postgres):
        raise SystemExit("replicas: --postgres must be on this machine (loopback only)")
    raise_fd_limit()
    bench = Bench(args)

    def work() -> None:
        for kind in kinds:
            if args.baseline and kind != "sqlite":
                bench.run(kind, baseline=True)
            bench.run(kind)

    # bench.close() waits at most 15 s per swarm process and 10 s per server.
    guarded("replicas", args.max_seconds, work, bench.close)
    text = table(bench.rows, args.baseline)
    print(text)
    print("\n".join(details(bench.rows, args.baseline) + ab(bench.rows, args.baseline)))
    if not args.no_write:
        rel = os.path.relpath(Path(__file__).resolve(), Path.cwd())
        command = " ".join([".venv/bin/python", rel, *(argv if argv is not None else sys.argv[1:])])
        write_results(
            Path(args.out),
            command,
            text,
            bench.rows,
            args,
            [bench.load_start, os.getloadavg()[0]],
            bench.pg_settings,
        )
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
