"""Two `crc up` of one scenario from two configuration directories: the second is
refused while the first holds the group's lease, never deleting or making the group
again; `crc down` from the other directory goes on and says so; a `crc up` that was
killed is resumed at once from its own directory, and taken over from another once its
lease expired. Real server, real `crc` processes, the fake Vultr API (its machines never
boot: a `crc up` waits for them)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudremotecontrol.errors import NotFound
from fakes.vultr_api import FakeVultr

SCENARIO = """\
name: cloud
provider: vultr
timeouts: {{ready: {ready}}}
defaults: {{region: ewr, plan: vc2-1c-1gb, image: "2284"}}
machines: {{a: , b: }}
"""
LEASE = "crc.up/lease"
REFUSED = (
    "crc: error: another `crc up` (from another configuration directory or computer) "
    "is working on group {} ("
)


@pytest.fixture
def fake() -> Iterator[FakeVultr]:
    f = FakeVultr(ready_delay=0.05).start()
    yield f
    f.stop()
    assert f.violations == []


def _start_up(env: Any, path: Path, extra: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", "up", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **env.cli_env, **extra},
    )


def _until(what: Any, up: subprocess.Popen[bytes], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = what()
        except NotFound:
            got = None
        if got:
            return got
        assert up.poll() is None, "crc up ended early"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _lease(env: Any, group: str = "cloud") -> dict[str, Any]:
    return dict(env.client.kv_get(group, LEASE)["value"])


def _stop(up: subprocess.Popen[bytes]) -> None:
    if up.poll() is None:
        up.kill()
    up.wait(60)


def test_up_from_another_config_dir_is_refused_while_one_runs_and_down_says_it(env, crc, fake):
    path = env.tmp / "cloud.yaml"
    path.write_text(SCENARIO.format(ready="120s"))
    short = env.tmp / "short" / "cloud.yaml"
    short.parent.mkdir()
    short.write_text(SCENARIO.format(ready="1s"))
    vultr = {"VULTR_API_KEY": fake.api_key, "CRC_VULTR_API_URL": fake.url}
    other = {**vultr, "CRC_CONFIG_DIR": str(env.tmp / "other-config")}
    first = _start_up(env, path, vultr)
    try:
        _until(lambda: len(fake.state.instances) == 2, first)
        made = env.client.group("cloud")
        instances = set(fake.state.instances)

        r = crc("up", str(short), extra_env=other, timeout=120)

        assert r.returncode == 5, r.stdout + r.stderr
        (last,) = r.stderr.splitlines()
        assert last.startswith(REFUSED.format("cloud")), last
        assert "wait for it to end, or run `crc down` / `crc up` from the configuration " in last
        assert "keys in " + str(Path(env.cli_env["CRC_CONFIG_DIR"])) in last, last
        assert "making it again" not in r.stdout, r.stdout
        now = env.client.group("cloud")
        assert now["settings"] == made["settings"] and now["created"] == made["created"]
        assert set(fake.state.instances) == instances
        assert first.poll() is None
        assert _lease(env)["state"] == "held"

        # `crc down` from the other directory is the emergency stop: it goes on, and says
        # which `crc up` it stops.
        r = crc("down", str(path), extra_env=other, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert (
            f"warning: another `crc up` is working on group cloud (crc up, pid {first.pid} on "
        ) in r.stdout, r.stdout
        assert "`crc down` goes on all the same (it is the emergency stop)" in r.stdout
        assert fake.state.instances == {}
        with pytest.raises(NotFound):
            env.client.group("cloud")
        assert first.wait(60) != 0
    finally:
        _stop(first)
        crc("down", str(path), extra_env=vultr, timeout=120)
    assert fake.state.instances == {}


def test_killed_up_is_resumed_from_its_config_dir_and_taken_over_once_its_lease_expired(
    env, crc, fake
):
    path = env.tmp / "cloud.yaml"
    path.write_text(SCENARIO.format(ready="120s"))
    short = env.tmp / "short" / "cloud.yaml"
    short.parent.mkdir()
    short.write_text(SCENARIO.format(ready="1s"))
    vultr = {"VULTR_API_KEY": fake.api_key, "CRC_VULTR_API_URL": fake.url}
    other = {**vultr, "CRC_CONFIG_DIR": str(env.tmp / "other-config")}
    first = _start_up(env, path, vultr)
    try:
        _until(lambda: len(fake.state.instances) == 2, first)
        instances = set(fake.state.instances)
        run_id = _lease(env)["run_id"]
    finally:
        _stop(first)  # kill -9: its lease stays, unreleased

    # From another directory: refused while the lease lives.
    r = crc("up", str(short), extra_env=other, timeout=120)
    assert r.returncode == 5, r.stdout + r.stderr
    assert r.stderr.splitlines()[-1].startswith(REFUSED.format("cloud")), r.stderr
    assert set(fake.state.instances) == instances

    # From its own directory (its state file): resumed at once.
    r = crc("up", str(short), extra_env=vultr, timeout=120)
    assert r.returncode == 6, r.stdout + r.stderr
    assert "group cloud exists: resuming" in r.stdout, r.stdout
    assert "timed out after 1s: not ready: a, b" in r.stderr, r.stderr
    assert set(fake.state.instances) == instances
    lease = _lease(env)
    assert lease["state"] == "released" and lease["run_id"] != run_id, lease

    # One killed with a short lease: another directory takes over once it expired.
    quick = {"CRC_UP_LEASE_SECONDS": "0.2"}
    second = _start_up(env, path, {**vultr, **quick})
    try:
        _until(lambda: _lease(env)["state"] == "held", second)
    finally:
        _stop(second)
    time.sleep(1.0)  # three periods without renewal: expired
    r = crc("up", str(short), extra_env={**other, **quick}, timeout=120)
    assert r.returncode == 6, r.stdout + r.stderr
    assert "group cloud exists: resuming" in r.stdout, r.stdout
    assert REFUSED.format("cloud") not in r.stderr, r.stderr
    assert set(fake.state.instances) == instances

    r = crc("down", str(path), extra_env=other, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "another `crc up` is working" not in r.stdout, r.stdout
    assert fake.state.instances == {}


LOCAL = """\
name: lab
provider: local
timeouts: {ready: 60s, step: 60s}
machines: {a: , b: }
steps:
  - name: nap
    run: sleep 0.1
