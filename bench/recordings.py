"""Shell recordings: what recording a large session costs the server, and reading it back.

One `crc server run` process (SQLite, TLS, 127.0.0.1) and one `crc agent run` process;
the master is this process (the SDK). A shell prints ``--mib`` MiB of random data in
base64 (so the recording is about that size plus its JSON), then:

* the server's CPU-seconds for the session (its recording included) and the growth of
  its peak RSS (``VmHWM``) over the session;
* how the recording was written: chunks in the database, the largest (recordings in
  the database: ops/recordings.py), or one file (before);
* reading it back (``GET /v1/sessions/{id}/recording``): the server's CPU-seconds and
  the growth of its peak RSS, and that the replay gives back the bytes received.

Each figure is the median of ``--runs`` sessions, each on a server of its own.

``--base DIR`` runs the same measurement first with the code of the checkout ``DIR``
(``PYTHONPATH=DIR/src``, another process), for an A/B in one run.

    flock /tmp/crc-bench.lock .venv/bin/python bench/recordings.py \
        [--mib 32] [--runs 3] [--base DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import cpu_seconds, log, machine_info, mib, one_machine, rss_kib, write_section  # noqa: E402

BEGIN, END = "<!-- recordings.py: begin -->", "<!-- recordings.py: end -->"
NOTE = (
    "*before*: the recording is one file in the server's data directory, read whole and "
    "copied into its JSON answer when served; *after*: chunks of at most 256 KiB in the "
    "database, each its own write as the session goes, and the answer streamed one chunk "
    'at a time (docs/streams.md, "Recordings"). Peak RSS growth is of the server '
    "process (`VmHWM`), over the session, then over the request that reads it."
)


def _replay(cast: str) -> bytes:
    out = bytearray()
    for line in cast.splitlines()[1:]:
        event = json.loads(line)
        if event[1] == "o":
            out += str(event[2]).encode("utf-8", "surrogateescape")
    return bytes(out)


def measure(size_mib: int) -> dict[str, Any]:
    from cloudremotecontrol.master.client import Client

    with tempfile.TemporaryDirectory() as d, one_machine(Path(d)) as (server, token):
        assert server.proc is not None
        pid = server.proc.pid
        c = Client(server.url, token, server.fingerprint)
        script = f"head -c {size_mib << 20} /dev/urandom | base64 -w 76"
        cpu0, hwm0 = cpu_seconds(pid), rss_kib(pid, "VmHWM")
        t0 = time.monotonic()
        received = bytearray()
        with c.shell("bench", "m", argv=["sh", "-c", script]) as s:
            while chunk := s.recv(120):
                received += chunk
            sid = s.id
        session_s = time.monotonic() - t0
        sessions = [x for x in c.sessions("bench") if x["stream"] == sid]
        cpu1, hwm1 = cpu_seconds(pid), rss_kib(pid, "VmHWM")
        cast = c.recording(sid)
        cpu2, hwm2 = cpu_seconds(pid), rss_kib(pid, "VmHWM")
        db = server.data_dir / "crc.db"
        with sqlite3.connect(db) as conn:
            try:
                chunks, largest = conn.execute(
                    "SELECT COUNT(*), MAX(LENGTH(data)) FROM recording_chunks WHERE stream = ?",
                    (sid,),
                ).fetchone()
            except sqlite3.OperationalError:
                chunks, largest = 0, 0
        files = list((server.data_dir / "recordings").glob("*.cast"))
        c.close()
        return {
            "received": len(received),
            "recorded": bool(sessions and sessions[0]["recorded"]),
            "cast": len(cast),
            "exact": _replay(cast) == bytes(received),
            "session_s": session_s,
            "session_cpu": cpu1 - cpu0,
            "session_hwm_kib": hwm1 - hwm0,
            "read_cpu": cpu2 - cpu1,
            "read_hwm_kib": hwm2 - hwm1,
            "chunks": chunks,
            "largest": largest or 0,
            "files": len(files),
        }


def median_of(size_mib: int, runs: int) -> dict[str, Any]:
    """Each figure's median over ``runs`` sessions (each on a server of its own)."""
    results = [measure(size_mib) for _ in range(runs)]
    out = dict(results[0])
    for key, value in out.items():
        if isinstance(value, bool):
            out[key] = all(r[key] for r in results)
        elif isinstance(value, (int, float)):
            out[key] = statistics.median(r[key] for r in results)
    return out


def _rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    where = (
        f"{r['chunks']} chunks in the database, largest {r['largest'] / 1024:.0f} KiB"
        if r["chunks"]
        else f"{r['files']} file on the server's disk"
    )
    return [
        (
            "session output received / recording",
            f"{mib(r['received'] / 1024):.1f} / "
            f"{mib(r['cast'] / 1024):.1f} MiB, replay exact: {r['exact']}",
        ),
        ("written as", where),
        ("server CPU for the session", f"{r['session_cpu']:.2f} s"),
        ("server peak RSS growth, session", f"{mib(r['session_hwm_kib']):.1f} MiB"),
        ("server CPU to serve the recording", f"{r['read_cpu']:.2f} s"),
        ("server peak RSS growth, serving it", f"{mib(r['read_hwm_kib']):.1f} MiB"),
        ("session wall time (shared machine)", f"{r['session_s']:.1f} s"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3, help="medians of this many sessions")
    ap.add_argument("--base", help="a checkout to measure first (before)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON only")
    ap.add_argument("--results", default=str(HERE / "RESULTS.md"))
    args = ap.parse_args()
    if args.json:
        print(json.dumps(median_of(args.mib, args.runs)))
        return
    runs: list[tuple[str, dict[str, Any]]] = []
    if args.base:
        log(f"before: {args.base}")
        env = {**os.environ, "PYTHONPATH": str(Path(args.base).resolve() / "src")}
        out = subprocess.run(
            [sys.executable, __file__, "--mib", str(args.mib), "--runs", str(args.runs), "--json"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        runs.append(("before", json.loads(out.stdout.strip().splitlines()[-1])))
    log("this tree")
    runs.append(("after" if args.base else "this tree", median_of(args.mib, args.runs)))
    if args.base:
        commit = subprocess.run(
            ["git", "-C", args.base, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        runs[0] = (f"before ({commit or args.base})", runs[0][1])
    names = [label for label, _ in runs]
    table = [("", " | ".join(names))]
    for i, (what, _) in enumerate(_rows(runs[0][1])):
        table.append((what, " | ".join(_rows(r)[i][1] for _, r in runs)))
    width = max(len(a) for a, _ in table)
    text = "\n".join(f"{a:<{width}}  {b}" for a, b in table)
    print(text)
    command = "flock /tmp/crc-bench.lock .venv/bin/python bench/recordings.py " + " ".join(
        sys.argv[1:]
    )
    body = (
        f"{BEGIN}\n## Shell recordings\n\nProduced by `{command.strip()}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n{machine_info()}\n\n"
        f"```\n{text}\n```\n\n{NOTE}\n{END}"
    )
    write_section(
        Path(args.results), BEGIN, END, body, lambda old: old.rstrip() + "\n\n" + body + "\n"
    )


if __name__ == "__main__":
    main()
