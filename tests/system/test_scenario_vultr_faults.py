"""`crc up` / `crc down` with the vultr provider when Vultr's API fails half-way or `crc up`
dies, against the fake Vultr API (machines never boot, but for the twin that enrolls:
these tests are about what is made and what is left behind)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from tcp_relay import TcpRelay
from websockets.exceptions import ConnectionClosed
from wire_helpers import WireAgent, bearer, pinned_http, recv_json, ws_open

from cloudremotecontrol.errors import NotFound
from cloudremotecontrol.providers.base import MachineSpec
from cloudremotecontrol.providers.vultr import VultrProvider
from fakes.vultr_api import FakeVultr

SCENARIO = """\
name: flaky
provider: vultr
timeouts: {ready: 60s}
defaults: {region: ewr, plan: vc2-1c-1gb, image: "2284"}
machines: {a: , b: , c: }
"""


def lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture
def fake() -> Iterator[FakeVultr]:
    f = FakeVultr(ready_delay=0.05).start()
    yield f
    f.stop()
    assert f.violations == []


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    path = tmp_path / "flaky.yaml"
    path.write_text(SCENARIO)
    return path


def down_twice(env: Any, crc: Any, path: Path, vultr_env: dict[str, str]) -> dict[str, Any]:
    r = crc("down", str(path), "--json", extra_env=vultr_env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    first = next(o for o in lines(r.stdout) if o["event"] == "down")
    assert first["left"] == [] and first["group_deleted"] is True
    with pytest.raises(NotFound):
        env.client.group("flaky")
    r = crc("down", str(path), "--json", extra_env=vultr_env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    again = next(o for o in lines(r.stdout) if o["event"] == "down")
    assert again["destroyed"] == [] and again["left"] == [] and again["group_deleted"] is False
    return first


def test_up_that_vultr_refuses_half_way_says_what_is_left_and_down_twice_removes_it(
    env: Any, crc: Any, fake: FakeVultr, scenario: Path
) -> None:
    vultr_env = {"VULTR_API_KEY": fake.api_key, "CRC_VULTR_API_URL": fake.url}
    # Vultr makes machine a, then refuses machine b (its plan is out of stock, say).
    fake.state.fail_next(
        400,
        message="Plan is not available",
        method="POST",
        path="/instances",
        when=lambda body: body.get("hostname") == "b",
    )
    r = crc("up", str(scenario), extra_env=vultr_env, timeout=120)

    assert r.returncode == 8, r.stdout + r.stderr
    made = list(fake.state.instances)
    assert len(made) == 1
    assert r.stderr.splitlines()[-2:] == [
        f"1 machine(s) of flaky are still at vultr (a): `crc up {scenario}` again resumes, "
        f"`crc down {scenario}` destroys them",
        "crc: error: machine b: Vultr rejected POST /instances (HTTP 400): Plan is not available",
    ]

    first = down_twice(env, crc, scenario, vultr_env)
    assert first["destroyed"] == made and fake.state.instances == {}


def test_down_after_up_was_killed_destroys_every_machine_it_made(
    env: Any, fake: FakeVultr, crc: Any, scenario: Path
) -> None:
    vultr_env = {"VULTR_API_KEY": fake.api_key, "CRC_VULTR_API_URL": fake.url}
    up = subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", "up", str(scenario), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **env.cli_env, **vultr_env},
    )
    try:
        deadline = time.monotonic() + 60
        while len(fake.state.instances) < 3:  # the machines never enroll: up waits
            assert up.poll() is None and time.monotonic() < deadline, up.communicate()
            time.sleep(0.05)
    finally:
        up.send_signal(signal.SIGKILL)
        up.communicate()
    made = sorted(fake.state.instances)

    first = down_twice(env, crc, scenario, vultr_env)
    assert sorted(first["destroyed"]) == made and fake.state.instances == {}


def test_down_goes_on_past_a_machine_vultr_keeps_failing_for(
    env: Any, crc: Any, fake: FakeVultr, scenario: Path
) -> None:
    vultr_env = {"VULTR_API_KEY": fake.api_key, "CRC_VULTR_API_URL": fake.url}
    made_by_up = {"scenario": "flaky", "provider": "vultr", "provider_settings": {}}
    env.client.create_group("flaky", ["a", "b", "c"], settings={"crc_up": made_by_up})
    with VultrProvider(fake.api_key, fake.url) as p:
        ids = {
            n: p.create(
                "flaky",
                MachineSpec(name=n, os="linux", region="ewr", plan="vc2-1c-1gb", image="2284"),
                "#!/bin/sh\ntrue\n",
            ).id
            for n in ("a", "b", "c")
        }
    # Vultr fails every try to delete a in the first pass (one try and three retries).
    fake.state.fail_next(500, times=4, method="DELETE", path=f"/instances/{ids['a']}")

    r = crc("down", str(scenario), "--json", extra_env=vultr_env, timeout=120)

    assert r.returncode == 0, r.stdout + r.stderr
    done = next(o for o in lines(r.stdout) if o["event"] == "down")
    assert done["destroyed"] == [ids["b"], ids["c"], ids["a"]] and done["left"] == []
    assert fake.state.instances == {}


def test_down_reports_a_machine_vultr_forbids_deleting_at_once_and_down_again_removes_it(
    env: Any, crc: Any, fake: FakeVultr, scenario: Path
) -> None:
    """A DELETE Vultr refuses for good (403: the API key's access control) is reported as
    soon as the other machines are gone, not after the 3 minutes of checking; `crc down`
    again, once the refusal is lifted, destroys it."""
    vultr_env = {"VULTR_API_KEY": fake.api_key, "CRC_VULTR_API_URL": fake.url}
    made_by_up = {"scenario": "flaky", "provider": "vultr", "provider_settings": {}}
    env.client.create_group("flaky", ["a", "b", "c"], settings={"crc_up": made_by_up})
    spec = MachineSpec(name="a", os="linux", region="ewr", plan="vc2-1c-1gb", image="2284")
    with VultrProvider(fake.api_key, fake.url) as p:
        ids = {n: p.create("flaky", replace(spec, name=n), "#!/bin/sh\ntrue\n").id for n in "abc"}
    fake.state.fail_next(
        403, method="DELETE", path=f"/instances/{ids['b']}", message="Unauthorized IP address"
    )

    r = crc("down", str(scenario), "--json", extra_env=vultr_env, timeout=120)

    assert r.returncode == 1, r.stdout + r.stderr
    # Sent once, and the check ended at the first listing with only b in it.
    assert [q.status for q in fake.requests if q.method == "DELETE"] == [204, 403, 204]
    assert len([q for q in fake.requests if (q.method, q.path) == ("GET", "/instances")]) == 2
    done = next(o for o in lines(r.stdout) if o["event"] == "down")
    assert done["destroyed"] == [ids["a"], ids["c"]] and done["left"] == [ids["b"]]
    assert "(HTTP 403): Unauthorized IP address" in done["errors"][ids["b"]]
    assert done["text"].startswith(f"still at vultr: {ids['b']} (not destroyed: Vultr forbade")
    assert list(fake.state.instances) == [ids["b"]]
    # The group stays while b bills: listed, with the provider `crc down --group` asks.
    assert "group flaky is kept while they are (`crc status flaky`)" in done["text"]
    assert (done["group_deleted"], done["revoked"]) == (False, 0)
    assert [g["group"] for g in env.client.list_groups()] == ["flaky"]

    r = crc("down", "--group", "flaky", "--json", extra_env=vultr_env)
    assert r.returncode == 0, r.stdout + r.stderr
    again = next(o for o in lines(r.stdout) if o["event"] == "down")
    assert again["destroyed"] == [ids["b"]] and again["left"] == [] and fake.state.instances == {}
    assert again["group_deleted"] is True and env.client.list_groups() == []


@pytest.mark.parametrize(
    ("sig", "code"),
    [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)],
    ids=["ctrl-c", "sigterm", "sighup"],
)
def test_down_interrupted_while_vultr_fails_says_the_machines_may_be_left(
    env: Any, crc: Any, fake: FakeVultr, scenario: Path, sig: signal.Signals, code: int
) -> None:
    """Ctrl-C during `crc down` (Vultr failing each delete, retried for 3 minutes) said
    only "crc: aborted": it says the machines may still be there, billed, and how to
    destroy them; the group is kept for that. Before it, the wait was silent: what is
    left, and why, is said while it lasts. SIGTERM and SIGHUP (a CI job cancelled, a
    terminal closed) killed it without a word: they are taken as Ctrl-C."""
    vultr_env = {"VULTR_API_KEY": fake.api_key, "CRC_VULTR_API_URL": fake.url}
    made_by_up = {"scenario": "flaky", "provider": "vultr", "provider_settings": {}}
    env.client.create_group("flaky", ["a"], settings={"crc_up": made_by_up})
    spec = MachineSpec(name="a", os="linux", region="ewr", plan="vc2-1c-1gb", image="2284")
    with VultrProvider(fake.api_key, fake.url) as p:
        made = p.create("flaky", spec, "#!/bin/sh\ntrue\n").id
    fake.state.fail_next(500, times=1000, method="DELETE", path="/instances")
    down = subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", "down", str(scenario)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env.cli_env, **vultr_env},
    )
    assert down.stdout is not None
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while not any(ln.startswith("still at vultr after") for ln in seen):
            assert down.poll() is None and time.monotonic() < deadline, down.communicate()
            if select.select([down.stdout], [], [], 0.5)[0]:
                seen.append(down.stdout.readline())
    finally:
        down.send_signal(sig)
        out, err = down.communicate(timeout=60)
    waiting = seen[-1].rstrip("\n")
    assert re.fullmatch(
        rf"still at vultr after 1\d s: {made} \(not destroyed: .*\(HTTP 500\).*\); "
        r"checking again every 2 s for up to 1\d\d s more",
        waiting,
    ), seen
    assert any(r.method == "DELETE" and r.status == 500 for r in fake.requests)
    assert down.returncode == code, out + err
    assert err.splitlines()[-1] == (  # the last line: no "crc: aborted" after it
        "crc: interrupted: machines of flaky may still be at vultr, where a cloud bills "
        "them: `crc down --group flaky --provider vultr` again destroys them"
    ), out + err
    assert "Traceback" not in err and len(fake.state.instances) == 1
    assert [g["group"] for g in env.client.list_groups()] == ["flaky"]


def test_up_destroys_the_second_machine_a_create_whose_answer_was_lost_made(
    env: Any, fake: FakeVultr, crc: Any, scenario: Path
) -> None:
    """Vultr makes machine a but its answer is lost, and lists it only a while later:
    `crc up` does not find it and makes a again. The first one shows up while a is still
    pending (it holds the same single-use key): `crc up` destroys it instead of leaving
    it billing until `crc down`."""
    vultr_env = {"VULTR_API_KEY": fake.api_key, "CRC_VULTR_API_URL": fake.url}
    fake.state.list_delay = 3.0
    fake.state.fail_next(
        504,
        after_handling=True,
        method="POST",
        path="/instances",
        when=lambda body: body.get("hostname") == "a",
    )
    up = subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", "up", str(scenario), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env.cli_env, **vultr_env},
    )

    # Read as it comes: interrupted once crc up has said it (the fake deleting the twin is
    # not yet crc up having heard the answer).
    seen: list[str] = []
    errs: list[str] = []
    readers = [
        threading.Thread(target=lambda: seen.extend(up.stdout or ()), daemon=True),
        threading.Thread(target=lambda: errs.extend(up.stderr or ()), daemon=True),
    ]
    for r in readers:
        r.start()
    try:
        deadline = time.monotonic() + 60
        while not any("destroyed its second instance" in ln for ln in seen):
            assert up.poll() is None and time.monotonic() < deadline, seen + errs
            time.sleep(0.1)
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(timeout=60)
        for r in readers:
            r.join(timeout=10)
        for pipe in (up.stdout, up.stderr):
            if pipe is not None:
                pipe.close()
    out, err = "".join(seen), "".join(errs)
    creates = [r for r in fake.requests if r.method == "POST" and r.path == "/instances"]
    made_for_a = [r for r in creates if r.json["hostname"] == "a"]
    assert [r.status for r in made_for_a] == [504, 202]
    (twin,) = [r.path.rsplit("/", 1)[1] for r in fake.requests if r.method == "DELETE"]
    assert twin not in fake.state.instances and len(fake.state.instances) == 3
    texts = [o.get("text", "") for o in lines(out)]
    assert f"machine a: destroyed its second instance {twin} (made by a create whose " in "".join(
        texts
    ), out + err

    first = down_twice(env, crc, scenario, vultr_env)
    assert len(first["destroyed"]) == 3 and fake.state.instances == {}


def test_up_whose_create_answers_were_all_lost_says_the_machine_may_exist(
    env: Any, crc: Any, fake: FakeVultr, scenario: Path
) -> None:
    """Every create of a is made by Vultr but its answer lost, and Vultr does not list
    them yet: `crc up` fails, and says that machines may be billing and how to remove
    them, although it knows of none."""
    vultr_env = {"VULTR_API_KEY": fake.api_key, "CRC_VULTR_API_URL": fake.url}
    fake.state.list_delay = 3600.0
    fake.state.fail_next(
        504, times=10, after_handling=True, method="POST", path="/instances", message="timeout"
    )

    r = crc("up", str(scenario), extra_env=vultr_env, timeout=120)

    assert r.returncode == 8, r.stdout + r.stderr
    assert fake.state.instances  # made, never answered
    assert r.stderr.splitlines()[-2:] == [
        f"vultr may have made machine(s) a of flaky although creating them failed: "
        f"`crc down {scenario}` destroys whatever was made",
        "crc: error: machine a: Vultr failed POST /instances (HTTP 504): timeout; "
        "try again later (status.vultr.com)",
    ]

    made = sorted(fake.state.instances)
    fake.state.list_delay = 0.0  # Vultr lists them at last
    first = down_twice(env, crc, scenario, vultr_env)
    assert sorted(first["destroyed"]) == made and fake.state.instances == {}


class RefusedAfterTheList(TcpRelay):
    """In front of the fake Vultr API, which answers each request on a connection of its
    own: passes connections through until one lists the instances, then stops listening,
    so that every connection after it, the create's first, is refused (it never reaches
    Vultr)."""

    def __init__(self, port: int) -> None:
        self.upstream_port = port
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}/v2"

    def connect(self, client: socket.socket) -> socket.socket | None:
        head = b""
        while b"\r\n" not in head:
            data = client.recv(4096)
            if not data:
                return None
            head += data
        if head.startswith(b"GET /v2/instances?"):
            # Wakes the accept up, and refuses the connections to come (ECONNREFUSED).
            self.listener.shutdown(socket.SHUT_RDWR)
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port), 5)
        upstream.sendall(head)
        return upstream


def test_up_whose_create_never_reached_vultr_does_not_say_the_machine_may_exist(
    env: Any, crc: Any, fake: FakeVultr, scenario: Path
) -> None:
    """The create's connection is refused, on each try: the request never reached
    Vultr, which so made nothing. `crc up` fails saying so, without "vultr may have
    made machine(s) a", and deletes the group it made (it holds no machine)."""
    fake.state.close_connections = True
    relay = RefusedAfterTheList(int(fake.url.split(":")[2].split("/")[0]))
    try:
        relay_env = {"VULTR_API_KEY": fake.api_key, "CRC_VULTR_API_URL": relay.url}
        r = crc("up", str(scenario), extra_env=relay_env, timeout=120)
    finally:
        relay.close()

    assert r.returncode == 8, r.stdout + r.stderr
    assert [(q.method, q.path) for q in fake.requests] == [("GET", "/instances")]
    assert fake.state.instances == {}
    assert "may have made" not in r.stderr, r.stderr
    last = r.stderr.splitlines()[-1]
    assert last.startswith(
        f"crc: error: machine a: cannot reach the Vultr API at {relay.url} (POST /instances): "
    ), r.stderr
    assert "Connection refused" in last and "Traceback" not in r.stderr, r.stderr
    assert "group flaky deleted again" in r.stdout, r.stdout
    with pytest.raises(NotFound):
        env.client.group("flaky")

    vultr_env = {"VULTR_API_KEY": fake.api_key, "CRC_VULTR_API_URL": fake.url}
    r = crc("down", str(scenario), "--json", extra_env=vultr_env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    done = next(o for o in lines(r.stdout) if o["event"] == "down")
    assert done["destroyed"] == [] and done["left"] == [] and done["group_deleted"] is False


def test_up_interrupted_during_a_create_says_the_machine_may_exist(
    env: Any, crc: Any, fake: FakeVultr, scenario: Path
) -> None:
    """Ctrl-C while Vultr is making machine a (made, not answered yet): `crc up` exits
    130 and its last lines say that a may exist and how to destroy it, although it
    knows of no machine."""
    vultr_env = {"VULTR_API_KEY": fake.api_key, "CRC_VULTR_API_URL": fake.url}
    fake.state.create_delay = 3600.0
    up = subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", "up", str(scenario)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env.cli_env, **vultr_env},
    )
    try:
        deadline = time.monotonic() + 60
        while not fake.state.instances:  # made; its answer is held back
            assert up.poll() is None and time.monotonic() < deadline, up.communicate()
            time.sleep(0.05)
    finally:
        up.send_signal(signal.SIGINT)
        out, err = up.communicate(timeout=60)
        fake.state.create_delay = 0.0

    assert up.returncode == 130, out + err
    # The last line says what may be left: no "crc: interrupted" (nor a blank line) after.
    assert err.splitlines()[-1] == (
        f"vultr may have made machine(s) a of flaky although creating them was "
        f"interrupted: `crc down {scenario}` destroys whatever was made"
    ), out + err

    made = sorted(fake.state.instances)
    first = down_twice(env, crc, scenario, vultr_env)
    assert first["destroyed"] == made and fake.state.instances == {}


