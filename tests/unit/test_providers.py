"""The provider seam: the registry (entry points ``cloudremotecontrol.providers``), the
declared capabilities, and the one destroy-and-verify loop."""

from __future__ import annotations

import builtins
import importlib
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from cloudremotecontrol.errors import InvalidInput, NotFound, ProviderError
from cloudremotecontrol.master.scenario.down import down
from cloudremotecontrol.master.scenario.view import View
from cloudremotecontrol.providers import (
    Capabilities,
    Feature,
    Instance,
    MachineSpec,
    Provider,
    destroy_scenario,
    make_provider,
    provider_class,
    provider_names,
    scenario_tag,
    teardown_providers,
)
from cloudremotecontrol.providers.destroy import CLEANUP
from cloudremotecontrol.providers.local import LocalProvider
from cloudremotecontrol.providers.vultr import VultrProvider


def test_the_built_in_providers_are_found_through_their_entry_points() -> None:
    assert {"local", "vultr"} <= set(provider_names())
    assert provider_class("local") is LocalProvider
    assert provider_class("vultr") is VultrProvider
    assert teardown_providers() == ["vultr"]
    local = make_provider("local", {"network": "host"}, "https://127.0.0.1:8443")
    assert isinstance(local, LocalProvider) and local.network == "host"


def test_what_the_built_in_providers_declare() -> None:
    local, vultr = LocalProvider.capabilities, VultrProvider.capabilities
    assert local.oses == {"linux"} and vultr.oses == {"linux", "windows"}
    assert dict(local.settings) == {"network": ("auto", "netns", "isolated", "plain", "host")}
    assert vultr.required == ("region", "plan", "image") and vultr.machine_options
    assert not local.supports(Feature.SERVER_TEARDOWN)
    assert vultr.supports(Feature.SERVER_TEARDOWN)
    assert {Feature.START, Feature.REBOOT, Feature.CONSOLE} <= local.features
    assert not local.public_addresses and vultr.public_addresses


def test_an_unknown_provider_is_refused_with_the_registered_names() -> None:
    with pytest.raises(InvalidInput, match=r"unknown provider 'hetzner' \(registered: .*local"):
        provider_class("hetzner")


def _distribution(site: Path, name: str, entry_points: str) -> None:
    info = site / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[cloudremotecontrol.providers]\n" + textwrap.dedent(entry_points)
    )


