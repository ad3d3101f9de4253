"""SQLite writer thread CPU per folded job result, by write batch size (one process).

    .venv/bin/python bench/writer_batches.py [--machines 1000] [--jobs 4] [--sizes 1,5,15,50,200]

A real ``SqliteStore`` in a temporary directory, ``--machines`` enrolled and connected
machines, then ``--jobs`` jobs to all of them; each machine's result comes back as the
server applies it (``delivery.apply_agent_message`` with the job's output and the ack
of its ``job.run`` folded in, as an agent with a fold window sends it), handed to the
writer ``size`` at a time so that each batch commits ``size`` results. Prints the
writer thread's CPU (/proc, user + system) per result, the first job left out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

from cloudremotecontrol.protocol.messages import Envelope
from cloudremotecontrol.server.ops import delivery, enrollment, groups, jobs, users
from cloudremotecontrol.server.store.sqlite import SqliteStore


def thread_cpu(tid: int) -> float:
    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(work: Path, machines: int, jobs_n: int, size: int) -> tuple[float, int]:
    store = SqliteStore(str(work / "crc.db"))
    await store.start()
    store.commit_window = 0.0  # batches of exactly ``size``: no gathering by time
    try:
        token = await store.write(users.create_user, "alice")
        user = await store.read(users.authenticate_master, token)
        names = [{"name": f"m{i}"} for i in range(machines)]
        out = await store.write(groups.create_group, user["user_id"], "lab", names)

        async def connect(m: dict[str, Any]) -> dict[str, Any]:
            cred = await store.write(enrollment.enroll, m["key"], "127.0.0.1")
            row = await store.read(enrollment.authenticate_machine, cred["credential"])
            await store.write(delivery.machine_connected, row["id"], True, "127.0.0.1", "r1")
            return dict(row) | {"name": m["name"]}

        rows: list[dict[str, Any]] = []
        for i in range(0, machines, 50):
            rows += await asyncio.gather(*(connect(m) for m in out["machines"][i : i + 50]))
        assert store._writer is not None
        tid = store._writer.native_id or 0
        seq = dict.fromkeys((r["id"] for r in rows), 0)
        cpu, batches = 0.0, 0
        for j in range(jobs_n):
            job = await store.write(jobs.create_job, user, "lab", "all", {"argv": ["echo"]})
            run_seq = {mid: s for mid, s, _ in job["deliveries"]}
            before, batches_before = thread_cpu(tid), store.batches
            for i in range(0, machines, size):
                writes = []
                for r in rows[i : i + size]:
                    seq[r["id"]] += 1
                    body = {
                        "job_id": job["job_id"],
                        "status": "succeeded",
                        "exit_code": 0,
                        "started": True,
                        "output": [["stdout", "hi\n"]],
                    }
                    raw = Envelope.make("lab", r["name"], "master", "job.result", body).to_dict()
                    writes.append(
                        store.write(
                            delivery.apply_agent_message,
                            r["id"],
                            seq[r["id"]],
                            raw,
                            run_seq[r["id"]],
                        )
                    )
                for res in await asyncio.gather(*writes):
                    assert res["receipt"] == "new", res
            if j:  # the first job warms the caches
                cpu += thread_cpu(tid) - before
                batches += store.batches - batches_before
        return cpu / (jobs_n - 1) / machines, batches // (jobs_n - 1)
    finally:
        await store.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--machines", type=int, default=1000)
    p.add_argument("--jobs", type=int, default=4)
    p.add_argument("--sizes", default="1,5,15,50,200")
    args = p.parse_args()
    print("batch size  commits per job  writer CPU per result")
    for size in [int(s) for s in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory(prefix="crc-writer-") as d:
            per, commits = asyncio.run(measure(Path(d), args.machines, max(args.jobs, 2), size))
        print(f"{size:>10}  {commits:>15}  {per * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
