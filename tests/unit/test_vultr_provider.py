"""VultrProvider against the fake Vultr API (loopback only), which checks every request
and response against Vultr's OpenAPI file: each test ends with zero violations."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jsonschema
import pytest

from cloudremotecontrol.providers.base import (
    Instance,
    MachineSpec,
    Provider,
    ProviderError,
    instance_label,
    machine_tag,
    scenario_tag,
)
from cloudremotecontrol.providers.destroy import destroy_scenario
from cloudremotecontrol.providers.vultr import RetryPolicy, VultrProvider, _to_instance
from fakes.vultr_api import (
    FakeVultr,
    RecordedRequest,
    create_app,
    to_json_schema,
)

FAST = RetryPolicy(rate_limit_retries=4, server_error_retries=2, base_delay=0.01, max_delay=0.05)
LINUX_SCRIPT = "#!/bin/bash\nset -eu\necho 'crc bootstrap' > /tmp/crc \u2713\n"
WINDOWS_SCRIPT = "powershell -NoProfile -Command \"Write-Output 'crc'\"\r\n"


def linux(name: str = "web", **kw: Any) -> MachineSpec:
    return MachineSpec(name=name, os="linux", region="ewr", plan="vc2-1c-1gb", image="2284", **kw)


def windows(name: str = "win", **kw: Any) -> MachineSpec:
    return MachineSpec(name=name, os="windows", region="ewr", plan="vc2-2c-4gb", image="2514", **kw)


@pytest.fixture
def fake_factory() -> Iterator[Callable[..., FakeVultr]]:
    started: list[FakeVultr] = []

    def make(**kw: Any) -> FakeVultr:
        kw.setdefault("ready_delay", 0.05)
        fake = FakeVultr(**kw).start()
        started.append(fake)
        return fake

    yield make
    for fake in started:
        fake.stop()
        assert fake.state.boot_errors == []


@pytest.fixture
def fake(fake_factory: Callable[..., FakeVultr]) -> FakeVultr:
    return fake_factory()


@pytest.fixture
def connect() -> Iterator[Callable[..., VultrProvider]]:
    made: list[VultrProvider] = []

    def make(fake: FakeVultr, **kw: Any) -> VultrProvider:
        kw.setdefault("api_key", fake.api_key)
        kw.setdefault("retry", FAST)
        kw.setdefault("poll_interval", 0.01)
        p = VultrProvider(base_url=fake.url, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


@pytest.fixture
def vultr(fake: FakeVultr, connect: Callable[..., VultrProvider]) -> VultrProvider:
    return connect(fake)


def sent(fake: FakeVultr, method: str, path: str) -> list[RecordedRequest]:
    return [r for r in fake.requests if r.method == method and r.path == path]


def assert_clean(fake: FakeVultr) -> None:
    """Every request and response matched Vultr's OpenAPI file."""
    assert fake.violations == []


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# -- create -----------------------------------------------------------------------------


def test_linux_create_sends_script_as_base64_user_data_with_scenario_tags_and_label(
    fake: FakeVultr, vultr: VultrProvider
) -> None:
    inst = vultr.create("demo", linux(tags=("team-x",)), LINUX_SCRIPT)

    (req,) = sent(fake, "POST", "/instances")
    body = req.json
    assert base64.b64decode(body["user_data"]).decode() == LINUX_SCRIPT
    assert body["tags"] == ["crc-scenario:demo", "crc-machine:web", "team-x"]
    assert body["label"] == "demo-web" == instance_label("demo", "web")
    assert body["hostname"] == "web"
    assert (body["region"], body["plan"], body["os_id"]) == ("ewr", "vc2-1c-1gb", 2284)
    assert "script_id" not in body
    assert sent(fake, "POST", "/startup-scripts") == []
    assert inst.name == "web" and inst.label == "demo-web" and inst.scenario == "demo"
    assert inst.status == "pending" and not inst.ready and inst.main_ip is None
    assert set(inst.tags) >= {scenario_tag("demo"), machine_tag("web")}
    assert_clean(fake)


def test_default_password_is_captured_at_creation_only_and_kept_out_of_repr(
    fake: FakeVultr, vultr: VultrProvider
) -> None:
    inst = vultr.create("demo", linux(), LINUX_SCRIPT)

    assert inst.default_password == fake.state.passwords[inst.id]
    assert inst.default_password not in repr(inst)
    again = vultr.get(inst.id)
    assert again is not None and again.default_password is None
    assert_clean(fake)


