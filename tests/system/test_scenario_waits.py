"""A scenario's waits: they end at their deadline also when nothing arrives, and a
provider's hiccup does not end them early.

The server here sends a keepalive on a quiet event stream only every 60 s
(``--events-keepalive``): a wait that looked at its deadline only when the stream said
something ended a minute late. The bounds below are safety nets, far above the
deadlines and far below that minute.
"""

from __future__ import annotations

import builtins
import json
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from cloudremotecontrol.bootstrap import BootstrapParams
from cloudremotecontrol.errors import ProviderError, Unavailable
from cloudremotecontrol.master.client import Client
from cloudremotecontrol.master.localrun import ServerProcess
from cloudremotecontrol.master.profile import Profile
from cloudremotecontrol.master.scenario.model import parse_scenario
from cloudremotecontrol.master.scenario.runner import Runner
from cloudremotecontrol.master.scenario.state import LocalState
from cloudremotecontrol.master.scenario.steps import StepExecutor
from cloudremotecontrol.master.scenario.view import View
from cloudremotecontrol.providers import (
    Capabilities,
    Feature,
    Instance,
    MachineSpec,
    Provider,
    machine_tag,
    scenario_tag,
)
from cloudremotecontrol.providers.local import LocalProvider

QUIET = 60.0  # seconds between two keepalives of an idle event stream
SAFETY = 25.0  # a wait of 1-2 s must have ended well before this


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """The `env` and `crc` fixtures (conftest.py) on a server with rare keepalives."""
    srv = ServerProcess(tmp_path / "srv", args=["--events-keepalive", str(QUIET)]).start()
    yield srv
    srv.stop()


class Idle(Provider):
    """Machines that exist and run, and never boot an agent nor reboot for real."""

    name = "idle"
    capabilities = Capabilities(features=frozenset({Feature.REBOOT}), liveness_interval=0.5)

    def __init__(self) -> None:
        self.made: dict[str, Instance] = {}

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], *, server_url: str | None) -> Idle:
        return cls()

    def create(self, scenario: str, spec: MachineSpec, startup_script: str) -> Instance:
        inst = self.instance(scenario, spec.name)
        self.made[inst.id] = inst
        return inst

    @staticmethod
    def instance(scenario: str, machine: str) -> Instance:
        return Instance(
            id=f"{scenario}.{machine}",
            name=machine,
            label=f"{scenario}-{machine}",
            status="running",
            ready=True,
            tags=(scenario_tag(scenario), machine_tag(machine)),
        )

    def get(self, instance_id: str) -> Instance | None:
        return self.made.get(instance_id)

    def destroy(self, instance_id: str) -> None:
        self.made.pop(instance_id, None)

    def wait_running(self, instance_id: str, timeout: float) -> Instance:
        return self.made[instance_id]

    def list(self, scenario: str) -> builtins.list[Instance]:
        return [i for i in self.made.values() if i.scenario == scenario]

    def reboot(self, instance_id: str) -> Instance:
        return self.made.get(instance_id) or Instance(instance_id, "", "", "running", True)


def _in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    got: dict[str, Any] = {}

    def run() -> None:
        try:
            got["value"] = fn()
        except Exception as exc:  # noqa: BLE001 -- looked at by the test
            got["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(SAFETY)
    return t, got


def test_a_wait_for_a_message_nobody_sends_fails_at_its_timeout(env, crc):
    env.cli_env["CRC_LOCAL_DIR"] = str(env.tmp / "machines")
    path = env.tmp / "silent.yaml"
    path.write_text(
        "name: silent\nprovider: local\ntimeouts: {ready: 60s}\nmachines: {a: }\n"
        "steps:\n  - name: m\n    timeout: 2s\n    wait: {message: never}\n"
    )
    provider = LocalProvider(env.tmp / "machines")
    try:
        r = crc("up", str(path), "--json", timeout=3 * QUIET)
        assert r.returncode == 1, r.stdout + r.stderr
        (step,) = [json.loads(line) for line in r.stdout.splitlines()][-1]["steps"]
        assert (step["status"], step["message"]) == ("failed", "no user.never from a within 2 s")
        assert step["seconds"] < SAFETY, step
        r = crc("down", str(path))
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        for inst in provider.list("silent"):
            provider.destroy(inst.id)


def test_a_reboot_that_never_happens_fails_at_the_steps_timeout(env):
    env.group_with_agents("still", ["a"])
    scenario = parse_scenario(
        "name: still\nprovider: local\nmachines: {a: }\n"
        "steps:\n  - name: r\n    timeout: 1s\n    reboot: true\n"
    )
    executor = StepExecutor(
        scenario,
        "still",
        lambda: Client(env.server.url, env.token, env.server.fingerprint),
        Idle(),
        {"a": Idle.instance("still", "a")},
        View(),
    )
    thread, got = _in_thread(lambda: executor(scenario.steps[0], 1))
    assert not thread.is_alive(), f"the reboot wait of 1 s still runs after {SAFETY:g} s"
    outcome = got["value"]
    assert (outcome.ok, outcome.message) == (False, "not back in time: a")


def test_machines_that_never_enroll_fail_up_at_the_ready_timeout(env, tmp_path):
    scenario = parse_scenario(
        "name: mute\nprovider: local\ntimeouts: {ready: 1s}\nmachines: {a: }\n"
    )
    profile = Profile(env.server.url, env.token, env.server.fingerprint)
    runner = Runner(scenario, profile, Idle(), View(), state=LocalState(tmp_path / "mute.json"))
    try:
        thread, got = _in_thread(runner.up)
    finally:
        runner.close()
    assert not thread.is_alive(), f"the ready wait of 1 s still runs after {SAFETY:g} s"
    error = got["error"]
    assert isinstance(error, Unavailable), error
    assert error.message == "timed out after 1s: not ready: a"


class Flaky(Idle):
    """Each machine is a real agent enrolling with its key; asking the provider about
    one always fails (an API that answers 502 for a while)."""

    capabilities = Capabilities(liveness_interval=0.1)

    def __init__(self, env: Any) -> None:
        super().__init__()
        self.env = env
        self.boots: list[threading.Timer] = []

    def startup_script(self, spec: MachineSpec, params: BootstrapParams) -> str:
        return params.key

    def create(self, scenario: str, spec: MachineSpec, startup_script: str) -> Instance:
        # Booting takes a while: the provider is asked about the machine meanwhile.
        boot = threading.Timer(2.0, self.env.agent, (spec.name, startup_script))
        boot.start()
        self.boots.append(boot)
        return super().create(scenario, spec, startup_script)

    def get(self, instance_id: str) -> Instance | None:
        raise ProviderError("502 Bad Gateway", provider=self.name)


def test_a_provider_hiccup_while_machines_start_does_not_fail_up(env, tmp_path):
    """The ready wait asks the provider now and then whether a machine died, to fail
    fast: an error of that question is no answer, and the machines become ready."""
    scenario = parse_scenario(
        "name: hiccup\nprovider: local\ntimeouts: {ready: 60s}\nmachines: {a: , b: }\n"
    )
    profile = Profile(env.server.url, env.token, env.server.fingerprint)
    provider = Flaky(env)
    runner = Runner(scenario, profile, provider, View(), state=LocalState(tmp_path / "h.json"))
    try:
        thread, got = _in_thread(runner.up)
    finally:
        runner.close()
        for boot in provider.boots:
            boot.join()
    assert not thread.is_alive()
    assert got == {"value": 0}, got
    states = [m["state"] for m in env.client.group("hiccup")["machines"]]
    assert states == ["ready", "ready"]