def test_up_that_fails_names_a_second_machine_it_could_not_destroy(
    env: Any, fake: FakeVultr, crc: Any, scenario: Path
) -> None:
    """A create's lost answer made a second machine for a, and Vultr refuses to destroy
    it: when `crc up` then ends (Ctrl-C), its count of the machines still at Vultr
    includes that one, named."""
    vultr_env = {"VULTR_API_KEY": fake.api_key, "CRC_VULTR_API_URL": fake.url}
    fake.state.list_delay = 3.0
    fake.state.fail_next(
        504,
        after_handling=True,
        method="POST",
        path="/instances",
        when=lambda body: body.get("hostname") == "a",
    )
    refusing = [True]
    fake.state.fail_next(
        403, times=1000, method="DELETE", path="/instances", when=lambda _: refusing[0]
    )
    up = subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", "up", str(scenario)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env.cli_env, **vultr_env},
    )
    try:
        deadline = time.monotonic() + 60
        while not any(r.method == "DELETE" and r.status == 403 for r in fake.requests):
            assert up.poll() is None and time.monotonic() < deadline, up.communicate()
            time.sleep(0.1)
    finally:
        up.send_signal(signal.SIGINT)
        out, err = up.communicate(timeout=60)
        refusing[0] = False
    (twin,) = {r.path.rsplit("/", 1)[1] for r in fake.requests if r.method == "DELETE"}
    assert len(fake.state.instances) == 4 and twin in fake.state.instances
    assert (
        f"4 machine(s) of flaky are still at vultr (a, b, c, a (second instance {twin})): "
        f"`crc up {scenario}` again resumes, `crc down {scenario}` destroys them"
    ) in err.splitlines(), out + err

    first = down_twice(env, crc, scenario, vultr_env)
    assert len(first["destroyed"]) == 4 and fake.state.instances == {}