def test_windows_create_uses_a_boot_startup_script_that_destroy_deletes(
    fake: FakeVultr, vultr: VultrProvider
) -> None:
    inst = vultr.create("demo", windows(), WINDOWS_SCRIPT)

    (script_req,) = sent(fake, "POST", "/startup-scripts")
    assert script_req.json["type"] == "boot"
    assert script_req.json["name"] == "crc:demo/win"
    assert base64.b64decode(script_req.json["script"]).decode() == WINDOWS_SCRIPT
    (script_id,) = fake.state.scripts
    (req,) = sent(fake, "POST", "/instances")
    assert req.json["script_id"] == script_id
    assert "user_data" not in req.json
    assert f"crc-script:{script_id}" in inst.tags

    vultr.destroy(inst.id)

    assert fake.state.scripts == {} and fake.state.instances == {}
    assert [r.status for r in sent(fake, "DELETE", f"/startup-scripts/{script_id}")] == [204]
    assert_clean(fake)


@pytest.mark.parametrize("after_handling", [True, False])
def test_a_startup_script_whose_answer_was_lost_is_made_once(
    fake: FakeVultr, vultr: VultrProvider, after_handling: bool
) -> None:
    """A 5xx on create-startup-script may come after Vultr made the script: it is not
    posted again blindly, so the machine ends with one script (holding its key)."""
    fake.state.fail_next(500, after_handling=after_handling)

    inst = vultr.create("demo", windows(), WINDOWS_SCRIPT)

    assert [r.status for r in sent(fake, "POST", "/startup-scripts")] == [500, 201]
    (script_id,) = fake.state.scripts
    assert f"crc-script:{script_id}" in inst.tags
    vultr.destroy(inst.id)
    assert fake.state.scripts == {} and fake.state.instances == {}
    assert_clean(fake)


def test_windows_startup_script_is_removed_when_the_instance_is_refused(
    fake: FakeVultr, vultr: VultrProvider
) -> None:
    with pytest.raises(ProviderError, match=r"rejected POST /instances \(HTTP 400\)"):
        vultr.create("demo", MachineSpec("win", "windows", "", "vc2-2c-4gb", "2514"), "x")

    assert fake.state.scripts == {} and fake.state.instances == {}
    assert_clean(fake)


def test_extra_fields_pass_through_but_bookkeeping_fields_are_refused(
    fake: FakeVultr, vultr: VultrProvider
) -> None:
    vultr.create("demo", linux(extra={"enable_ipv6": True, "attach_vpc": ["vpc-1"]}), "x")
    assert sent(fake, "POST", "/instances")[0].json["attach_vpc"] == ["vpc-1"]

    extras: list[dict[str, Any]] = [{"user_data": "eA=="}, {"tags": []}, {"no_such_field": 1}]
    for extra in extras:
        with pytest.raises(ProviderError, match="not allowed"):
            vultr.create("demo", linux("db", extra=extra), "x")
    assert len(sent(fake, "POST", "/instances")) == 1
    assert_clean(fake)


def test_boot_hook_receives_the_decoded_linux_and_windows_scripts(
    fake_factory: Callable[..., FakeVultr], connect: Callable[..., VultrProvider]
) -> None:
    booted: dict[str, bytes] = {}
    fake = fake_factory(boot=lambda inst, script: booted.__setitem__(inst["label"], script))
    vultr = connect(fake)

    vultr.create("demo", linux(), LINUX_SCRIPT)
    vultr.create("demo", windows(), WINDOWS_SCRIPT)

    wait_for(lambda: len(fake.state.booted) == 2)
    assert booted == {"demo-web": LINUX_SCRIPT.encode(), "demo-win": WINDOWS_SCRIPT.encode()}
    assert_clean(fake)


