"""Chaos: random ``kill -9`` of the server and of agents while jobs, pushes and messages
flow; then what was acknowledged is checked.

    .venv/bin/python bench/chaos.py                   # 120 kills, writes RESULTS.md
    .venv/bin/python bench/chaos.py --kills 10 --no-write

One ``crc server run`` (SQLite, TLS, 127.0.0.1) and ``--agents`` real ``crc agent run``
processes, each restarted on its own state directory after it is killed (the server on
its data directory and port). While a killer thread sends SIGKILL to one of them at
random every 0.5-2.5 s:

* the master starts jobs (``sh -c 'echo $CRC_JOB_ID >> runs-$CRC_MACHINE'``): a job
  the server answered 201 is *acknowledged*;
* the master pushes a small file to a machine;
* the master sends ``user.down`` messages to the machines (acknowledged: 201);
* each machine's scripts send ``user.up`` messages with ``crc agent emit``
  (acknowledged: the command exited 0, i.e. the agent stored it).

Then the killing stops, everything is brought up, and after the system settled:

* every acknowledged job ran **at most once** on each target (its id appears at most
  once in that machine's ``runs`` file), and none of any job ran twice;
* every acknowledged ``user.up`` message is in the group's events, once;
* every acknowledged ``user.down`` message is in its machine's ``agent.db``, once.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import guarded, log, machine_info, write_section


class Fleet:
    def __init__(self, work: Path, n: int) -> None:
        from cloudremotecontrol.master.localrun import AgentProcess, ServerProcess

        self.work = work
        self.server = ServerProcess(work / "srv").start()
        self.token = self.server.add_user("chaos")
        self.names = [f"m{i}" for i in range(n)]
        client = self.client()
        keys = {m["name"]: m["key"] for m in client.create_group("chaos", self.names)["machines"]}
        client.close()
        self.agents = {
            name: AgentProcess(
                work / name, self.server.url, keys[name], self.server.fingerprint
            ).start()
            for name in self.names
        }
        self.lock = threading.Lock()  # kills and restarts one at a time
        self.down: set[str] = set()

    def client(self) -> Any:
        from cloudremotecontrol.master.client import Client

        return Client(self.server.url, self.token, self.server.fingerprint, timeout=10)

    def kill(self, who: str) -> None:
        with self.lock:
            if who == "server":
                self.server.kill(signal.SIGKILL)
            else:
                self.agents[who].kill(signal.SIGKILL)
            self.down.add(who)

    def restart(self, who: str) -> None:
        with self.lock:
            if who == "server":
                self.server.start(timeout=60)
            else:
                self.agents[who].key = None  # enrolled: the state dir has the credential
                self.agents[who].start()
            self.down.discard(who)

    def stop(self) -> None:
        for a in self.agents.values():
            a.stop()
        self.server.stop()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from cloudremotecontrol.errors import CrcError

    work = Path(tempfile.mkdtemp(prefix="crc-chaos-"))
    runs_dir = work / "runs"
    runs_dir.mkdir()
    result: dict[str, Any] = {}
    fleet: Fleet | None = None
    rng = random.Random(args.seed)

    def body() -> None:
        nonlocal fleet
        fleet = Fleet(work, args.agents)
        f = fleet
        wait_ready(f, 60)
        stop = threading.Event()
        acked_jobs: list[tuple[str, list[str]]] = []
        acked_down: list[tuple[str, int]] = []
        acked_up: list[tuple[str, int]] = []
        counts: Counter[str] = Counter()
        payload = work / "payload.txt"
        payload.write_text("pushed during chaos\n")

        def jobs() -> None:
            c = f.client()
            n = 0
            while not stop.is_set():
                to = rng.choice([*f.names, "all"])
                try:
                    job = c.start_job(
                        "chaos",
                        to,
                        argv=["sh", "-c", f'echo "$CRC_JOB_ID" >> {runs_dir}/runs-"$CRC_MACHINE"'],
                    )
                    acked_jobs.append((job["job_id"], job["targets"]))
                    counts["jobs acknowledged"] += 1
                except (CrcError, OSError):
                    counts["jobs refused (server down)"] += 1
                n += 1
                if n % 5 == 0:
                    try:
                        c.push("chaos", rng.choice(f.names), str(payload), f"{work}/pushed-{n}.txt")
                        counts["pushes acknowledged"] += 1
                    except (CrcError, OSError):
                        counts["pushes refused (server down)"] += 1
                time.sleep(0.05)
            c.close()

        def down_messages() -> None:
            c = f.client()
            n = 0
            while not stop.is_set():
                to = rng.choice(f.names)
                n += 1
                try:
                    c.send_message("chaos", to, "user.down", {"n": n})
                    acked_down.append((to, n))
                    counts["master messages acknowledged"] += 1
                except (CrcError, OSError):
                    counts["master messages refused (server down)"] += 1
                time.sleep(0.05)
            c.close()

        def up_messages(name: str) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                out = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "cloudremotecontrol",
                        "agent",
                        "emit",
                        "user.up",
                        json.dumps({"n": n, "m": name}),
                        "--state-dir",
                        str(work / name),
                    ],
                    capture_output=True,
                    timeout=60,
                    check=False,
                )
                if out.returncode == 0:
                    acked_up.append((name, n))
                    counts["machine messages acknowledged"] += 1
                else:
                    counts["machine messages refused (agent down)"] += 1
                    time.sleep(0.2)

        def killer() -> None:
            for i in range(args.kills):
                if stop.is_set():
                    return
                time.sleep(rng.uniform(0.5, 2.5))
                who = "server" if rng.random() < args.server_share else rng.choice(f.names)
                f.kill(who)
                counts[f"kill -9 {'server' if who == 'server' else 'agent'}"] += 1
                time.sleep(rng.uniform(0.0, 1.0))
                f.restart(who)
                if (i + 1) % 20 == 0:
                    log(f"{i + 1} kills")

        threads = [threading.Thread(target=jobs), threading.Thread(target=down_messages)]
        threads += [threading.Thread(target=up_messages, args=(n,)) for n in f.names]
        for t in threads:
            t.start()
        t0 = time.perf_counter()
        killer()
        stop.set()
        for t in threads:
            t.join(120)
        result["chaos_seconds"] = time.perf_counter() - t0
        log("killing done; letting the system settle")
        wait_ready(f, 120)
        result.update(verify(f, runs_dir, acked_jobs, acked_up, acked_down, args.settle))
        result["counts"] = dict(counts)
        result["tracebacks"] = f.server.log_path.read_text(errors="replace").count("Traceback")

    def close() -> None:
        if fleet is not None:
            fleet.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    guarded("chaos", args.max_seconds, body, close)
    return result


def wait_ready(f: Fleet, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    c = f.client()
    try:
        while True:
            try:
                states = {m["name"]: m["state"] for m in c.group("chaos")["machines"]}
                if all(s == "ready" for s in states.values()):
                    return
            except OSError:
                pass
            except Exception as exc:  # noqa: BLE001 -- the server may still be starting
                states = {"error": str(exc)}
            if time.monotonic() > deadline:
                raise SystemExit(f"machines not ready after the chaos: {states}")
            time.sleep(0.5)
    finally:
        c.close()


def verify(
    f: Fleet,
    runs_dir: Path,
    acked_jobs: list[tuple[str, list[str]]],
    acked_up: list[tuple[str, int]],
    acked_down: list[tuple[str, int]],
    settle: float,
) -> dict[str, Any]:
    c = f.client()
    terminal = {"succeeded", "failed", "lost", "cancelled", "timed_out"}
    deadline = time.monotonic() + settle
    statuses: Counter[str] = Counter()
    # Every acknowledged job ends (succeeded, or lost if cut off by a kill).
    while True:
        statuses.clear()
        pending = 0
        for job_id, _ in acked_jobs:
            for t in c.job(job_id)["targets"]:
                statuses[t["status"]] += 1
                pending += t["status"] not in terminal
        if pending == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    # Messages up: in the group's events, each once.
    expected_up = Counter(acked_up)
    seen_up: Counter[tuple[str, int]] = Counter()
    while True:
        seen_up.clear()
        for ev in c.events("chaos"):
            d = ev["data"]
            if ev["type"] == "message" and d.get("type") == "user.up":
                seen_up[(d["body"]["m"], d["body"]["n"])] += 1
        if all(seen_up[k] >= 1 for k in expected_up) or time.monotonic() > deadline:
            break
        time.sleep(1)
    # Messages down: in each machine's agent.db.
    seen_down: Counter[tuple[str, int]] = Counter()
    while True:
        seen_down.clear()
        for name in f.names:
            with sqlite3.connect(f.work / name / "agent.db", timeout=30) as db:
                for (env,) in db.execute("SELECT envelope FROM messages WHERE type='user.down'"):
                    seen_down[(name, json.loads(env)["body"]["n"])] += 1
        if all(seen_down[k] >= 1 for k in acked_down) or time.monotonic() > deadline:
            break
        time.sleep(1)
    c.close()
    runs: Counter[tuple[str, str]] = Counter()
    for path in runs_dir.glob("runs-*"):
        machine = path.name.removeprefix("runs-")
        for line in path.read_text().split():
            runs[(machine, line)] += 1
    acked_targets = [(m, j) for j, targets in acked_jobs for m in targets]
    return {
        "job_targets": len(acked_targets),
        "job_statuses": dict(statuses),
        "ran_once": sum(1 for k in acked_targets if runs[k] == 1),
        "ran_never": sum(1 for k in acked_targets if runs[k] == 0),
        "ran_twice": sum(1 for v in runs.values() if v > 1),
        "up_acked": len(expected_up),
        "up_missing": sum(1 for k in expected_up if seen_up[k] == 0),
        "up_duplicated": sum(1 for k in expected_up if seen_up[k] > 1),
        "down_acked": len(acked_down),
        "down_missing": sum(1 for k in acked_down if seen_down[k] == 0),
        "down_duplicated": sum(1 for k in acked_down if seen_down[k] > 1),
    }


def table(r: dict[str, Any]) -> str:
    c = r["counts"]
    rows = [
        ("kill -9 of the server", c.get("kill -9 server", 0)),
        ("kill -9 of an agent", c.get("kill -9 agent", 0)),
        ("jobs acknowledged (201)", c.get("jobs acknowledged", 0)),
        ("jobs refused while the server was down", c.get("jobs refused (server down)", 0)),
        ("pushes acknowledged", c.get("pushes acknowledged", 0)),
        ("job targets acknowledged", r["job_targets"]),
        ("... ran exactly once", r["ran_once"]),
        ("... never ran (lost: cut off by a kill)", r["ran_never"]),
        ("... ran twice or more (must be 0)", r["ran_twice"]),
        ("master -> machine messages acknowledged", r["down_acked"]),
        ("... missing at the machine (must be 0)", r["down_missing"]),
        ("... stored twice at the machine", r["down_duplicated"]),
        ("machine -> master messages acknowledged", r["up_acked"]),
        ("... missing at the server (must be 0)", r["up_missing"]),
        ("... recorded twice at the server", r["up_duplicated"]),
        ("tracebacks in the server log", r["tracebacks"]),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{'what':<{width}}  {'count':>8}", f"{'-' * width}  {'-' * 8}"]
    lines += [f"{k:<{width}}  {v:>8,}" for k, v in rows]
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(r["job_statuses"].items()))
    lines += ["", f"final job target statuses: {statuses}"]
    lines.append(f"chaos phase: {r['chaos_seconds']:.0f} s")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=120)
    p.add_argument("--agents", type=int, default=4)
    p.add_argument("--server-share", type=float, default=0.4, help="share of kills on the server")
    p.add_argument("--settle", type=float, default=180, help="seconds to wait for the rest")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--max-seconds", type=int, default=3600)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    args = p.parse_args()
    r = run(args)
    text = table(r)
    print(text)
    good = (
        r["ran_twice"] == 0
        and r["up_missing"] == 0
        and r["down_missing"] == 0
        and r["tracebacks"] == 0
    )
    if not args.no_write:
        cmd = "`.venv/bin/python bench/chaos.py" + (
            f" --kills {args.kills}`" if args.kills != 120 else "`"
        )
        body = (
            "<!-- chaos.py: begin -->\n"
            f"Produced by {cmd} on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n"
            f"Machine: {machine_info()}.\n\n```\n{text}\n```\n<!-- chaos.py: end -->"
        )
        write_section(
            Path(args.out),
            "<!-- chaos.py: begin -->",
            "<!-- chaos.py: end -->",
            body,
            lambda old: old.rstrip() + "\n\n# Chaos: kill -9 while work flows\n\n" + body + "\n",
        )
    sys.exit(0 if good else 1)


if __name__ == "__main__":
    main()
