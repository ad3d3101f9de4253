"""Second instances of a slot (twins): which providers `crc up` asks for them, and which
instance it keeps as the machine (scenario/twins.py)."""

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
from cloudremotecontrol.master.scenario.twins import Verdict, machine_addresses, resolve_twins
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
        runner._destroy_twins()
    finally:
        runner.close()
    assert provider.listed == 0
    assert not LocalProvider.capabilities.twins


def _instance(iid: str, ip: str | None = None, private: str | None = None) -> Instance:
    return Instance(
        id=iid,
        name="a",
        label="s.a",
        status="active",
        ready=True,
        main_ip=ip,
        private_ip=private,
        tags=(machine_tag("a"),),
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
        runner._destroy_twins()
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


# -- which instance is the machine (twins.py) --------------------------------------------


def _enrolled(public_ip: str | None = None, **facts: list[str]) -> dict[str, Any]:
    """Machine ``a`` as the server shows it once enrolled (``GET /v1/groups/{group}``)."""
    return {
        "name": "a",
        "state": "ready",
        "ips": facts.get("ips", []),
        "public_ip": public_ip,
        "facts": facts,
    }


HELD, FIRST = _instance("i-1", "192.0.2.11"), _instance("i-0", "192.0.2.10")


def test_while_the_machine_is_pending_the_instance_waited_for_is_kept() -> None:
    """Nobody used the key yet: either instance can enroll, the other goes."""
    verdict = resolve_twins(HELD, [FIRST], {"name": "a", "state": "pending", "facts": {}})
    assert verdict == Verdict(HELD, destroy=(FIRST,))


@pytest.mark.parametrize(
    "machine",
    [
        _enrolled("192.0.2.10"),  # the address its agent connected from
        _enrolled("10.9.9.9", ips=["192.0.2.10"], public_ips=["192.0.2.10"]),  # behind NAT
        _enrolled(None, ips=["2001:db8::5", "192.0.2.10"]),
    ],
)
def test_the_instance_whose_address_the_enrolled_machine_has_is_the_machine(
    machine: dict[str, Any],
) -> None:
    """The first instance made (a lost answer) took the key: it is kept, and the
    instance `crc up` waited for, which can never enroll, goes."""
    verdict = resolve_twins(HELD, [FIRST], machine)
    assert verdict == Verdict(FIRST, destroy=(HELD,), address="192.0.2.10")
    # The same when the machine is the one `crc up` waited for.
    assert resolve_twins(FIRST, [HELD], machine) == verdict


def test_ipv6_addresses_match_however_each_side_writes_them() -> None:
    held = dataclasses.replace(HELD, main_ip=None, v6_main_ip="2001:0db8:0000:0000::0011")
    first = dataclasses.replace(FIRST, main_ip=None, v6_main_ip="2001:0db8:0000:0000::0010")
    verdict = resolve_twins(held, [first], _enrolled(None, ips=["2001:db8::10"]))
    assert verdict.keep is first and verdict.destroy == (held,)


def test_a_public_address_decides_over_a_private_one_both_instances_could_have() -> None:
    """Private addresses repeat (another VPC, a container bridge): one that both the
    machine and the other instance have does not outweigh the public address."""
    held = _instance("i-1", "192.0.2.11", private="172.17.0.1")
    first = _instance("i-0", "192.0.2.10", private="10.1.96.3")
    machine = _enrolled(None, ips=["192.0.2.10", "172.17.0.1"], private_ips=["172.17.0.1"])
    assert resolve_twins(held, [first], machine).keep is first
    # Without public addresses, the private one decides.
    held = dataclasses.replace(held, main_ip=None, private_ip="10.1.96.4")
    first = dataclasses.replace(first, main_ip=None)
    verdict = resolve_twins(held, [first], _enrolled(None, private_ips=["10.1.96.3"]))
    assert verdict == Verdict(first, destroy=(held,), address="10.1.96.3")


@pytest.mark.parametrize(
    "machine",
    [
        _enrolled(None),  # enrolled, no facts yet
        _enrolled("198.51.100.1", ips=["10.0.0.5"]),  # a proxy's address; a private one
        _enrolled("192.0.2.10", ips=["192.0.2.11"]),  # both instances claim it
        {"name": "a", "state": "ready", "public_ip": "not an address", "facts": None},
        None,  # the server no longer lists the machine
    ],
)
def test_when_nothing_shows_which_instance_enrolled_none_is_destroyed(
    machine: dict[str, Any] | None,
) -> None:
    verdict = resolve_twins(HELD, [FIRST], machine)
    assert verdict == Verdict(HELD, unknown=(FIRST,))


def test_machine_addresses_take_only_addresses_from_what_the_machine_says() -> None:
    machine = _enrolled("192.0.2.1", ips=["2001:DB8::1", "host.example", "1.2.3"])
    machine["facts"]["public_ips"] = "192.0.2.9"  # not a list: ignored
    assert machine_addresses(machine) == {"192.0.2.1", "2001:db8::1"}


class WithLiveTwin(WithTwin):
    """The first instance of ``a`` (i-0, a lost answer) is the one that enrolled."""

    def list(self, scenario: str) -> builtins.list[Instance]:
        self.listed += 1
        return [i for i in (HELD, FIRST) if i.id not in self.destroyed]


class Enrolled(Server):
    def group(self, name: str) -> dict[str, Any]:
        return {"machines": [_enrolled("192.0.2.10", ips=["192.0.2.10"])]}


def test_crc_up_goes_on_with_the_twin_that_enrolled_and_records_it(tmp_path: Path) -> None:
    provider = WithLiveTwin()
    runner = _check(tmp_path, provider, Enrolled("ready"))
    assert provider.destroyed == ["i-1"]
    assert runner.instances["a"].id == "i-0" and runner.twins_left == {}
    assert LocalState(tmp_path / "s.json").instances == {"a": "i-0"}
