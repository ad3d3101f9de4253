"""Which providers `crc up` asks for second instances of a slot (twins)."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cloudremotecontrol.master.profile import Profile
from cloudremotecontrol.master.scenario.model import parse_scenario
from cloudremotecontrol.master.scenario.runner import Runner
from cloudremotecontrol.master.scenario.state import LocalState
from cloudremotecontrol.master.scenario.view import View
from cloudremotecontrol.providers import Instance, MachineSpec, Provider
from cloudremotecontrol.providers.local import LocalProvider


class Counting(Provider):
    """Counts the listings; declares what the local provider declares."""

    name = "local"
    capabilities = LocalProvider.capabilities

    def __init__(self) -> None:
        self.listed = 0

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], *, server_url: str | None) -> Counting:
        return cls()

    def create(self, scenario: str, spec: MachineSpec, startup_script: str) -> Instance:
        raise AssertionError("not called")

    def get(self, instance_id: str) -> Instance | None:
        return None

    def destroy(self, instance_id: str) -> None:
        raise AssertionError("not called")

    def wait_running(self, instance_id: str, timeout: float) -> Instance:
        raise AssertionError("not called")

    def list(self, scenario: str) -> builtins.list[Instance]:
        self.listed += 1
        return []


def test_a_provider_that_cannot_make_twins_is_not_listed_for_them(tmp_path: Path) -> None:
    scenario = parse_scenario("name: s\nprovider: local\nmachines: {a: }\n")
    provider = Counting()
    runner = Runner(
        scenario,
        Profile(url="https://127.0.0.1:9", token="t", fingerprint=None),
        provider,
        View(),
        state=LocalState(tmp_path / "s.json"),
    )
    try:
        runner._destroy_twins({"a": "pending"})
    finally:
        runner.close()
    assert provider.listed == 0
    assert not LocalProvider.capabilities.twins
