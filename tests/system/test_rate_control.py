"""Rate control on 100 agents: a real server over TLS, and the real ``Agent`` class 50 to
a process (bench/_common.py's swarm: own state dir, enrollment and WebSocket each).

The jobs are only started here, never followed: the server alone applies the rules (a
master that goes away changes nothing). What ran when is measured from the commands'
own output: each prints the agent machine's clock when it starts and when it ends.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudremotecontrol.master.client import Client
from cloudremotecontrol.master.localrun import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from _common import Swarm  # noqa: E402 -- bench/ is not a package

N = 100
GROUP = "fleet"
TIMED = "date +%s.%N; sleep {sleep}; date +%s.%N; {tail}"


class Fleet:
    def __init__(self, server: ServerProcess, client: Client, token: str) -> None:
        self.server, self.client, self.token = server, client, token

    def start(self, script: str, to: str = "all", **rules: Any) -> dict[str, Any]:
        return self.client.start_job(GROUP, to, argv=["sh", "-c", script], **rules)

    def finished(self, job_id: str, timeout: float = 180.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.client.job(job_id)
            open_ = [t for t in job["targets"] if t["status"] in ("queued", "delivered", "running")]
            if not open_:
                return job
            assert time.monotonic() < deadline, f"job not finished: {open_[:5]}"
            time.sleep(0.2)

    def output(self, job_id: str) -> dict[str, str]:
        """What each target's command printed."""
        out: dict[str, str] = {}
        for ev in self.client.job_events(job_id, since=0, follow=False):
            if ev.type == "job.output" and ev.machine is not None:
                out[ev.machine] = out.get(ev.machine, "") + ev.data["data"]
        return out

    def spans(self, job_id: str) -> dict[str, tuple[float, float]]:
        """Each target's (start, end) as its command printed them."""
        spans = {}
        for machine, text in self.output(job_id).items():
            start, end = (float(x) for x in text.split()[:2])
            spans[machine] = (start, end)
        return spans


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("rate")
    server = ServerProcess(tmp / "srv").start()
    token = server.add_user("alice")
    client = Client(server.url, token, server.fingerprint)
    swarm = None
    try:
        names = [f"m{i:03d}" for i in range(N)]
        out = client.create_group(GROUP, names)
        keys = [(m["name"], m["key"]) for m in out["machines"]]
        swarm = Swarm(tmp / "swarm", server.url, server.fingerprint, keys, 2, 25, 120.0)
        swarm.wait_connected(300)
        assert swarm.connected == N, swarm.reports
        deadline = time.monotonic() + 60
        while any(m["state"] != "ready" for m in client.group(GROUP)["machines"]):
            assert time.monotonic() < deadline, "agents not ready"
            time.sleep(0.2)
        yield Fleet(server, client, token)
    finally:
        if swarm is not None:
            swarm.stop()
        client.close()
        server.stop()


def max_overlap(spans: dict[str, tuple[float, float]]) -> int:
    points = sorted([(s, 1) for s, _ in spans.values()] + [(e, -1) for _, e in spans.values()])
    now = peak = 0
    for _, delta in points:  # at equal times an end (-1) sorts before a start
        now += delta
        peak = max(peak, now)
    return peak


