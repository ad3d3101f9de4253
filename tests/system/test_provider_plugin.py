"""A provider from another distribution: installed with pip, registered only through its
own entry point ``cloudremotecontrol.providers``, found and used by `crc up` / `crc down`
as processes, with no change to CloudRemoteControl (tests/data/example-provider)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cloudremotecontrol.master.localrun import ServerProcess

EXAMPLE = Path(__file__).resolve().parents[1] / "data" / "example-provider"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example distribution, built and installed by pip into a directory of its own
    (offline: the build uses this environment's setuptools)."""
    target = tmp_path_factory.mktemp("site")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=target,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert list(target.glob("crc_example_provider-1.0.dist-info/entry_points.txt"))
    return target


class Crc:
    def __init__(self, tmp: Path, server: ServerProcess, site: Path | None) -> None:
        token = server.add_user("alice")
        self.tmp = tmp
        self.machines = tmp / "example-machines"
        self.env = {
            **os.environ,
            "CRC_URL": server.url,
            "CRC_TOKEN": token,
            "CRC_FINGERPRINT": server.fingerprint,
            "CRC_CONFIG_DIR": str(tmp / "cfg"),
            "CRC_EXAMPLE_DIR": str(self.machines),
        }
        self.env.pop("PYTHONPATH", None)
        if site is not None:
            self.env["PYTHONPATH"] = str(site)

    def __call__(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cloudremotecontrol", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
        )

    def scenario(self, text: str) -> str:
        path = self.tmp / "scenario.yaml"
        path.write_text(textwrap.dedent(text))
        return str(path)


def _lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


SCENARIO = """\
    name: third
    provider: {name: example, flavour: large}
    timeouts: {ready: 90s, step: 60s}
    machines:
      a: {plan: tiny}
      b: {plan: tiny}
    steps:
      - name: hello
        to: all
        run: echo "hello from $CRC_MACHINE"
    """


def test_crc_up_and_down_use_a_provider_registered_by_another_distribution(
    server: ServerProcess, tmp_path: Path, site: Path
) -> None:
    crc = Crc(tmp_path, server, site)
    path = crc.scenario(SCENARIO)
    up = crc("up", path, "--json")
    assert up.returncode == 0, up.stdout + up.stderr
    events = _lines(up.stdout)
    first = events[0]
    assert first["provider"] == "example"
    assert "example machines, large, under" in first["text"]  # its describe(), its setting
    summary = events[-1]
    assert summary["event"] == "summary" and summary["ok"] is True, summary
    assert {m["name"]: m["instance"] for m in summary["machines"]} == {
        "a": "third.a",
        "b": "third.b",
    }
    assert all(m["state"] == "ready" for m in summary["machines"])
    outputs = {e["machine"]: e["data"] for e in events if e["event"] == "output"}
    assert outputs == {"a": "hello from a\n", "b": "hello from b\n"}
    # The machines are the example provider's: its records, its boot script (not the
    # VM bootstrap), the plan the scenario gave.
    for m in ("a", "b"):
        record = json.loads((crc.machines / "third" / m / "machine.json").read_text())
        assert record["plan"] == "tiny"
        boot = (crc.machines / "third" / m / "boot.sh").read_text()
        assert "-m cloudremotecontrol agent run" in boot and "/opt/crc-agent" not in boot
    pids = [
        json.loads((crc.machines / "third" / m / "machine.json").read_text())["pid"]
        for m in ("a", "b")
    ]

    down = crc("down", path, "--json")
    assert down.returncode == 0, down.stdout + down.stderr
    doc = _lines(down.stdout)[-1]
    assert doc["event"] == "down" and doc["provider"] == "example"
    assert sorted(doc["destroyed"]) == ["third.a", "third.b"] and doc["left"] == []
    assert doc["group_deleted"] is True
    assert list(crc.machines.glob("third/*")) == []
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        assert time.monotonic() < deadline, f"agent processes left: {pids}"
        time.sleep(0.05)
    # --provider takes the plugin's name too (the group is gone: nothing to do).
    again = crc("down", "--group", "third", "--provider", "example", "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    assert _lines(again.stdout)[-1]["destroyed"] == []


def test_a_scenario_is_checked_against_what_the_plugin_declares(
    server: ServerProcess, tmp_path: Path, site: Path
) -> None:
    crc = Crc(tmp_path, server, site)
    bad = crc.scenario("""\
        name: third
        provider: {name: example, flavour: huge, network: netns}
        on_ttl: destroy
        ttl: 1h
        machines:
          a: {os: windows}
          b: {provider: {size: 2}}
        """)
    res = crc("up", bad)
    assert res.returncode == 2, res.stdout + res.stderr
    for want in (
        "provider.flavour: 'huge' is not one of: small, large",
        "provider.network: unknown setting for the example provider (expected: name, flavour)",
        "on_ttl: the server cannot destroy example machines: destroy is for the vultr provider",
        "machines.a.os: the example provider runs Linux machines only",
        "machines.a.plan: the example provider needs a plan (here or in defaults)",
        "machines.b.provider: the example provider takes no per-machine overrides",
    ):
        assert want in res.stderr, (want, res.stderr)
    assert not crc.machines.exists()  # nothing was made


def test_a_provider_that_is_not_installed_is_refused_with_the_registered_names(
    server: ServerProcess, tmp_path: Path
) -> None:
    crc = Crc(tmp_path, server, site=None)
    res = crc("up", crc.scenario(SCENARIO))
    assert res.returncode == 2
    assert "provider.name: 'example' is not one of: local, vultr" in res.stderr, res.stderr
    res = crc("down", "--group", "third", "--provider", "example")
    assert res.returncode == 2
    assert "'example' is not one of: local, vultr" in res.stderr, res.stderr
