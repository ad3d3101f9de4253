"""The API fuzz of the test suite (tests/system/test_openapi_fuzz.py), run longer.

    .venv/bin/python bench/fuzz_api.py                 # 200 examples per operation
    .venv/bin/python bench/fuzz_api.py --examples 30 --no-write

schemathesis generates requests (valid and invalid) for every operation of the served
OpenAPI document, each sent with a master token and with a machine credential to a
real server; every answer must be a documented status with a documented body, and
never a 5xx. Prints the statuses seen per operation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import log, machine_info, write_section

ROOT = Path(__file__).resolve().parents[1]
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=200, help="per operation")
    p.add_argument("--seed", type=int, default=None, help="random (default: derandomized)")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    args = p.parse_args()
    report = Path(tempfile.mkdtemp(prefix="crc-fuzz-")) / "report.json"
    env = {**os.environ, "CRC_FUZZ_EXAMPLES": str(args.examples), "CRC_FUZZ_REPORT": str(report)}
    if args.seed is not None:
        env["CRC_FUZZ_SEED"] = str(args.seed)
    log(f"fuzzing every operation, {args.examples} examples each")
    t0 = time.perf_counter()
    out = subprocess.run(
        [*PYTEST, "tests/system/test_openapi_fuzz.py", "-o", "timeout=7200"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    took = time.perf_counter() - t0
    if not report.exists():
        print(out.stdout[-5000:], out.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"the fuzz test did not finish (pytest exit {out.returncode})")
    data = json.loads(report.read_text())
    total: Counter[str] = Counter()
    width = max(len(op) for op in data["operations"])
    lines = [f"{'operation':<{width}}  requests  statuses", f"{'-' * width}  --------  --------"]
    for op, counts in sorted(data["operations"].items()):
        total.update(counts)
        seen = " ".join(f"{k}:{v}" for k, v in sorted(counts.items()))
        lines.append(f"{op:<{width}}  {sum(counts.values()):>8}  {seen}")
    five = sum(v for k, v in total.items() if k.startswith("5"))
    lines += [
        "",
        f"{sum(total.values()):,} requests in {took:.0f} s; by status: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(total.items())),
        f"5xx answers: {five}; operations with an undocumented answer or a schema "
        f"violation: {len(data['failures'])}",
    ]
    for op, why in data["failures"].items():
        lines.append(f"  {op}: {why.splitlines()[0][:200]}")
    text = "\n".join(lines)
    print(text)
    if out.returncode != 0 and not data["failures"]:
        print(out.stdout[-3000:], out.stderr[-3000:], file=sys.stderr)
    if not args.no_write:
        cmd = "`.venv/bin/python bench/fuzz_api.py" + (
            f" --examples {args.examples}`" if args.examples != 200 else "`"
        )
        body = (
            "<!-- fuzz_api.py: begin -->\n"
            f"Produced by {cmd} on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n"
            f"Machine: {machine_info()}.\n\n```\n{text}\n```\n<!-- fuzz_api.py: end -->"
        )
        write_section(
            Path(args.out),
            "<!-- fuzz_api.py: begin -->",
            "<!-- fuzz_api.py: end -->",
            body,
            lambda old: old.rstrip() + "\n\n# API fuzz (schemathesis)\n\n" + body + "\n",
        )
    sys.exit(out.returncode)


if __name__ == "__main__":
    main()