class KeyTakers:
    """The boot hook of machine a's instances: each boots an agent (the raw wire
    protocol) that enrolls with the key of its startup script and reports its
    instance's address. The first instance made takes the key; each later one tries
    only after that, and is refused. The first one says SystemReady only once Vultr lists
    every instance (``listed``), so that `crc up`, which then checks, sees both."""

    def __init__(self, server: Any, listed: threading.Event) -> None:
        self.server = server
        self.listed = listed
        self.first: str | None = None  # the instance that took the key
        self.refused: dict[str, int] = {}  # instance id -> HTTP status
        self.taken = threading.Event()
        self.stop = threading.Event()
        self.errors: list[BaseException] = []

    def __call__(self, instance: dict[str, Any], script: bytes) -> None:
        found = re.search(r"^CRC_KEY=(.+)$", script.decode(), re.M)
        assert found, script
        (key,) = shlex.split(found.group(1))
        if self.first is None:
            self.first = instance["id"]
        else:
            assert self.taken.wait(60)
        with pinned_http(self.server) as http:
            r = http.post("/v1/agent/enroll", json={"key": key})
        if self.first != instance["id"]:
            self.refused[instance["id"]] = r.status_code
            return
        assert r.status_code == 200, r.text
        cred = r.json()["credential"]
        threading.Thread(target=self._run, args=(cred, instance["main_ip"]), daemon=True).start()

    def _run(self, cred: str, ip: str) -> None:
        try:
            asyncio.run(self._agent(cred, ip))
        except ConnectionClosed:
            pass  # `crc down` revoked it
        except BaseException as exc:  # noqa: BLE001 -- reported by the test
            self.errors.append(exc)
            self.taken.set()

    async def _agent(self, cred: str, ip: str) -> None:
        async with ws_open(self.server, bearer(cred)) as ws:
            await ws.send(json.dumps({"type": "hello", "ack": 0, "ready": False}))
            welcome = await recv_json(ws)
            agent = WireAgent(ws, "flaky", "a", welcome["ack"])
            await agent.send_msg("facts", {"hostname": "a", "ips": [ip], "public_ips": [ip]})
            self.taken.set()
            while not self.listed.is_set():
                await asyncio.sleep(0.05)
            await agent.send_msg("system.ready", {})
            while not self.stop.is_set():
                await asyncio.sleep(0.1)