def statuses(job: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in job["targets"]:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    return counts


def test_never_more_than_max_concurrency_running_at_once(fleet: Fleet) -> None:
    started = fleet.start(TIMED.format(sleep=0.3, tail="true"), max_concurrency=10)
    job = fleet.finished(started["job_id"])
    assert statuses(job) == {"succeeded": N}
    assert job["rollout"] == {"max_concurrency": "10"}
    spans = fleet.spans(started["job_id"])
    assert len(spans) == N
    assert 1 < max_overlap(spans) <= 10


def test_a_percentage_is_of_the_targets(fleet: Fleet) -> None:
    started = fleet.start(TIMED.format(sleep=0.2, tail="true"), max_concurrency="5%")
    job = fleet.finished(started["job_id"])
    assert statuses(job) == {"succeeded": N}
    assert max_overlap(fleet.spans(started["job_id"])) <= 5


def test_nothing_starts_once_the_error_budget_is_spent(fleet: Fleet) -> None:
    started = fleet.start(TIMED.format(sleep=0.2, tail="exit 3"), max_concurrency=5, max_errors=3)
    job = fleet.finished(started["job_id"])
    counts = statuses(job)
    ran = counts.get("failed", 0)
    # The budget (3) is spent by the third failure; at most the 4 others running then
    # (concurrency 5) may still end: nothing is released after it.
    assert 3 <= ran <= 3 + 5 - 1, counts
    assert counts.get("skipped") == N - ran, counts
    spans = fleet.spans(started["job_id"])
    assert len(spans) == ran  # a skipped target's agent never ran anything
    skipped = [t for t in job["targets"] if t["status"] == "skipped"]
    assert "error budget spent" in skipped[0]["reason"]
    third_failure_stored = sorted(t["updated"] for t in job["targets"] if t["status"] == "failed")[
        2
    ]
    assert all(t["updated"] >= third_failure_stored for t in skipped)


def test_canary_failure_stops_the_rollout(fleet: Fleet) -> None:
    script = TIMED.format(sleep=0.1, tail='[ "$CRC_MACHINE" != m001 ]')
    started = fleet.start(script, canary=3)
    job = fleet.finished(started["job_id"])
    assert statuses(job) == {"succeeded": 2, "failed": 1, "skipped": N - 3}
    assert set(fleet.spans(started["job_id"])) == {"m000", "m001", "m002"}
    reasons = {t["reason"] for t in job["targets"] if t["status"] == "skipped"}
    assert reasons == {"canary failed: m001 ended failed (--canary 3)"}


def test_canary_success_then_the_rest_with_batch_wait(fleet: Fleet) -> None:
    started = fleet.start(
        TIMED.format(sleep=0.1, tail="true"), canary=2, max_concurrency=50, batch_wait=1.0
    )
    job = fleet.finished(started["job_id"])
    assert statuses(job) == {"succeeded": N}
    spans = fleet.spans(started["job_id"])
    canary_end = max(spans["m000"][1], spans["m001"][1])
    rest = [s for m, (s, _) in spans.items() if m not in ("m000", "m001")]
    assert min(rest) >= canary_end + 0.9  # the batch wait after the canaries (same clock)


def test_deliver_within_expires_targets_that_are_not_reached(fleet: Fleet) -> None:
    fleet.client.create_group("half", ["up", "down"])
    # Neither machine of this group ever connects: both end expired, with no master.
    started = fleet.client.start_job("half", "all", argv=["true"], deliver_within=1.0)
    job = fleet.finished(started["job_id"], timeout=60)
    assert statuses(job) == {"expired": 2}
    assert "not reached within 1 s" in job["targets"][0]["reason"]
    events = list(fleet.client.job_events(started["job_id"], since=0, follow=False))
    assert [e.data["status"] for e in events if e.type == "job.status"] == ["expired"] * 2


def test_cancel_ends_held_targets_without_running_them(fleet: Fleet) -> None:
    started = fleet.start(TIMED.format(sleep=2, tail="true"), max_concurrency=2)
    time.sleep(1.0)
    fleet.client.cancel_job(started["job_id"])
    job = fleet.finished(started["job_id"])
    counts = statuses(job)
    assert counts.get("cancelled", 0) >= N - 2, counts
    assert len(fleet.output(started["job_id"])) <= 2  # killed: a start time, no end


@pytest.mark.parametrize(
    ("rules", "word"),
    [
        ({"max_concurrency": 0}, "max_concurrency must be at least 1"),
        ({"max_concurrency": -2}, "max_concurrency must be a number"),
        ({"max_concurrency": "101%"}, "at most 100%"),
        ({"max_concurrency": "lots"}, "max_concurrency must be a number"),
        ({"max_errors": "0%"}, "max_errors must be at least 1"),
        ({"canary": 0}, "canary must be at least 1"),
        ({"batch_wait": -1}, "batch_wait must be more than 0"),
        ({"deliver_within": 0}, "deliver_within must be more than 0"),
        ({"max_concurrency": 1.5}, "max_concurrency"),
        ({"canary": "3%"}, "canary"),
    ],
)
def test_bad_rules_are_refused_with_400(fleet: Fleet, rules: dict[str, Any], word: str) -> None:
    before = len(fleet.client.list_jobs(GROUP, limit=1000))
    r = httpx.post(
        f"{fleet.server.url}/v1/groups/{GROUP}/jobs",
        json={"to": "all", "argv": ["true"], **rules},
        headers={"Authorization": f"Bearer {fleet.token}"},
        verify=False,  # loopback test server; its pin is checked elsewhere
        timeout=30,
    )
    assert r.status_code == 400, r.text
    assert word in r.json()["error"]["message"]
    assert len(fleet.client.list_jobs(GROUP, limit=1000)) == before


def test_cli_options_are_checked_before_anything_is_sent(fleet: Fleet, tmp_path: Path) -> None:
    env = {
        "CRC_URL": fleet.server.url,
        "CRC_TOKEN": fleet.token,
        "CRC_FINGERPRINT": fleet.server.fingerprint,
        "CRC_CONFIG_DIR": str(tmp_path / "cfg"),
        "PATH": "/usr/bin:/bin",
    }
    before = len(fleet.client.list_jobs(GROUP, limit=1000))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "cloudremotecontrol",
            "run",
            GROUP,
            "--to",
            "all",
            "--max-errors",
            "150%",
            "--",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr == "crc: error: --max-errors must be at most 100%, got 150%\n"
    assert len(fleet.client.list_jobs(GROUP, limit=1000)) == before
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "cloudremotecontrol",
            "run",
            GROUP,
            "--to",
            "m000,m001,m002",
            "--max-concurrency",
            "1",
            "--json",
            "--",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    job_id = json.loads(r.stdout.splitlines()[0])["job_id"]
    show = subprocess.run(
        [sys.executable, "-m", "cloudremotecontrol", "job", "show", job_id],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert show.returncode == 0, show.stderr
    assert "rate control: --max-concurrency 1" in show.stdout
    assert show.stdout.count("succeeded") == 3


def test_job_show_lists_skipped_targets_and_crc_run_exits_with_the_canary_failure(
    fleet: Fleet, tmp_path: Path
) -> None:
    env = {
        "CRC_URL": fleet.server.url,
        "CRC_TOKEN": fleet.token,
        "CRC_FINGERPRINT": fleet.server.fingerprint,
        "CRC_CONFIG_DIR": str(tmp_path / "cfg"),
        "PATH": "/usr/bin:/bin",
    }
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "cloudremotecontrol",
            "run",
            GROUP,
            "--to",
            "m010,m011,m012",
            "--canary",
            "1",
            "--json",
            "--",
            "false",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    # The failure the others were skipped for is the exit code (`false`: 1), not 125.
    assert r.returncode == 1, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert {x.get("machine"): x.get("status") for x in lines[1:]} == {
        "m010": "failed",
        "m011": "skipped",
        "m012": "skipped",
    }
    show = subprocess.run(
        [sys.executable, "-m", "cloudremotecontrol", "job", "show", lines[0]["job_id"]],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert show.returncode == 0, show.stderr
    assert show.stdout.count("skipped") == 2 and "canary failed" in show.stdout


def test_rate_control_on_postgresql_with_two_replicas(pg_url: str, tmp_path: Path) -> None:
    """The same rules when the targets' results reach two replicas of one database: a
    result stored by one releases the next target wherever its agent is connected."""
    a = ServerProcess(tmp_path / "a", database=pg_url).start()
    b = a.replica(tmp_path / "b").start()  # its certificate and teardown key
    swarms: list[Swarm] = []
    client = Client(a.url, a.add_user("alice"), a.fingerprint)
    try:
        names = [f"p{i:02d}" for i in range(12)]
        out = client.create_group("pg", names)
        keys = [(m["name"], m["key"]) for m in out["machines"]]
        for i, srv in enumerate((a, b)):
            share = keys[i::2]
            swarms.append(
                Swarm(tmp_path / f"swarm{i}", srv.url, srv.fingerprint, share, 1, 25, 120.0)
            )
        for s in swarms:
            s.wait_connected(300)
        deadline = time.monotonic() + 60
        while any(m["state"] != "ready" for m in client.group("pg")["machines"]):
            assert time.monotonic() < deadline, "agents not ready"
            time.sleep(0.2)
        fleet = Fleet(a, client, "")
        script = TIMED.format(sleep=0.3, tail="true")
        started = client.start_job("pg", "all", argv=["sh", "-c", script], max_concurrency=3)
        job = fleet.finished(started["job_id"])
        assert statuses(job) == {"succeeded": 12}
        assert 1 < max_overlap(fleet.spans(started["job_id"])) <= 3
        script = TIMED.format(sleep=0.1, tail='[ "$CRC_MACHINE" != p01 ]')
        started = client.start_job("pg", "all", argv=["sh", "-c", script], canary=2)
        job = fleet.finished(started["job_id"])
        assert statuses(job) == {"succeeded": 1, "failed": 1, "skipped": 10}
    finally:
        for s in swarms:
            s.stop()
        client.close()
        a.stop()
        b.stop()