def test_halt_hook_runs_once_an_instance_is_deleted(
    fake_factory: Callable[..., FakeVultr], connect: Callable[..., VultrProvider]
) -> None:
    halted: list[str] = []
    fake = fake_factory(halt=halted.append)
    vultr = connect(fake)
    keep = vultr.create("demo", linux("db"), LINUX_SCRIPT)
    gone = vultr.create("demo", linux("web"), LINUX_SCRIPT)

    vultr.destroy(gone.id)
    vultr.destroy(gone.id)  # already gone: no second halt

    wait_for(lambda: fake.state.halted == [gone.id])
    assert halted == [gone.id] and keep.id in fake.state.instances
    assert_clean(fake)


# -- list / get / destroy -------------------------------------------------------------------


def test_list_finds_every_instance_of_the_scenario_across_pages(
    fake: FakeVultr, connect: Callable[..., VultrProvider]
) -> None:
    vultr = connect(fake, page_size=2)
    mine = {vultr.create("alpha", linux(f"m{i}"), "x").id for i in range(5)}
    vultr.create("beta", linux("other"), "x")
    vultr.create("alphabet", linux("other"), "x")

    found = vultr.list("alpha")

    assert {i.id for i in found} == mine
    assert all(isinstance(i, Instance) and i.scenario == "alpha" for i in found)
    pages = sent(fake, "GET", "/instances")
    assert len(pages) == 3
    assert all(p.query["tag"] == "crc-scenario:alpha" and p.query["per_page"] == "2" for p in pages)
    assert "cursor" not in pages[0].query and all("cursor" in p.query for p in pages[1:])
    assert vultr.list("gamma") == []
    assert_clean(fake)


def test_a_list_that_never_ends_is_a_clear_error(fake: FakeVultr, vultr: VultrProvider) -> None:
    """An API that keeps handing out new cursors (each page says there is a next one)
    is followed for 500 pages at most, then refused with a clear error."""
    vultr.create("demo", linux(), "x")
    fake.state.endless_pages = 1000

    with pytest.raises(ProviderError, match=r"next page after 500 pages \(1 item\(s\) read\)"):
        vultr.list("demo")

    assert len(sent(fake, "GET", "/instances")) == 500
    assert_clean(fake)


def test_get_of_a_missing_instance_is_none(fake: FakeVultr, vultr: VultrProvider) -> None:
    assert vultr.get("0d4f9c1e-0000-4000-8000-000000000000") is None
    assert vultr.get("../account") is None  # ids are one quoted path segment
    assert_clean(fake)


def test_destroy_is_idempotent(fake: FakeVultr, vultr: VultrProvider) -> None:
    inst = vultr.create("demo", linux(), "x")

    vultr.destroy(inst.id)
    vultr.destroy(inst.id)
    vultr.destroy("never-existed")

    assert vultr.get(inst.id) is None and vultr.list("demo") == []
    assert [r.status for r in sent(fake, "DELETE", f"/instances/{inst.id}")] == [204]
    assert_clean(fake)


def test_destroying_a_scenario_goes_on_past_an_instance_vultr_fails_for(
    fake: FakeVultr, vultr: VultrProvider
) -> None:
    ids = [vultr.create("demo", linux(n), "x").id for n in ("a", "b", "c")]
    first = vultr.list("demo")[0].id
    # Vultr fails every try to delete the first one listed (FAST: 1 + 2 retries).
    fake.state.fail_next(500, times=3, method="DELETE", path=f"/instances/{first}")

    out = destroy_scenario(vultr, "demo", sleep=lambda s: None)

    assert out.ok and out.errors == {} and fake.state.instances == {}
    assert sorted(i.id for i in out.destroyed) == sorted(ids)
    assert out.destroyed[-1].id == first  # tried again once the others were gone
    assert [r.status for r in sent(fake, "DELETE", f"/instances/{first}")] == [500] * 3 + [204]
    assert_clean(fake)


def test_an_instance_vultr_forbids_deleting_is_reported_at_once_with_vultr_words(
    fake: FakeVultr, vultr: VultrProvider
) -> None:
    """A 403 (the key's access control, say) fails the same way however often it is
    sent: it is sent once, the others are destroyed and checked gone, and the check ends
    then instead of after 3 minutes of asking again."""
    ids = [vultr.create("demo", linux(n), "x").id for n in ("a", "b", "c")]
    first = vultr.list("demo")[0].id
    fake.state.fail_next(
        403, times=100, method="DELETE", path=f"/instances/{first}", message="IP not allowed"
    )
    now = [0.0]

    out = destroy_scenario(
        vultr, "demo", sleep=lambda s: now.__setitem__(0, now[0] + s), clock=lambda: now[0]
    )

    assert [i.id for i in out.left] == [first] and out.refused == {first}
    assert sorted(i.id for i in out.destroyed) == sorted(set(ids) - {first})
    assert "(HTTP 403): IP not allowed" in out.errors[first]
    assert [r.status for r in sent(fake, "DELETE", f"/instances/{first}")] == [403]
    assert now[0] == 0.0 and list(fake.state.instances) == [first]
    assert_clean(fake)