"""


def _made_elsewhere(env: Any, lease_period: float) -> dict[str, Any]:
    """The group as a `crc up` from another configuration directory has just made it,
    before it wrote its lease."""
    made = {
        "scenario": "lab",
        "provider": "local",
        "provider_settings": {},
        "run_id": "0" * 32,
        "holder": "1" * 32,
        "lease_period": lease_period,
    }
    env.client.create_group("lab", ["a", "b"], settings={"crc_up": made})
    return env.client.group("lab")


def test_group_just_made_elsewhere_counts_as_held_by_its_maker_until_its_lease_would_expire(
    env, crc
):
    path = env.tmp / "lab.yaml"
    path.write_text(LOCAL)
    env.cli_env["CRC_LOCAL_DIR"] = str(env.tmp / "machines")
    try:
        made = _made_elsewhere(env, 20)

        r = crc("up", str(path))

        assert r.returncode == 5, r.stdout + r.stderr
        assert r.stderr.splitlines()[-1].startswith(
            REFUSED.format("lab") + "the `crc up` that made the group): wait for it to end"
        ), r.stderr
        assert "making it again" not in r.stdout, r.stdout
        assert env.client.group("lab")["created"] == made["created"]
        assert not (env.tmp / "machines").exists()
        env.client.delete_group("lab")

        # Its maker wrote no lease within three of its periods: it is taken over as before.
        _made_elsewhere(env, 0.1)
        time.sleep(0.5)
        r = crc("up", str(path), timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "exists but its keys were lost before any machine was made: making it again" in (
            r.stdout
        )
        assert _lease(env, "lab")["state"] == "released"
    finally:
        r = crc("down", str(path), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