def test_up_keeps_the_second_machine_when_it_is_the_one_that_enrolled(
    env: Any, crc: Any, tmp_path: Path
) -> None:
    """Vultr makes machine a but the answer is lost and it is listed only later: `crc up`
    makes a again. The first one boots first and its agent takes the single-use key, so
    the instance `crc up` waited for can never enroll. `crc up` keeps the one whose
    address the machine reports, destroys the other, and records the one kept; `crc down`
    then leaves nothing."""
    path = tmp_path / "flaky.yaml"
    path.write_text(SCENARIO.replace("machines: {a: , b: , c: }", "machines: {a: }"))
    listed = threading.Event()
    hook = KeyTakers(env.server, listed)
    fake = FakeVultr(boot=hook, ready_delay=0.05).start()
    try:
        vultr_env = {"VULTR_API_KEY": fake.api_key, "CRC_VULTR_API_URL": fake.url}
        fake.state.list_delay = 3600.0  # not listed: not found when the create is retried
        fake.state.fail_next(
            504, after_handling=True, method="POST", path="/instances", when=lambda _: True
        )
        up = subprocess.Popen(
            [sys.executable, "-m", "cloudremotecontrol", "up", str(path), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env.cli_env, **vultr_env},
        )
        try:
            deadline = time.monotonic() + 120
            while not hook.refused:  # both booted: the second one was refused the key
                assert up.poll() is None and time.monotonic() < deadline, up.communicate()
                assert not hook.errors, hook.errors
                time.sleep(0.1)
            fake.state.list_delay = 0.0
            listed.set()
            out, err = up.communicate(timeout=120)
        finally:
            if up.poll() is None:
                up.kill()
                up.communicate()
        assert up.returncode == 0, out + err
        twin = hook.first
        (held,) = hook.refused
        assert twin is not None and twin != held and not hook.errors
        assert [r.path for r in fake.requests if r.method == "DELETE"] == [f"/instances/{held}"]
        assert list(fake.state.instances) == [twin]
        summary = next(o for o in lines(out) if "machines" in o and "steps" in o)
        assert [m["instance"] for m in summary["machines"]] == [twin], out
        assert "second_instances" not in summary, out
        state = json.loads(
            (Path(env.cli_env["CRC_CONFIG_DIR"]) / "scenarios/flaky.json").read_text()
        )
        assert state["instances"] == {"a": twin}, state

        first = down_twice(env, crc, path, vultr_env)
        assert first["destroyed"] == [twin] and fake.state.instances == {}
    finally:
        hook.stop.set()
        fake.stop()
    assert fake.violations == []