def test_a_delete_refused_as_not_yet_is_asked_again_until_it_passes(
    fake: FakeVultr, vultr: VultrProvider
) -> None:
    """A 400 or 409 to a DELETE may mean "not now" (an instance still being made or
    locked): unlike a 403, it is asked again at the next listings, and the machine
    goes once Vultr accepts."""
    inst = vultr.create("demo", linux(), "x")
    fake.state.fail_next(400, times=2, method="DELETE", message="Server is currently locked")
    now = [0.0]

    out = destroy_scenario(
        vultr, "demo", sleep=lambda s: now.__setitem__(0, now[0] + s), clock=lambda: now[0]
    )

    assert out.ok and [i.id for i in out.destroyed] == [inst.id] and out.refused == set()
    assert [r.status for r in sent(fake, "DELETE", f"/instances/{inst.id}")] == [400, 400, 204]
    assert fake.state.instances == {}
    assert_clean(fake)


def test_an_instance_gone_before_its_delete_counts_as_destroyed(
    fake: FakeVultr, vultr: VultrProvider
) -> None:
    """Vultr answers DELETE 404 for an instance it no longer has (deleted in the portal
    meanwhile): that is what was asked, not a failure."""
    inst = vultr.create("demo", linux(), "x")
    fake.state.fail_next(404, method="DELETE", after_handling=True, message="Invalid instance-id.")

    out = destroy_scenario(vultr, "demo", sleep=lambda s: None)

    assert out.ok and [i.id for i in out.destroyed] == [inst.id] and out.errors == {}
    assert [r.status for r in sent(fake, "DELETE", f"/instances/{inst.id}")] == [404]
    assert_clean(fake)


def test_only_refusals_for_good_are_permanent(fake: FakeVultr, vultr: VultrProvider) -> None:
    for status, permanent in ((400, True), (403, True), (408, False), (500, False)):
        fake.state.fail_next(status, times=1 if status < 500 else 3)  # FAST: 2 retries
        with pytest.raises(ProviderError) as err:
            vultr.list("demo")
        assert err.value.permanent is permanent, status
    assert_clean(fake)


def test_an_instance_whose_startup_script_cannot_be_deleted_still_counts_as_destroyed(
    fake: FakeVultr, vultr: VultrProvider
) -> None:
    inst = vultr.create("demo", windows(), "x")
    fake.state.fail_next(503, times=3, method="DELETE", path="/startup-scripts/")

    out = destroy_scenario(vultr, "demo", sleep=lambda s: None)

    assert out.ok and [i.id for i in out.destroyed] == [inst.id] and fake.state.instances == {}
    assert out.cleaned == {"startup_scripts": 1} and fake.state.scripts == {}  # by name
    assert_clean(fake)


def test_purge_startup_scripts_cleans_up_after_instances_deleted_elsewhere(
    fake: FakeVultr, vultr: VultrProvider
) -> None:
    inst = vultr.create("demo", windows(), "x")
    vultr.create("other", windows(), "x")
    fake.state.instances.pop(inst.id)  # deleted in the portal: destroy cannot see the tag

    vultr.destroy(inst.id)
    assert vultr.purge_startup_scripts("demo") == 1

    assert [s["name"] for s in fake.state.scripts.values()] == ["crc:other/win"]
    assert_clean(fake)


# -- waiting ------------------------------------------------------------------------------


def test_wait_running_returns_the_booted_instance_with_its_ip(
    fake: FakeVultr, vultr: VultrProvider
) -> None:
    inst = vultr.create("demo", linux(extra={"enable_vpc": True}), "x")

    ready = vultr.wait_running(inst.id, timeout=5)

    assert ready.ready and ready.status == "active"
    assert ready.main_ip and ready.main_ip.startswith("192.0.2.")
    assert ready.private_ip and ready.private_ip.startswith("10.")
    assert len(sent(fake, "GET", f"/instances/{inst.id}")) >= 2  # it really polled
    assert_clean(fake)