def test_broken_registrations_are_reported_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Installed distributions (metadata on sys.path) that register providers badly."""
    (tmp_path / "crc_bad_plugins.py").write_text(
        textwrap.dedent("""\
            from cloudremotecontrol.providers.local import LocalProvider

            class Misnamed(LocalProvider):
                name = "other"

            class NotAProvider:
                name = "plain"
            """)
    )
    _distribution(
        tmp_path,
        "crc_bad_plugins",
        """\
        ghost = crc_no_such_module:Provider
        misnamed = crc_bad_plugins:Misnamed
        plain = crc_bad_plugins:NotAProvider
        twice = crc_bad_plugins:Misnamed
        """,
    )
    _distribution(tmp_path, "crc_other_plugins", "twice = crc_other:Twice\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert {"ghost", "misnamed", "plain", "twice"} <= set(provider_names())
    with pytest.raises(ProviderError, match=r"'ghost' \(crc_no_such_module:Provider\) cannot be"):
        provider_class("ghost")
    with pytest.raises(ProviderError, match="calls itself 'other'"):
        provider_class("misnamed")
    with pytest.raises(ProviderError, match="is not a cloudremotecontrol Provider class"):
        provider_class("plain")
    with pytest.raises(ProviderError, match="registered more than once"):
        provider_class("twice")
    # The broken ones do not hide the good ones.
    assert teardown_providers() == ["vultr"]


class Cloud(Provider):
    """A cloud in memory: a destroyed instance stays listed for ``lag`` more listings
    (clouds answer DELETE at once and remove the machine later); ``stuck`` ones never go."""

    name = "memory"
    capabilities = Capabilities()

    def __init__(self, ids: list[str], lag: int = 0, stuck: frozenset[str] = frozenset()) -> None:
        self.instances = {
            i: Instance(i, i, i, "running", True, tags=(scenario_tag("s"),)) for i in ids
        }
        self.lag, self.stuck = lag, stuck
        self.deleting: dict[str, int] = {}
        self.calls: list[str] = []

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], *, server_url: str | None) -> Cloud:
        return cls([])

    def create(self, scenario: str, spec: MachineSpec, startup_script: str) -> Instance:
        raise NotImplementedError

    def get(self, instance_id: str) -> Instance | None:
        return self.instances.get(instance_id)

    def wait_running(self, instance_id: str, timeout: float) -> Instance:
        raise NotImplementedError

    def destroy(self, instance_id: str) -> None:
        self.calls.append(f"destroy {instance_id}")
        self.deleting.setdefault(instance_id, self.lag)

    def list(self, scenario: str) -> builtins.list[Instance]:
        self.calls.append("list")
        for i, left in list(self.deleting.items()):
            if i in self.stuck:
                continue
            if left <= 0:
                self.instances.pop(i, None)
            self.deleting[i] = left - 1
        return [i for i in self.instances.values() if i.scenario == scenario]

    def cleanup(self, scenario: str) -> dict[str, int]:
        self.calls.append("cleanup")
        return {"scripts": 2}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_destroy_waits_until_the_provider_lists_nothing_then_cleans_up() -> None:
    cloud, clock = Cloud(["a", "b"], lag=2), Clock()
    seen: list[str] = []
    out = destroy_scenario(
        cloud, "s", on_destroyed=lambda i: seen.append(i.id), sleep=clock.sleep, clock=clock
    )
    assert out.ok and out.left == [] and [i.id for i in out.destroyed] == ["a", "b"] == seen
    assert out.cleaned == {"scripts": 2}
    assert cloud.calls == ["list", "destroy a", "destroy b", "list", "list", "list", "cleanup"]
    assert clock.now == 4.0  # two polls, 2 s apart


def test_destroy_reports_what_is_left_after_the_timeout_and_keeps_the_rest() -> None:
    cloud, clock = Cloud(["a", "b"], stuck=frozenset({"b"})), Clock()
    out = destroy_scenario(cloud, "s", verify_timeout=10, sleep=clock.sleep, clock=clock)
    assert not out.ok and [i.id for i in out.left] == ["b"]
    assert "cleanup" not in cloud.calls  # a machine still there may need what cleanup removes
    assert 10 <= clock.now <= 12


class Flaky(Cloud):
    """``refuse``: how many more times destroying an instance fails (``permanent``: as a
    refusal for good, like Vultr's 403); ``appear``: ids listed from the second listing
    on (made by a request whose answer got lost); ``list_fails``: which listings
    (1-based) fail."""

    def __init__(
        self,
        ids: list[str],
        refuse: dict[str, int] | None = None,
        appear: builtins.list[str] | None = None,
        list_fails: frozenset[int] = frozenset(),
        permanent: bool = False,
        **kw: Any,
    ) -> None:
        super().__init__(ids, **kw)
        self.refuse = dict(refuse or {})
        self.appear = list(appear or [])
        self.list_fails = list_fails
        self.permanent = permanent
        self.listings = 0

    def destroy(self, instance_id: str) -> None:
        if self.refuse.get(instance_id, 0) > 0:
            self.refuse[instance_id] -= 1
            self.calls.append(f"refused {instance_id}")
            raise ProviderError(
                f"API failed DELETE {instance_id}",
                provider=self.name,
                permanent=self.permanent,
                status=403 if self.permanent else 500,
            )
        super().destroy(instance_id)

    def list(self, scenario: str) -> builtins.list[Instance]:
        self.listings += 1
        if self.listings in self.list_fails:
            self.calls.append("list failed")
            raise ProviderError("API failed GET /instances", provider=self.name)
        if self.listings == 2:
            for i in self.appear:
                self.instances[i] = Instance(i, i, i, "running", True, tags=(scenario_tag("s"),))
        return super().list(scenario)


def test_one_machine_the_api_refuses_never_keeps_the_others_and_is_tried_again() -> None:
    cloud, clock = Flaky(["a", "b", "c"], refuse={"a": 2}), Clock()
    out = destroy_scenario(cloud, "s", sleep=clock.sleep, clock=clock)
    assert out.ok and out.errors == {} and out.cleaned == {"scripts": 2}
    assert [i.id for i in out.destroyed] == ["b", "c", "a"]
    assert cloud.calls[:5] == ["list", "refused a", "destroy b", "destroy c", "list"]
    assert cloud.calls.count("refused a") == 2 and cloud.calls.count("destroy a") == 1


def test_a_machine_the_api_keeps_refusing_is_reported_with_its_error() -> None:
    cloud, clock = Flaky(["a", "b"], refuse={"a": 10**6}), Clock()
    out = destroy_scenario(cloud, "s", verify_timeout=10, sleep=clock.sleep, clock=clock)
    assert [i.id for i in out.left] == ["a"] and [i.id for i in out.destroyed] == ["b"]
    assert out.errors == {"a": "API failed DELETE a"}
    assert "cleanup" not in cloud.calls


def test_a_machine_refused_for_good_is_reported_once_the_others_are_gone() -> None:
    """A refusal that asking again cannot help (Vultr's 403) is not asked again, and the
    check ends as soon as only such machines are listed, not when the 3 minutes pass:
    the others are still destroyed and checked gone."""
    cloud, clock = Flaky(["a", "b", "c"], refuse={"a": 10**6}, permanent=True, lag=1), Clock()
    out = destroy_scenario(cloud, "s", sleep=clock.sleep, clock=clock)
    assert [i.id for i in out.left] == ["a"] and [i.id for i in out.destroyed] == ["b", "c"]
    assert out.errors == {"a": "API failed DELETE a"} and out.refused == {"a"}
    assert cloud.calls.count("refused a") == 1 and cloud.calls.count("list") == 3
    assert clock.now == 2.0  # one poll saw b and c gone
    assert "cleanup" not in cloud.calls  # a still needs what cleanup removes


def test_a_machine_listed_late_is_destroyed_too() -> None:
    cloud, clock = Flaky(["a"], appear=["late"]), Clock()
    out = destroy_scenario(cloud, "s", sleep=clock.sleep, clock=clock)
    assert out.ok and [i.id for i in out.destroyed] == ["a", "late"]
    assert cloud.instances == {}


def test_a_listing_that_fails_while_verifying_is_asked_again() -> None:
    cloud, clock = Flaky(["a"], list_fails=frozenset({2})), Clock()
    out = destroy_scenario(cloud, "s", sleep=clock.sleep, clock=clock)
    assert out.ok and [i.id for i in out.destroyed] == ["a"]
    assert cloud.calls == ["list", "destroy a", "list failed", "list", "cleanup"]


def test_a_listing_that_still_fails_when_the_time_is_up_is_raised() -> None:
    cloud, clock = Flaky(["a"], list_fails=frozenset(range(2, 100))), Clock()
    with pytest.raises(ProviderError, match="GET /instances"):
        destroy_scenario(cloud, "s", verify_timeout=10, sleep=clock.sleep, clock=clock)
    assert cloud.calls[:2] == ["list", "destroy a"] and "cleanup" not in cloud.calls


def test_the_first_listing_failing_destroys_nothing_and_is_raised() -> None:
    cloud, clock = Flaky(["a"], list_fails=frozenset({1})), Clock()
    with pytest.raises(ProviderError, match="GET /instances"):
        destroy_scenario(cloud, "s", sleep=clock.sleep, clock=clock)
    assert cloud.calls == ["list failed"]


def test_optional_features_are_refused_unless_declared() -> None:
    cloud = Cloud([])
    for call in (
        lambda: cloud.start("a"),
        lambda: cloud.reboot("a"),
        lambda: cloud.console_tail("a"),
        cloud.teardown_credential,
        lambda: Cloud.for_teardown("key"),
    ):
        with pytest.raises(ProviderError, match="memory"):
            call()
    assert cloud.describe() == "" and cloud.cleanup("s") == {"scripts": 2}


def test_a_provider_must_implement_the_required_operations() -> None:
    class Half(Provider):
        name = "half"

        @classmethod
        def from_settings(cls, settings: Mapping[str, Any], *, server_url: str | None) -> Half:
            return cls()

    with pytest.raises(TypeError, match="abstract"):
        Half.from_settings({}, server_url=None)


class Notes(View):
    def __init__(self) -> None:
        self.notes: list[tuple[str, dict[str, Any]]] = []

    def info(self, text: str, **doc: Any) -> None:
        self.notes.append((text, doc))


def test_down_with_a_machine_left_says_how_to_try_again() -> None:
    cloud, view = Cloud(["a", "b"], stuck=frozenset({"b"})), Notes()
    nap = lambda seconds: time.sleep(0.05)  # noqa: E731 -- the real clock runs out
    assert down("s", cloud, None, view, verify_timeout=0.3, sleep=nap) == 1
    text, doc = view.notes[-1]
    assert doc["left"] == ["b"] and doc["destroyed"] == ["a", "b"]
    assert text == (
        "still at memory after 0.3 s: b; group s is kept while they are (`crc status s`); "
        "to try again: `crc down --group s --provider memory` (or `crc down` with the "
        "scenario file)"
    )


def test_down_says_why_a_machine_was_not_destroyed() -> None:
    cloud, view = Flaky(["a", "b"], refuse={"b": 10**6}), Notes()
    nap = lambda seconds: time.sleep(0.05)  # noqa: E731 -- the real clock runs out
    assert down("s", cloud, None, view, verify_timeout=0.3, sleep=nap) == 1
    text, doc = view.notes[-1]
    assert doc["left"] == ["b"] and doc["destroyed"] == ["a"]
    assert doc["errors"] == {"b": "API failed DELETE b"}
    assert text.startswith(
        "still at memory after 0.3 s: b (not destroyed: API failed DELETE b); group s is kept"
    )


def test_down_says_what_is_left_while_it_checks_not_only_at_the_end() -> None:
    """The check can take its 3 minutes (a machine the provider keeps failing to
    destroy): what is left, and why, is said after 10 s and then every 30 s, not only
    when the time is up."""
    cloud, view, clock = Flaky(["a", "b"], refuse={"b": 10**6}), Notes(), Clock()
    assert down("s", cloud, None, view, verify_timeout=75, sleep=clock.sleep, clock=clock) == 1
    waits = [(text, doc) for text, doc in view.notes if doc.get("event") == "waiting"]
    assert [doc["seconds"] for _, doc in waits] == [10.0, 40.0, 70.0]
    assert waits[0][0] == (
        "still at memory after 10 s: b (not destroyed: API failed DELETE b); checking "
        "again every 2 s for up to 65 s more"
    )
    assert waits[0][1]["left"] == ["b"] and waits[0][1]["errors"] == {"b": "API failed DELETE b"}
    assert view.notes[-1][1]["event"] == "down"


def test_down_says_nothing_of_waiting_when_the_machines_go_quickly() -> None:
    cloud, view, clock = Cloud(["a", "b"], lag=2), Notes(), Clock()
    assert down("s", cloud, None, view, sleep=clock.sleep, clock=clock) == 0
    assert [doc.get("event") for _, doc in view.notes] == [None, None, "down"]


def test_down_reports_a_machine_refused_for_good_without_waiting_out_the_time() -> None:
    cloud, view = Flaky(["a", "b"], refuse={"b": 10**6}, permanent=True), Notes()
    nap = lambda seconds: time.sleep(0.05)  # noqa: E731 -- the real clock
    assert down("s", cloud, None, view, verify_timeout=10, sleep=nap) == 1
    assert cloud.calls == ["list", "destroy a", "refused b", "list"]  # no second try
    text, doc = view.notes[-1]
    assert doc["left"] == ["b"] and doc["destroyed"] == ["a"]
    assert doc["errors"] == {"b": "API failed DELETE b"}
    assert text.startswith("still at memory: b (not destroyed: API failed DELETE b); group s is")


class CleanupFails(Cloud):
    def cleanup(self, scenario: str) -> dict[str, int]:
        self.calls.append("cleanup failed")
        raise ProviderError("API failed DELETE /startup-scripts/s1", provider=self.name)


def test_a_cleanup_the_provider_refuses_leaves_the_machines_destroyed() -> None:
    """Once every machine is gone, a clean-up that fails (Vultr's startup scripts) is
    reported, not raised: nothing bills any more, and the next ``crc down`` cleans up."""
    cloud, clock = CleanupFails(["a", "b"]), Clock()
    out = destroy_scenario(cloud, "s", sleep=clock.sleep, clock=clock)
    assert out.ok and [i.id for i in out.destroyed] == ["a", "b"]
    assert out.cleaned == {} and out.errors == {CLEANUP: "API failed DELETE /startup-scripts/s1"}
    assert cloud.calls[-1] == "cleanup failed"


class Server:
    """The calls ``down`` makes of the server."""

    def __init__(self) -> None:
        self.deleted: list[str] = []

    def delete_group(self, group: str) -> dict[str, Any]:
        self.deleted.append(group)
        return {"machines_revoked": 2}

    def kv_get(self, group: str, key: str) -> dict[str, Any]:
        # No `crc up` holds the group (no lease key), as the server answers then.
        raise NotFound(f"no key {key!r} in group {group!r}")


def test_down_keeps_the_group_and_the_local_state_while_a_machine_is_left(
    tmp_path: Path,
) -> None:
    """A machine still at the provider (billed) stays listed by the group, which names
    the provider the next `crc down --group` asks; the local state stays with it. The
    `crc down` that leaves nothing deletes both."""
    from cloudremotecontrol.master.scenario.state import LocalState

    state = LocalState(tmp_path / "s.json")
    state.save(keys={"c": "crck_x"})
    server, view = Server(), Notes()
    cloud = Flaky(["a", "b"], refuse={"b": 1}, permanent=True)
    nap = lambda seconds: None  # noqa: E731
    assert down("s", cloud, server, view, state, verify_timeout=10, sleep=nap) == 1  # type: ignore[arg-type]
    _, doc = view.notes[-1]
    assert doc["left"] == ["b"] and (doc["group_deleted"], doc["revoked"]) == (False, 0)
    assert server.deleted == [] and state.path.exists()
    assert down("s", cloud, server, Notes(), state, verify_timeout=10, sleep=nap) == 0  # type: ignore[arg-type]
    assert server.deleted == ["s"] and not state.path.exists()
