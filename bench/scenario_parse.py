"""Reading a large scenario file: ``load_scenario`` time by file size, before and after.

    .venv/bin/python bench/scenario_parse.py [--sizes 0.25,0.5,1,2,3.5] [--runs 3] \\
        [--base DIR] [--no-write]

Writes generated scenario files of ``--sizes`` MiB (a scenario may be 4 MiB:
``yamlnodes.MAX_SCENARIO_BYTES``), each like a large real one: an inventory in
``variables:`` (a list of mappings), 300 machines with labels, 500 steps with shell
scripts using templates, environments, pushed files and messages. The largest is also
written with three problems near its end (a wrong type, an unknown field, a template
naming no variable), to time the path that reports them.

Each file is read with ``load_scenario`` (read, compose, check: what ``crc up`` does
before anything else) in a process of its own per tree and round, after a warm-up
parse; the figure is the median of ``--runs`` rounds. ``--base DIR`` parses the same
files first with the code of the checkout ``DIR`` (``PYTHONPATH=DIR/src``), alternating
with this tree round by round (drift hits both alike), and compares the results: the
``Scenario`` (its repr) or the error message, line numbers included, must be the same.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import log, machine_info, write_section  # noqa: E402

BEGIN, END = "<!-- scenario_parse.py: begin -->", "<!-- scenario_parse.py: end -->"
MACHINES = 300
STEPS = 499  # and one more in the file with problems: 500, the most a scenario has


# -- the files -----------------------------------------------------------------------------
def scenario_text(target: int) -> str:
    """A valid scenario of about ``target`` bytes: half inventory, half steps."""
    head = ["name: big", "provider: local", "ttl: 8h", "timeouts: {ready: 5m, step: 10m}"]
    machines = ["machines:"]
    for i in range(MACHINES):
        machines += [f"  m{i}:", f"    labels: {{role: r{i % 5}, rack: 'r{i % 17}'}}"]
    fixed = sum(len(x) + 1 for x in head + machines)
    # Each user is about 150 bytes, each script line about 90: half the rest each.
    users = max(1, (target - fixed) // 2 // 150)
    lines_per_step = max(1, (target - fixed) // 2 // STEPS // 90)
    out = [*head, "variables:", "  db_name: shop", "  users:"]
    for u in range(users):
        out += [
            f"    - name: user{u}",
            f"      uid: {1000 + u}",
            f"      groups: [wheel, dev{u % 7}]",
            "      shell: /bin/bash",
            f"      key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{u:012d}",
        ]
    out += machines
    out.append("steps:")
    for s in range(STEPS):
        out += [f"  - name: step-{s}", f"    to: role=r{s % 5}"]
        if s % 10 == 3:
            out += ["    push:", f"      dest: /etc/app/part-{s}.conf", "      content: |"]
            out += [
                f"        host{k} = {{{{ machines.m{k % MACHINES}.private_ip }}}}"
                for k in range(lines_per_step)
            ]
        elif s % 10 == 7:
            out += ["    send:", "      type: user.config", "      body:"]
            out += [f"        key{k}: value {k} of {s}" for k in range(lines_per_step)]
        else:
            out += ["    env:", f"      STEP: '{s}'", "      DB: shop", "    run: |"]
            out += [
                f"      echo 'line {k} of step {s}' {{{{ vars.db_name }}}} "
                f"{{{{ machines.m{k % MACHINES}.ip }}}} >> /var/log/provision.log"
                for k in range(lines_per_step)
            ]
    return "\n".join(out) + "\n"


def with_problems(text: str) -> str:
    """``text`` with three problems in its last steps."""
    lines = text.splitlines()
    last = [i for i, line in enumerate(lines) if line.startswith("  - name: step-")][-2:]
    lines.insert(last[1] + 1, "    colour: blue")
    lines.insert(last[0] + 1, "    retries: many")
    lines += ["  - name: extra", "    run: echo {{ vars.nothing }}"]
    return "\n".join(lines) + "\n"


def write_files(work: Path, sizes: list[float]) -> list[Path]:
    paths = []
    for mib in sizes:
        text = scenario_text(int(mib * (1 << 20)))
        path = work / f"scenario-{mib:g}MiB.yaml"
        path.write_text(text)
        paths.append(path)
    bad = work / f"scenario-{sizes[-1]:g}MiB-3-problems.yaml"
    bad.write_text(with_problems(paths[-1].read_text()))
    return [*paths, bad]


# -- a round in one process ------------------------------------------------------------------
def worker(paths: list[str]) -> None:
    """Parse each file once (after a warm-up): one JSON line per file."""
    from cloudremotecontrol.master.scenario.model import ScenarioError, load_scenario

    load_scenario(paths[0])  # imports, caches: not timed
    for path in paths:
        t0 = time.perf_counter()
        try:
            result = repr(load_scenario(path))
        except ScenarioError as exc:
            result = exc.message
        seconds = time.perf_counter() - t0
        digest = hashlib.sha256(result.encode()).hexdigest()[:16]
        row = {"path": path, "seconds": seconds, "digest": digest, "head": result[:200]}
        print(json.dumps(row))


def one_round(src: Path, paths: list[Path]) -> dict[str, dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [sys.executable, __file__, "--worker", *map(str, paths)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return {r["path"]: r for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="0.25,0.5,1,2,3.5", help="MiB, comma-separated")
    ap.add_argument("--runs", type=int, default=3, help="rounds; the median is shown")
    ap.add_argument("--base", help="a checkout to measure first (before)")
    ap.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker)
        return
    sizes = sorted(float(x) for x in args.sizes.split(","))
    trees: list[tuple[str, Path]] = []
    if args.base:
        commit = subprocess.run(
            ["git", "-C", args.base, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        trees.append((f"before ({commit or args.base})", Path(args.base).resolve() / "src"))
    trees.append(("after" if args.base else "this tree", HERE.parent / "src"))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="crc-bench-parse-") as tmp:
        paths = write_files(Path(tmp), sizes)
        got: dict[str, list[dict[str, dict[str, Any]]]] = {label: [] for label, _ in trees}
        for i in range(args.runs):
            for label, src in trees:
                log(f"round {i + 1}/{args.runs}: {label}")
                got[label].append(one_round(src, paths))
        sizes_kib = {str(p): p.stat().st_size / 1024 for p in paths}
    labels = [label for label, _ in trees]
    header = f"{'file':32s}  {'size':>9s}" + "".join(f"  {label:>18s}" for label in labels)
    if args.base:
        header += "  same result"
    lines = [header, "-" * len(header)]
    same_all = True
    for path in paths:
        key = str(path)
        name = path.name.removeprefix("scenario-").removesuffix(".yaml")
        row = f"{name:32s}  {sizes_kib[key]:>5.0f} KiB"
        for label in labels:
            row += f"  {statistics.median(r[key]['seconds'] for r in got[label]):>16.2f} s"
        if args.base:
            digests = {r[key]["digest"] for label in labels for r in got[label]}
            same_all &= len(digests) == 1
            row += "  " + ("yes" if len(digests) == 1 else "NO")
        lines.append(row)
    bad = str(paths[-1])
    message = got[labels[-1]][0][bad]["head"]
    table = "\n".join(lines)
    print(table)
    print(message)
    if args.base and not same_all:
        print("the trees disagree on a result", file=sys.stderr)
    if args.no_write:
        return
    command = ".venv/bin/python bench/scenario_parse.py " + " ".join(sys.argv[1:])
    runs = "\n".join(
        f"- {label}: "
        + "; ".join(
            f"{Path(p).name.removeprefix('scenario-').removesuffix('.yaml')} "
            + ", ".join(f"{r[str(p)]['seconds']:.2f}" for r in got[label])
            for p in paths
        )
        for label in labels
    )
    body = (
        f"{BEGIN}\n## Reading a large scenario (`scenario_parse.py`)\n\n"
        f"Produced by `{command.strip()}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n"
        f"Machine: {machine_info()}. Load average (1 min): {load_before:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after. `load_scenario` wall time, median of "
        f"{args.runs} rounds, each tree in a process of its own per round.\n\n"
        f"```\n{table}\n```\n\nThe file with problems says (first 200 characters):\n\n"
        f"```\n{message}\n```\n\nAll rounds (seconds):\n\n{runs}\n{END}"
    )
    write_section(
        HERE / "RESULTS.md", BEGIN, END, body, lambda old: old.rstrip() + "\n\n" + body + "\n"
    )


if __name__ == "__main__":
    main()