def test_wait_running_times_out_with_a_clear_error(
    fake_factory: Callable[..., FakeVultr], connect: Callable[..., VultrProvider]
) -> None:
    fake = fake_factory(ready_delay=60)
    vultr = connect(fake)
    inst = vultr.create("demo", linux(), "x")

    with pytest.raises(ProviderError, match=r"not running after 0.1s \(status pending"):
        vultr.wait_running(inst.id, timeout=0.1)
    vultr.destroy(inst.id)
    with pytest.raises(ProviderError, match="disappeared"):
        vultr.wait_running(inst.id, timeout=1)
    assert_clean(fake)


# -- rate limits, server errors, keys ---------------------------------------------------------


def test_rate_limited_requests_back_off_and_recover(
    fake_factory: Callable[..., FakeVultr], connect: Callable[..., VultrProvider]
) -> None:
    fake = fake_factory(rate_limit=4)
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        time.sleep(s)

    vultr = connect(
        fake, sleep=sleep, retry=RetryPolicy(rate_limit_retries=10, base_delay=0.05, max_delay=0.4)
    )
    inst = vultr.create("demo", linux(), "x")

    for _ in range(5):  # 6 requests against a limit of 4 per second
        assert vultr.get(inst.id) is not None

    limited = [r for r in fake.requests if r.status == 429]
    assert limited, "the fake never rate-limited: the test proves nothing"
    assert len(sleeps) == len(limited)
    assert_clean(fake)


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap(
    fake: FakeVultr, connect: Callable[..., VultrProvider]
) -> None:
    sleeps: list[float] = []
    vultr = connect(
        fake,
        sleep=sleeps.append,
        retry=RetryPolicy(rate_limit_retries=5, base_delay=0.01, max_delay=0.04),
    )
    fake.state.fail_next(429, 4)

    assert vultr.list("demo") == []

    caps = [0.01, 0.02, 0.04, 0.04]  # base * 2**attempt, capped at max_delay
    assert len(sleeps) == 4
    assert all(cap / 2 <= s <= cap for s, cap in zip(sleeps, caps, strict=True))
    assert_clean(fake)


def test_retry_after_is_honoured(fake: FakeVultr, connect: Callable[..., VultrProvider]) -> None:
    sleeps: list[float] = []
    vultr = connect(fake, sleep=sleeps.append)
    fake.state.fail_next(429, 2, retry_after=0.03)

    assert vultr.list("demo") == []
    assert sleeps == [0.03, 0.03]
    assert_clean(fake)


def test_rate_limit_gives_up_after_the_bound_with_a_clear_error(
    fake: FakeVultr, connect: Callable[..., VultrProvider]
) -> None:
    sleeps: list[float] = []
    vultr = connect(fake, sleep=sleeps.append)
    fake.state.fail_next(429, 100, message="Rate limit exceeded.")

    with pytest.raises(
        ProviderError,
        match=r"rate-limiting GET /instances \(HTTP 429\) "
        r"after 4 retries",
    ) as err:
        vultr.list("demo")

    assert len(fake.requests) == 5 and len(sleeps) == 4
    assert err.value.details["status"] == 429 and err.value.exit_code == 8
    assert_clean(fake)


def test_server_errors_are_retried_a_few_times(fake: FakeVultr, vultr: VultrProvider) -> None:
    fake.state.fail_next(503, 2)
    assert vultr.list("demo") == []

    fake.state.fail_next(500, 3, message="Internal error")
    with pytest.raises(
        ProviderError,
        match=r"Vultr failed GET /instances \(HTTP 500\): "
        r"Internal error",
    ):
        vultr.list("demo")
    assert_clean(fake)


def test_create_after_a_server_error_looks_before_retrying_and_makes_one_instance(
    fake: FakeVultr, vultr: VultrProvider
) -> None:
    fake.state.fail_next(502)

    inst = vultr.create("demo", linux(), "x")

    assert [r.status for r in sent(fake, "POST", "/instances")] == [502, 202]
    assert sent(fake, "GET", "/instances")  # looked for it before posting again
    assert list(fake.state.instances) == [inst.id]
    assert_clean(fake)


