"""The fan-out benchmark runs end to end on a tiny fleet (its numbers are not checked)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bench(
    script: str, *args: str, timeout: float = 240, tmpdir: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``bench/SCRIPT ARGS`` to its end; it must succeed (its stderr says why not).
    ``tmpdir``: its TMPDIR (where it keeps its work dirs)."""
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmpdir)} if tmpdir else None,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _made_databases(stderr: str) -> list[str]:
    """The databases a benchmark says it made (its log line "database NAME made ...")."""
    return re.findall(r"\] database (crc_bench_\w+) made", stderr)


def _left_over(pg_cluster, names: list[str]) -> list[str]:
    """Which of ``names`` still exist on the test cluster (only the benchmark's own, so
    another run's benchmarks on the same cluster do not count)."""
    import psycopg

    with psycopg.connect(pg_cluster.admin_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname = ANY(%s)", (names,)
        ).fetchall()
    return sorted(row[0] for row in rows)


def test_fanout_bench_completes_and_prints_a_table() -> None:
    r = _bench(
        "fanout.py",
        "--sizes",
        "3",
        "--real",
        "2",
        "--no-write",
        "--cli-runs",
        "1",
        "--sdk-runs",
        "2",
    )
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["agents", "kind", "connected"]
    rows = {line.split()[0]: line for line in lines[2:] if line[:1].isdigit()}
    assert "2/2" in rows["2"] and "processes" in rows["2"]
    assert "3/3" in rows["3"] and "in-process" in rows["3"]
    assert "crc --version" in r.stdout


def _replicas_quick(admin_url: str) -> tuple[str, ...]:
    """replicas.py's options for a run of a second or so, on the test's PostgreSQL."""
    return (
        "--no-write",
        "--runs",
        "1",
        "--seconds",
        "1",
        "--warmup",
        "0.5",
        "--postgres",
        admin_url,
    )


def test_replicas_bench_completes_and_prints_a_table(pg_cluster) -> None:
    r = _bench(
        "replicas.py",
        "--agents",
        "3",
        *_replicas_quick(pg_cluster.admin_url),
    )
    lines = r.stdout.splitlines()
    assert lines[0].split()[:2] == ["configuration", "agents"]
    for label, row in zip(
        ["SQLite, 1 server", "PostgreSQL, 1 server", "PostgreSQL, 2 replicas"],
        lines[2:5],
        strict=True,
    ):
        assert row.startswith(label) and "3/3" in row, row
    made = _made_databases(r.stderr)
    assert len(made) == 2, r.stderr  # one per PostgreSQL configuration
    assert _left_over(pg_cluster, made) == []  # it dropped the databases it created


def test_replicas_bench_runs_an_ab_against_a_baseline_commit(pg_cluster) -> None:
    r = _bench(
        "replicas.py",
        "--agents",
        "2",
        "--configs",
        "postgres",
        "--baseline",
        "HEAD",
        *_replicas_quick(pg_cluster.admin_url),
    )
    lines = r.stdout.splitlines()
    assert lines[2].startswith("PostgreSQL, 1 server (HEAD)") and "2/2" in lines[2]
    assert lines[3].startswith("PostgreSQL, 1 server ") and "2/2" in lines[3]
    assert any(line.startswith("- PostgreSQL, 1 server, this tree / HEAD:") for line in lines)


def test_dashboard_bench_completes_and_prints_a_table(chromium_present) -> None:
    # A TMPDIR of its own, short (Chromium's singleton socket path must stay short).
    tmp = Path(tempfile.mkdtemp(prefix="crcb-"))
    try:
        r = _bench(
            "dashboard.py",
            "--machines",
            "5",
            "--loads",
            "1",
            "--probes",
            "2",
            "--storm-rate",
            "20",
            "--storm-seconds",
            "1",
            "--no-write",
            tmpdir=tmp,
        )
        assert list(tmp.iterdir()) == []  # its work dir (server data, Chromium profile) is gone
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in r.stdout.splitlines())
    assert rows["machines in the group"] == "5"
    assert rows["rows in the DOM (virtualised)"] == "5"
    assert rows["first render (navigation to table drawn), median"].endswith(" ms")


def test_agent_start_bench_completes_and_prints_a_table() -> None:
    r = _bench("agent_start.py", "--runs", "1", "--no-write")
    lines = r.stdout.splitlines()
    assert lines[0].split()[:2] == ["entry", "point"]
    assert lines[2].startswith("crc agent run") and "MiB" in lines[2]
    assert lines[3].startswith("python -m cloudremotecontrol.agent run") and "MiB" in lines[3]
    assert lines[5].startswith("as the service: -OO -X no_debug_ranges") and "MiB" in lines[5]


def test_agent_memory_bench_completes_and_prints_its_tables() -> None:
    r = _bench("agent_memory.py", "--no-write")
    lines = r.stdout.splitlines()
    assert "import ladder" in lines[0]
    assert lines[2].startswith("interpreter") and "MiB" in lines[2]
    assert any(line.startswith("+ the agent's modules") for line in lines)
    assert any(line.startswith("the agent, connected and idle: RSS ") for line in lines)
    assert any(line.startswith("the first start of an agent installed without") for line in lines)


def test_connected_bench_completes_and_prints_a_table() -> None:
    r = _bench(
        "connected.py",
        "--agents",
        "4",
        "--workers",
        "1",
        "--idle-seconds",
        "1",
        "--settle",
        "0.5",
        "--no-write",
        timeout=300,
    )
    assert re.search(r"connected at first\s+4/4", r.stdout), r.stdout
    assert re.search(r"connected again\s+4/4", r.stdout), r.stdout
    assert re.search(r"results stored: succeeded\s+4/4", r.stdout), r.stdout
    assert re.search(r"succeeded per the API\s+4/4", r.stdout), r.stdout


def test_writer_batches_bench_completes_and_prints_a_table() -> None:
    r = _bench("writer_batches.py", "--machines", "20", "--jobs", "2", "--sizes", "1,10")
    lines = r.stdout.splitlines()
    assert lines[0].split()[:2] == ["batch", "size"]
    assert [line.split()[:2] for line in lines[1:]] == [["1", "20"], ["10", "2"]]
    assert all(line.endswith(" ms") for line in lines[1:])


def test_pg_job_results_bench_completes_and_drops_its_database(pg_cluster) -> None:
    made: list[str] = []
    for mode in ([], ["--messages"]):
        r = _bench(
            "pg_job_results.py",
            "--machines",
            "3",
            "--jobs",
            "2",
            "--postgres",
            pg_cluster.admin_url,
            *mode,
        )
        assert r.stdout.startswith("3 results (1 jobs x 3 machines)"), r.stdout
        assert "waits (round trips) per result" in r.stdout
        made += _made_databases(r.stderr)
    assert len(made) == 2, made
    assert _left_over(pg_cluster, made) == []


def test_recordings_bench_completes_and_prints_a_table(tmp_path: Path) -> None:
    r = _bench(
        "recordings.py", "--mib", "1", "--runs", "1", "--results", str(tmp_path / "RESULTS.md")
    )
    assert "chunks in the database" in r.stdout and "replay exact: True" in r.stdout, r.stdout
    assert "## Shell recordings" in (tmp_path / "RESULTS.md").read_text()
