"""Which providers `crc up` asks for second instances of a slot (twins)."""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from cloudremotecontrol.errors import Unavailable
from cloudremotecontrol.master.profile import Profile
from cloudremotecontrol.master.scenario.model import parse_scenario
from cloudremotecontrol.master.scenario.runner import Runner
from cloudremotecontrol.master.scenario.state import LocalState
from cloudremotecontrol.master.scenario.view import View
from cloudremotecontrol.providers import Instance, MachineSpec, Provider
from cloudremotecontrol.providers.base import machine_tag
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


def _instance(iid: str) -> Instance:
    return Instance(
        id=iid, name="a", label="s.a", status="active", ready=True, tags=(machine_tag("a"),)
    )


def _check(
    tmp_path: Path,
    provider: Provider,
    server: Any,
    state: str = "s",
    made: list[Runner] | None = None,
) -> Runner:
    """One twins check of a runner whose slot ``a`` has instance i-1, the server
    answering through ``server``; the runner, closed, to look at (also in ``made``,
    for a check that raises)."""
    runner = Runner(
        parse_scenario("name: s\nprovider: local\nmachines: {a: }\n"),
        Profile(url="https://127.0.0.1:9", token="t", fingerprint=None),
        provider,
        View(),
        state=LocalState(tmp_path / f"{state}.json"),
    )
    if made is not None:
        made.append(runner)
    try:
        runner.instances["a"] = _instance("i-1")
        runner.client.close()
        runner.client = server
        runner._destroy_twins({"a": "pending"})  # what the events said
    finally:
        runner.close()
    return runner


class WithTwin(Counting):
    """A cloud (twins possible) listing a second instance of slot ``a``."""

    name = "cloud"
    capabilities = dataclasses.replace(LocalProvider.capabilities, twins=True)

    def __init__(self) -> None:
        super().__init__()
        self.destroyed: builtins.list[str] = []

    def list(self, scenario: str) -> builtins.list[Instance]:
        self.listed += 1
        return [_instance("i-1"), _instance("i-0")]

    def destroy(self, instance_id: str) -> None:
        self.destroyed.append(instance_id)


class Server:
    def __init__(self, state: str) -> None:
        self.state = state

    def group(self, name: str) -> dict[str, Any]:
        return {"machines": [{"name": "a", "state": self.state}]}

    def close(self) -> None:
        pass


def test_a_second_instance_is_destroyed_only_while_the_server_says_the_slot_is_pending(
    tmp_path: Path,
) -> None:
    """The events seen may be seconds old: the second instance (the first one made) may
    be the one that enrolled meanwhile. It is destroyed only if the server, asked now,
    still has the machine pending; otherwise it is named for `crc down`."""
    for now, destroyed in (("pending", ["i-0"]), ("ready", [])):
        provider = WithTwin()
        runner = _check(tmp_path, provider, Server(now), now)
        assert provider.destroyed == destroyed, now
        assert runner.twins_left == ({} if destroyed else {"i-0": "a"}), now


class Unreachable(Server):
    def group(self, name: str) -> dict[str, Any]:
        raise Unavailable("cannot reach the server")


def test_a_server_not_answering_leaves_the_second_instance_for_the_next_check(
    tmp_path: Path,
) -> None:
    """Asking the server is part of the check, not of `crc up`'s outcome: a server that
    does not answer then leaves the second instance alone until the next check."""
    provider = WithTwin()
    runner = _check(tmp_path, provider, Unreachable("pending"))
    assert provider.destroyed == [] and runner.twins_left == {}


class InterruptedWhileDestroying(WithTwin):
    """Ctrl-C arrives while the second instance's DELETE is under way."""

    def destroy(self, instance_id: str) -> None:
        self.destroyed.append(instance_id)
        raise KeyboardInterrupt


def test_a_ctrl_c_during_a_second_instances_destroy_still_names_it(tmp_path: Path) -> None:
    """Whether the provider destroyed it is not known: `crc up`'s last lines still count
    it among the machines at the provider (it was forgotten, and only `crc down` would
    have found it)."""
    provider = InterruptedWhileDestroying()
    made: list[Runner] = []
    with pytest.raises(KeyboardInterrupt):  # the Ctrl-C goes on to `crc up`
        _check(tmp_path, provider, Server("pending"), made=made)
    assert provider.destroyed == ["i-0"]
    assert made[0].twins_left == {"i-0": "a"}