def test_create_whose_answer_was_lost_finds_the_instance_instead_of_making_another(
    fake: FakeVultr, vultr: VultrProvider
) -> None:
    fake.state.fail_next(504, after_handling=True)

    inst = vultr.create("demo", linux(), "x")

    assert [r.status for r in sent(fake, "POST", "/instances")] == [504]
    assert list(fake.state.instances) == [inst.id] and inst.name == "web"
    assert inst.default_password is None  # only the lost answer had it
    assert_clean(fake)


def test_bad_api_key_gives_a_clear_error(
    fake: FakeVultr, connect: Callable[..., VultrProvider]
) -> None:
    vultr = connect(fake, api_key="not-the-key")

    with pytest.raises(ProviderError) as err:
        vultr.list("demo")

    assert str(err.value).startswith("Vultr refused the API key (HTTP 401): check VULTR_API_KEY")
    assert err.value.code == "provider_error" and err.value.details["status"] == 401
    assert "not-the-key" not in str(err.value)
    assert len(fake.requests) == 1  # a refused key is not retried
    assert_clean(fake)


def test_missing_api_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VULTR_API_KEY", raising=False)
    with pytest.raises(ProviderError, match="set VULTR_API_KEY"):
        VultrProvider(base_url="http://127.0.0.1:9/v2")


