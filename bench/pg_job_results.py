"""Job results on the PostgreSQL store, driven directly (no server, no agents).

One group of ``--machines`` connected machines; ``--jobs`` times: one job to all of
them, then every machine's folded result (``job.result`` with ``started``, one line of
output and the ``msg.ack`` of its ``job.run``, as the agent sends a short job's) applied
with ``apply_agent_message``, all in flight at once, so the store's writer runs them in
full batches. Reported per result: the statements the writer thread sent, the times it
waited for the database (a fetch of a result, a pipeline sync: round trips), CPU of this
process (store and driver) and of the database's PostgreSQL backends.

    flock /tmp/crc-bench.lock .venv/bin/python bench/pg_job_results.py [--messages]
    PYTHONPATH=<other tree>/src .venv/bin/python bench/pg_job_results.py   # an A/B

Prints its figures; writes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
from collections import Counter
from typing import Any

import psycopg
from _common import log
from psycopg.conninfo import make_conninfo

from cloudremotecontrol.protocol.messages import Envelope
from cloudremotecontrol.server.ops import delivery, enrollment, groups, jobs, users
from cloudremotecontrol.server.store.postgres import PostgresStore

WRITER = "crc-pg-writer"


def _count(statements: Counter[str], waits: Counter[str]) -> None:
    """Count what the writer thread sends and waits for (patched into psycopg)."""
    execute, fetchone, fetchall = (
        psycopg.Cursor.execute,
        psycopg.Cursor.fetchone,
        psycopg.Cursor.fetchall,
    )
    sync = psycopg.Pipeline.sync

    def counted(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == WRITER:
            statements[str(query).split()[0].upper()] += 1
        return execute(self, query, *args, **kwargs)

    def one(self: Any) -> Any:
        if threading.current_thread().name == WRITER:
            waits["fetch"] += 1
        return fetchone(self)

    def every(self: Any) -> Any:
        if threading.current_thread().name == WRITER:
            waits["fetch"] += 1
        return fetchall(self)

    def synced(self: Any) -> Any:
        if threading.current_thread().name == WRITER:
            waits["sync"] += 1
        return sync(self)

    psycopg.Cursor.execute = counted  # type: ignore[method-assign]
    psycopg.Cursor.fetchone = one  # type: ignore[method-assign]
    psycopg.Cursor.fetchall = every  # type: ignore[method-assign]
    psycopg.Pipeline.sync = synced  # type: ignore[method-assign]


def _backend_cpu(admin: str, dbname: str) -> float:
    """CPU seconds of the PostgreSQL backends serving ``dbname`` (same machine)."""
    with psycopg.connect(admin, autocommit=True) as conn:
        pids = [
            r[0]
            for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s", (dbname,)
            ).fetchall()
        ]
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


async def run(args: argparse.Namespace) -> None:
    admin = args.postgres
    dbname = f"crc_bench_results_{os.getpid()}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    log(f"database {dbname} made (dropped at the end)")
    url = make_conninfo(admin, dbname=dbname)
    store = PostgresStore(url)
    await store.start()
    try:
        token = await store.write(users.create_user, "bench")
        user = await store.read(users.authenticate_master, token)
        names = [f"m{i:04d}" for i in range(args.machines)]
        made = await store.write(
            groups.create_group, user["user_id"], "lab", [{"name": n} for n in names]
        )
        ids: dict[str, str] = {}
        for m in made["machines"]:
            cred = await store.write(enrollment.enroll, m["key"], "127.0.0.1")
            row = await store.read(enrollment.authenticate_machine, cred["credential"])
            await store.write(delivery.machine_connected, row["id"], True, "127.0.0.1", "r1")
            ids[m["name"]] = row["id"]

        statements: Counter[str] = Counter()  # while results are applied
        waits: Counter[str] = Counter()
        seen: Counter[str] = Counter()  # everything the writer sent and waited for
        waited: Counter[str] = Counter()
        _count(seen, waited)
        cpu = wall = backends = 0.0
        batches = 0
        for k in range(1, args.jobs + 1):
            job = await store.write(jobs.create_job, user, "lab", "all", {"argv": ["true"]})
            job_id = job["job_id"]
            sent0, waited0, batches0 = seen.copy(), waited.copy(), store.batches
            pg0, cpu0, t0 = _backend_cpu(admin, dbname), time.process_time(), time.perf_counter()

            def result(name: str, k: int = k, job_id: str = job_id) -> Any:
                if args.messages:  # a user message, no ack: the messages' path
                    raw = Envelope.make("lab", name, "master", "user.bench", {"i": k}).to_dict()
                    return store.write(delivery.apply_agent_message, ids[name], k, raw)
                body = {"job_id": job_id, "status": "succeeded", "exit_code": 0}
                body |= {"started": True, "output": [["stdout", "hi\n"]]}
                raw = Envelope.make("lab", name, "master", "job.result", body).to_dict()
                return store.write(delivery.apply_agent_message, ids[name], k, raw, k)

            out = await asyncio.gather(*(result(n) for n in names))
            assert all(r["receipt"] == "new" and "error" not in r for r in out), out[:3]
            if k == 1:
                continue  # the first job warms up
            wall += time.perf_counter() - t0
            cpu += time.process_time() - cpu0
            backends += _backend_cpu(admin, dbname) - pg0
            statements += seen - sent0
            waits += waited - waited0
            batches += store.batches - batches0
        results = (args.jobs - 1) * args.machines
        print(
            f"{results} results ({args.jobs - 1} jobs x {args.machines} machines), "
            f"{batches} batches"
        )
        print(f"statements sent by the writer per result: {sum(statements.values()) / results:.3f}")
        print(
            "  by kind: " + ", ".join(f"{k} {v / results:.3f}" for k, v in statements.most_common())
        )
        print(
            f"waits (round trips) per result: {sum(waits.values()) / results:.3f}"
            f" (fetch {waits['fetch'] / results:.3f}, sync {waits['sync'] / results:.3f})"
        )
        print(
            f"CPU per result: process {cpu / results * 1000:.3f} ms, "
            f"PostgreSQL backends {backends / results * 1000:.3f} ms"
        )
        print(f"results/s: {results / wall:.0f}")
    finally:
        await store.close()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}"')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--machines", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=11, help="jobs (the first warms up)")
    parser.add_argument(
        "--messages",
        action="store_true",
        help="instead of results, user messages (no ack): the messages' path",
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "CRC_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