def test_key_and_url_come_from_the_environment(
    fake: FakeVultr, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VULTR_API_KEY", fake.api_key)
    monkeypatch.setenv("CRC_VULTR_API_URL", fake.url)
    with VultrProvider(retry=FAST) as vultr:
        assert isinstance(vultr, Provider) and vultr.name == "vultr"
        assert vultr.base_url == fake.url
        assert vultr.list("demo") == []
        assert fake.api_key not in repr(vultr)
    assert_clean(fake)


def test_unreachable_api_is_a_clear_error() -> None:
    with (
        socket_port() as port,
        VultrProvider(
            "k", f"http://127.0.0.1:{port}/v2", retry=FAST, sleep=lambda s: None
        ) as vultr,
    ):
        with pytest.raises(ProviderError, match="cannot reach the Vultr API"):
            vultr.get("x")


def test_a_create_that_never_reached_vultr_says_it_made_nothing() -> None:
    """Refused on every try: the POST never left this computer (``unsent``), so the
    caller knows no machine was made."""
    with (
        socket_port() as port,
        VultrProvider(
            "k", f"http://127.0.0.1:{port}/v2", retry=FAST, sleep=lambda s: None
        ) as vultr,
    ):
        with pytest.raises(ProviderError, match="cannot reach the Vultr API") as err:
            vultr.create("demo", linux(), "x")
    assert err.value.unsent and not err.value.permanent


def test_a_create_refused_after_a_try_whose_answer_was_lost_may_have_made_it(
    fake: FakeVultr, connect: Callable[..., VultrProvider]
) -> None:
    """The first POST got a 502 (Vultr may have made the machine, and not list it yet);
    the API is gone before the next: that one reached nobody, but the create as a whole
    may have made the machine, so its error is not ``unsent``."""
    fake.state.fail_next(502, method="POST", path="/instances")
    vultr = connect(fake, sleep=lambda s: fake.stop())  # gone after the look-up

    with pytest.raises(ProviderError, match="cannot reach the Vultr API") as err:
        vultr.create("demo", linux(), "x")

    assert not err.value.unsent and not err.value.permanent
    assert [r.status for r in sent(fake, "POST", "/instances")] == [502]
    assert sent(fake, "GET", "/instances")  # looked for it before the API went
    assert_clean(fake)


def test_a_create_rate_limited_on_every_try_says_it_made_nothing(
    fake: FakeVultr, connect: Callable[..., VultrProvider]
) -> None:
    """Vultr answers 429 to a request it did not carry out (its API doc, "Rate Limit"):
    a create refused so on every try made no machine (``unsent``), as one that never
    connected."""
    fake.state.fail_next(429, 100, method="POST", path="/instances")
    vultr = connect(fake, sleep=lambda s: None)

    with pytest.raises(ProviderError, match=r"rate-limiting POST /instances \(HTTP 429\)") as err:
        vultr.create("demo", linux(), "x")

    assert err.value.unsent and not err.value.permanent
    assert len(sent(fake, "POST", "/instances")) == FAST.rate_limit_retries + 1
    assert fake.state.instances == {}
    assert_clean(fake)


def test_a_create_rate_limited_after_a_try_whose_answer_was_lost_may_have_made_it(
    fake: FakeVultr, connect: Callable[..., VultrProvider]
) -> None:
    """The first POST got a 502 (Vultr may have made the machine, and not list it yet);
    the next ones are rate-limited: they did nothing, but the first may have, so the
    create as a whole is not ``unsent``."""
    fake.state.fail_next(502, method="POST", path="/instances")
    fake.state.fail_next(429, 100, method="POST", path="/instances")
    vultr = connect(fake, sleep=lambda s: None)

    with pytest.raises(ProviderError, match=r"rate-limiting POST /instances \(HTTP 429\)") as err:
        vultr.create("demo", linux(), "x")

    assert not err.value.unsent and not err.value.permanent
    statuses = [r.status for r in sent(fake, "POST", "/instances")]
    assert statuses == [502] + [429] * (FAST.rate_limit_retries + 1)
    assert sent(fake, "GET", "/instances")  # looked for it before trying again
    assert_clean(fake)


# -- the fake itself has teeth ------------------------------------------------------------


def test_fake_rejects_and_records_requests_outside_the_openapi_file(fake: FakeVultr) -> None:
    auth = {"Authorization": f"Bearer {fake.api_key}"}
    with httpx.Client(base_url=fake.url, headers=auth) as http:
        r = http.post(
            "/instances", json={"region": "ewr", "plan": "p", "os_id": "2284", "colour": "blue"}
        )
        assert r.status_code == 400 and r.json()["status"] == 400
        assert http.post("/instances", json={"plan": "p", "os_id": 1}).status_code == 400
        assert http.get("/instances", params={"tags": "x"}).status_code == 400
        assert http.get("/instances", params={"per_page": "ten"}).status_code == 400
        assert http.get("/no-such-endpoint").status_code == 404

    text = "\n".join(fake.violations)
    for needle in (
        "'2284' is not of type 'integer'",
        "'colour' was unexpected",
        "'region' is a required property",
        "'tags' is not declared",
        "'ten' is not an integer",
        "not in the OpenAPI file",
    ):
        assert needle in text
    fake.state.violations.clear()


def test_fake_checks_requests_it_answers_with_an_injected_failure_or_a_429(
    fake: FakeVultr,
) -> None:
    auth = {"Authorization": f"Bearer {fake.api_key}"}
    fake.state.fail_next(503, method="POST", path="/instances")
    with httpx.Client(base_url=fake.url, headers=auth) as http:
        assert http.post("/instances", json={"plan": "p", "os_id": 1}).status_code == 503
        fake.state.rate_limit = 1
        assert http.get("/instances").status_code == 200
        assert http.get("/instances", params={"tags": "x"}).status_code == 429

    assert len(fake.violations) == 2
    assert "'region' is a required property" in fake.violations[0]
    assert "'tags' is not declared" in fake.violations[1]
    fake.state.violations.clear()


def test_vultr_own_example_has_fields_its_schema_lacks() -> None:
    # Why the provider reads responses leniently: Vultr's get-instance example carries
    # v6_network/v6_main_ip/v6_network_size, the schema only v6_networks.
    state = create_app().state.vultr
    op, _ = state.spec.match("GET", "/instances/abc")
    example = op.spec["responses"]["200"]["content"]["application/json"]["examples"]
    problems = state.spec.check_response(op, 200, example["instance"]["value"])
    assert any("'v6_network'" in p for p in problems)


def test_an_instance_has_its_ipv6_address_from_either_field_vultr_answers_with() -> None:
    """``crc up`` tells twins apart by their addresses: the IPv6 one is read from
    ``v6_main_ip`` (the examples) or ``v6_networks`` (the schema); none is ``None``."""
    base = {"id": "i", "tags": [], "main_ip": "192.0.2.1", "internal_ip": ""}
    cases: list[tuple[dict[str, Any], str | None]] = [
        ({"v6_main_ip": "2001:0db8::1"}, "2001:0db8::1"),
        ({"v6_networks": [{"network": "2001:db8::", "main_ip": "2001:db8::2"}]}, "2001:db8::2"),
        ({"v6_main_ip": "", "v6_networks": []}, None),
        ({"v6_networks": ["junk", {"main_ip": 7}]}, None),
        ({}, None),
    ]
    for extra, want in cases:
        inst = _to_instance({**base, **extra})
        assert (inst.main_ip, inst.private_ip, inst.v6_main_ip) == ("192.0.2.1", None, want)


def test_openapi_nullable_becomes_json_schema_null() -> None:
    root = {"components": {"schemas": {"ip": {"type": "string", "nullable": True}}}}
    cases: list[tuple[dict[str, Any], list[Any], list[Any]]] = [
        ({"type": "string", "nullable": True}, ["a", None], [1]),
        ({"type": "string", "enum": ["a"], "nullable": True}, ["a", None], ["b"]),
        ({"$ref": "#/components/schemas/ip"}, ["a", None], [2]),
        ({"allOf": [{"$ref": "#/components/schemas/ip"}], "nullable": True}, [None], [3]),
        (
            {"type": "object", "properties": {"a": {"type": "integer", "nullable": True}}},
            [{"a": None}, {"a": 1}],
            [{"a": "x"}, {"b": 1}],
        ),
    ]
    for schema, good, bad in cases:
        v = jsonschema.Draft4Validator(to_json_schema(schema, root))
        assert all(v.is_valid(x) for x in good), schema
        assert not any(v.is_valid(x) for x in bad), schema


class socket_port:
    """A loopback port with nothing listening on it."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        return None


def test_an_image_option_stands_in_for_the_image_and_bad_options_send_nothing(
    fake: FakeVultr, vultr: VultrProvider
) -> None:
    spec = MachineSpec("web", "linux", "ewr", "vc2-1c-1gb", "", extra={"snapshot_id": "9a1f"})
    vultr.create("demo", spec, "x")
    [body] = [r.json for r in sent(fake, "POST", "/instances")]
    assert body["snapshot_id"] == "9a1f"
    assert not {"os_id", "image_id"} & set(body)
    for extra in ({"os_id": "abc"}, {"snapshot_id": "9a1f", "app_id": 3}, {"enable_vpc": 1}):
        with pytest.raises(ProviderError, match=r"must be|one image source"):
            vultr.create("demo", linux("db", extra=extra), "x")
    assert len(sent(fake, "POST", "/instances")) == 1


def test_an_option_of_the_wrong_type_is_told_as_a_scenario_file_writes_it(
    fake: FakeVultr, vultr: VultrProvider
) -> None:
    """`backups: true` is YAML's true, not Python's True: the message says what the
    file says, and nothing is sent."""
    for extra, said in (
        ({"backups": True}, "backups must be enabled or disabled, not true"),
        ({"enable_ipv6": None}, "enable_ipv6 must be true or false, not null"),
        ({"attach_vpc": ["v1", 2]}, 'attach_vpc must be a list of texts, not ["v1", 2]'),
    ):
        with pytest.raises(ProviderError) as info:
            vultr.create("demo", linux("db", extra=extra), "x")
        assert said in str(info.value), str(info.value)
    assert fake.requests == []
    assert_clean(fake)


def test_an_image_int_cannot_read_or_a_field_crc_sets_itself_sends_nothing(
    fake: FakeVultr, vultr: VultrProvider
) -> None:
    def image(name: str, image: str) -> MachineSpec:
        return MachineSpec(name, "linux", "ewr", "vc2-1c-1gb", image)

    vultr.create("demo", image("web", "openlitespeed-wordpress"), "x")
    [body] = [r.json for r in sent(fake, "POST", "/instances")]
    assert body["image_id"] == "openlitespeed-wordpress" and "os_id" not in body
    for bad in ("²", "0", "9" * 5000):
        with pytest.raises(ProviderError, match=r"^machine db: image: "):
            vultr.create("demo", image("db", bad), "x")
    for extra in ({"label": "prod-db"}, {"hostname": "other"}):
        with pytest.raises(ProviderError, match="not allowed"):
            vultr.create("demo", linux("db", extra=extra), "x")
    assert len(sent(fake, "POST", "/instances")) == 1
    assert_clean(fake)
