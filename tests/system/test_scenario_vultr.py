"""`crc up` -> enroll -> steps -> `crc down` with the **vultr** provider, end to end on this
computer, against the fake Vultr API on loopback (never the real one).

What is real: `crc up` / `crc down` as processes (VultrProvider over HTTP, reading
VULTR_API_KEY and CRC_VULTR_API_URL), the server over TLS, the bootstrap script `crc up`
rendered and sent as base64 user_data, run as root at "boot" exactly as received (fetches
the agent zipapp from the server with the pinned fingerprint, makes the venv under
/opt/crc-agent with /usr/bin/python3, enrolls, installs the unit), the agent process, the
steps (jobs, file push, hosts sync, messages, one machine reaching the other by name over
TCP) and the teardown.

What is substituted: the Vultr API (fakes.vultr_api.FakeVultr: every request and response is
checked against Vultr's OpenAPI file; its main_ip is an invented TEST-NET address), the VM
(fakes.vultr_boot.LinuxBoot: own network namespace on the local provider's bridge crc0, with
the server listening on 10.213.0.1, and own mount, UTS and PID namespaces with a private
/opt, /run, /etc, /var, /usr/local, /root and hosts file), and systemd (fake_systemctl.py
starts the unit's ExecStart= as a background process of the machine; halting the machine
on DELETE kills it with everything else in its PID namespace).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudremotecontrol.errors import NotFound
from cloudremotecontrol.master.client import Client
from cloudremotecontrol.master.demo import _init_server
from cloudremotecontrol.master.localrun import ServerProcess
from cloudremotecontrol.master.profile import Profile
from cloudremotecontrol.master.scenario.down import down
from cloudremotecontrol.master.scenario.model import parse_scenario
from cloudremotecontrol.master.scenario.runner import Runner
from cloudremotecontrol.master.scenario.state import LocalState
from cloudremotecontrol.master.scenario.view import View
from cloudremotecontrol.providers import localnet
from cloudremotecontrol.providers.base import MachineSpec, scenario_tag
from cloudremotecontrol.providers.vultr import SCRIPT_TAG_PREFIX, VultrProvider
from fakes.vultr_api import FakeVultr, RecordedRequest
from fakes.vultr_boot import LinuxBoot, namespace_members
from procs import alive

AGENT_CMD = (
    "/opt/crc-agent/venv/bin/python -OO -X no_debug_ranges -X "
    "pycache_prefix=/opt/crc-agent/venv/pycache "
    "-m cloudremotecontrol.agent run"
)

needs_vm = pytest.mark.skipif(
    os.geteuid() != 0
    or not all(shutil.which(t) for t in ("unshare", "nsenter", "ip"))
    or not os.path.exists("/usr/bin/python3"),
    reason="booting a fake Vultr instance needs root, unshare(1), nsenter(1), ip(8) and "
    "/usr/bin/python3 (network, mount and PID namespaces)",
)


class Cloud:
    """A server on the bridge, the fake Vultr API whose instances boot as machines in
    network namespaces, and `crc` with a user's credentials and the fake's URL and key."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        with localnet.lock():
            localnet.ensure_bridge()
        self.server = ServerProcess(tmp / "srv")
        _init_server(self.server, localnet.GATEWAY)
        self.server.start()
        token = self.server.add_user("alice")
        self.client = Client(self.server.url, token, self.server.fingerprint)
        self.boot = LinuxBoot(tmp / "vms", network="netns")
        self.fake = FakeVultr(boot=self.boot, halt=self.boot.halt, ready_delay=0.2).start()
        self.env = {
            **os.environ,
            "CRC_URL": self.server.url,
            "CRC_TOKEN": token,
            "CRC_FINGERPRINT": self.server.fingerprint,
            "CRC_CONFIG_DIR": str(tmp / "cfg"),
            "VULTR_API_KEY": self.fake.api_key,
            "CRC_VULTR_API_URL": self.fake.url,
        }

    def crc(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cloudremotecontrol", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
        )

    def sent(self, method: str, path: str) -> list[RecordedRequest]:
        return [r for r in self.fake.requests if r.method == method and r.path == path]

    def wait_halted(self, ids: list[str], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not set(ids) <= set(self.fake.state.halted):
            assert time.monotonic() < deadline, f"not halted: {ids} {self.fake.state.halted}"
            time.sleep(0.05)

    def close(self) -> None:
        self.boot.close()
        self.fake.stop()
        self.client.close()
        self.server.stop()
        localnet.release_bridge()


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    c = Cloud(tmp_path)
    yield c
    c.close()


def lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


SCENARIO = """\
name: vlab
provider: vultr
ttl: 2h
on_ttl: destroy
timeouts: {ready: 60s, step: 60s}
defaults: {region: ewr, plan: vc2-1c-1gb, image: "2284"}
variables: {greeting: hello}
machines:
  a: {labels: {role: db}}
  b: {labels: {role: web}}
steps:
  - name: setup-a
    to: role=db
    run: |
      set -e
      crc agent progress "setting up" --percent 50
      mkdir -p /var/lib/app && cd /var/lib/app
      echo "{{ vars.greeting }} from $(hostname) as uid $(id -u)" > greeting
      setsid python3 -m http.server 8080 >/dev/null 2>&1 </dev/null &
      crc agent emit user.done '{"ok": true}'
  - name: a-done
    to: a
    wait: {message: done}
  - name: config-b
    to: b
    needs: []
    push: {dest: /etc/app.conf, content: "peer={{ machines.a.ip }}\\n", mode: "0640"}
  - name: hosts
    needs: [a-done, config-b]
    hosts: {}
  - name: b-reaches-a
    to: b
    retries: 5
    retry_delay: 0.5s
    run: |
      set -e
      getent hosts a
      cat /etc/app.conf
      python3 - <<'EOF'
      import urllib.request as u
      print(u.urlopen("http://a:8080/greeting", timeout=5).read().decode(), end="")
      EOF
"""


@pytest.mark.root
@needs_vm
def test_up_enrolls_through_the_real_bootstrap_runs_steps_and_down_leaves_nothing(cloud, tmp_path):
    path = tmp_path / "vlab.yaml"
    path.write_text(SCENARIO)

    r = cloud.crc("up", str(path), "--json", timeout=150)

    consoles = {i: m.console_tail() + m.journal()[-1500:] for i, m in cloud.boot.machines.items()}
    assert r.returncode == 0, r.stdout + r.stderr + json.dumps(consoles, indent=1)
    out = lines(r.stdout)
    summary = out[-1]
    assert summary["event"] == "summary" and summary["ok"] is True
    assert [(s["name"], s["status"]) for s in summary["steps"]] == [
        ("setup-a", "succeeded"),
        ("a-done", "succeeded"),
        ("config-b", "succeeded"),
        ("hosts", "succeeded"),
        ("b-reaches-a", "succeeded"),
    ]

    # The provider asked Vultr for two Linux instances, the bootstrap as base64 user_data.
    creates = cloud.sent("POST", "/instances")
    assert sorted(c.json["hostname"] for c in creates) == ["a", "b"]
    for c in creates:
        body = c.json
        assert c.status == 202
        assert (body["region"], body["plan"], body["os_id"]) == ("ewr", "vc2-1c-1gb", 2284)
        assert body["label"] == f"vlab-{body['hostname']}"
        assert body["tags"] == ["crc-scenario:vlab", f"crc-machine:{body['hostname']}"]
        assert "script_id" not in body
        script = base64.b64decode(body["user_data"]).decode()
        assert script.startswith(
            "#!/bin/bash\n# CloudRemoteControl bootstrap for machine "
            f"{body['hostname']} of group vlab"
        )
        assert f"CRC_URL={cloud.server.url}" in script and "CRC_KEY=crck_" in script
    assert cloud.sent("POST", "/startup-scripts") == []

    # Each instance booted by running that script, which installed and enrolled the agent.
    ids = {inst["hostname"]: iid for iid, inst in cloud.fake.state.instances.items()}
    assert sorted(ids) == ["a", "b"] and sorted(cloud.fake.state.booted) == sorted(ids.values())
    machines = {name: cloud.boot.machines[iid] for name, iid in ids.items()}
    group = cloud.client.group("vlab")
    roster = {m["name"]: m for m in group["machines"]}
    assert {n: m["state"] for n, m in roster.items()} == {"a": "ready", "b": "ready"}
    # on_ttl: destroy - the server holds the Vultr key for this group (never shows it).
    assert group["teardown"]["status"] == "armed" and group["teardown"]["provider"] == "vultr"
    assert cloud.fake.api_key not in json.dumps(group)
    agents = {}
    for name, m in machines.items():
        assert m.exit_code == 0
        assert f"done: machine {name} of group vlab is ready" in m.console_tail()
        unit = m.path("/etc/systemd/system/crc-agent.service").read_text()
        assert "Type=notify" in unit and "crck_" not in unit
        assert not m.path("/etc/crc-agent/key").exists()  # the single-use key is gone
        cred = m.path("/var/lib/crc-agent/credential.json")
        assert stat.S_IMODE(cred.stat().st_mode) == 0o600
        assert json.loads(cred.read_text())["machine"] == name
        procs = namespace_members(m.namespaces)
        running = [pid for pid, cmd in procs.items() if cmd.startswith(AGENT_CMD)]
        assert len(running) == 1, procs
        agents[name] = running[0]
        # Its own address on the bridge, as the agent reports it.
        assert m.ip is not None and ipaddress.ip_address(m.ip) in localnet.NETWORK
        assert m.ip in roster[name]["facts"]["private_ips"]
        assert roster[name]["facts"]["hostname"] == name
    assert machines["a"].ip != machines["b"].ip
    assert not Path("/opt/crc-agent").exists()  # nothing of the machines on this computer

    # The steps did their work inside the machines, and only there; b reached a by name.
    ip_a = machines["a"].ip
    assert machines["a"].path("/var/lib/app/greeting").read_text() == "hello from a as uid 0\n"
    assert not machines["b"].path("/var/lib/app").exists()
    conf = machines["b"].path("/etc/app.conf")
    assert conf.read_text() == f"peer={ip_a}\n"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o640
    seen = "".join(o["data"] for o in out if o["event"] == "output" and o["step"] == "b-reaches-a")
    assert seen.split()[:3] == [ip_a, "a", "a.vlab"]
    assert seen.endswith(f"peer={ip_a}\nhello from a as uid 0\n"), seen
    for m in machines.values():
        hosts = m.path("/etc/hosts").read_text()
        assert f"{machines['a'].ip} a a.vlab" in hosts and f"{machines['b'].ip} b b.vlab" in hosts
    with open("/etc/hosts") as fh:
        assert "vlab" not in fh.read()
    web = [
        p for p, cmd in namespace_members(machines["a"].namespaces).items() if "http.server" in cmd
    ]
    assert len(web) == 1  # the step's background server runs on a until the end

    r = cloud.crc("down", str(path), "--json")

    assert r.returncode == 0, r.stdout + r.stderr
    done = next(o for o in lines(r.stdout) if o["event"] == "down")
    assert sorted(done["destroyed"]) == sorted(ids.values())
    assert done["left"] == [] and done["group_deleted"] is True and done["revoked"] == 2
    # Vultr was asked to delete each instance, then listed by tag to check none is left.
    deletes = [q for q in cloud.fake.requests if q.method == "DELETE"]
    assert sorted(q.path for q in deletes) == sorted(f"/instances/{i}" for i in ids.values())
    last_delete = max(n for n, q in enumerate(cloud.fake.requests) if q.method == "DELETE")
    checks = [
        q for q in cloud.fake.requests[last_delete:] if q.method == "GET" and q.path == "/instances"
    ]
    assert checks and checks[-1].query["tag"] == scenario_tag("vlab")
    assert cloud.fake.state.instances == {}
    with pytest.raises(NotFound):
        cloud.client.group("vlab")
    assert not (tmp_path / "cfg" / "scenarios" / "vlab.json").exists()

    # Deleting the instances powered the machines off: no agent, job, mount or network is
    # left (the agents, and the web server a step started, were killed with them).
    cloud.wait_halted(list(ids.values()))
    assert cloud.boot.running() == []
    assert cloud.boot.leftovers() == {}
    assert cloud.boot.mounts() == []
    assert cloud.boot.networks() == []
    assert [pid for pid in [*agents.values(), *web] if alive(pid)] == []

    assert cloud.fake.violations == []
    assert cloud.fake.state.boot_errors == []


WINDOWS = """\
name: mixed
provider: vultr
defaults: {region: ewr, plan: vc2-1c-2gb, image: {linux: "2284", windows: "2514"}}
machines:
  lin: {}
  win: {os: windows, plan: vc2-2c-4gb}
"""


def test_a_windows_machine_gets_a_boot_startup_script_named_on_create(env, tmp_path):
    """Unit level: the runner's create phase against the fake (no boot: Windows cannot
    boot here), then `down`."""
    fake = FakeVultr(ready_delay=0.05).start()
    provider = VultrProvider(fake.api_key, fake.url, poll_interval=0.02)
    scenario = parse_scenario(WINDOWS, tmp_path / "mixed.yaml")
    profile = Profile(env.server.url, env.token, env.server.fingerprint)
    runner = Runner(scenario, profile, provider, View(), state=LocalState(tmp_path / "state.json"))
    try:
        runner._ensure_instances(runner._ensure_group())

        scripts = [r for r in fake.requests if (r.method, r.path) == ("POST", "/startup-scripts")]
        assert len(scripts) == 1 and scripts[0].status == 201
        assert scripts[0].json["type"] == "boot" and scripts[0].json["name"] == "crc:mixed/win"
        cmd = base64.b64decode(scripts[0].json["script"]).decode()
        assert "machine win of group mixed" in cmd and "\r\n" in cmd and "crck_" in cmd
        script_id = next(iter(fake.state.scripts))
        creates = {
            r.json["hostname"]: r.json
            for r in fake.requests
            if (r.method, r.path) == ("POST", "/instances")
        }
        win, lin = creates["win"], creates["lin"]
        assert win["script_id"] == script_id and "user_data" not in win
        assert (win["os_id"], win["plan"]) == (2514, "vc2-2c-4gb")
        assert SCRIPT_TAG_PREFIX + script_id in win["tags"]
        assert "script_id" not in lin and (lin["os_id"], lin["plan"]) == (2284, "vc2-1c-2gb")
        assert base64.b64decode(lin["user_data"]).startswith(b"#!/bin/bash\n")
        assert sorted(runner.instances) == ["lin", "win"]

        rc = down("mixed", provider, env.client, View(), runner.state, sleep=lambda s: None)

        assert rc == 0
        assert fake.state.instances == {} and fake.state.scripts == {}
        with pytest.raises(NotFound):
            env.client.group("mixed")
        assert fake.violations == []
    finally:
        runner.close()
        provider.close()
        fake.stop()


def _rate_limited_setup(env: Any, tmp_path: Path) -> tuple[FakeVultr, Path, list[str]]:
    """A fake with three instances of scenario `rl` (no boot) and its group."""
    fake = FakeVultr(ready_delay=0.05).start()
    made_by_up = {"scenario": "rl", "provider": "vultr", "provider_settings": {}}
    env.client.create_group("rl", ["a", "b", "c"], settings={"crc_up": made_by_up})
    with VultrProvider(fake.api_key, fake.url) as p:
        ids = [
            p.create(
                "rl",
                MachineSpec(name=n, os="linux", region="ewr", plan="vc2-1c-1gb", image="2284"),
                "#!/bin/sh\ntrue\n",
            ).id
            for n in ("a", "b", "c")
        ]
    path = tmp_path / "rl.yaml"
    path.write_text(
        textwrap.dedent("""\
        name: rl
        provider: vultr
        defaults: {region: ewr, plan: vc2-1c-1gb, image: "2284"}
        machines: {a: , b: , c: }
        """)
    )
    return fake, path, ids


def test_down_honours_429_and_reports_clearly_when_vultr_keeps_refusing(env, crc, tmp_path):
    fake, path, ids = _rate_limited_setup(env, tmp_path)
    vultr_env = {"VULTR_API_KEY": fake.api_key, "CRC_VULTR_API_URL": fake.url}
    try:
        # Vultr keeps answering 429 (Retry-After honoured): down gives up with one clear line.
        fake.state.fail_next(429, times=7, message="Rate limit exceeded.", retry_after=0.05)
        r = crc("down", str(path), extra_env=vultr_env)
        assert r.returncode == 8, r.stdout + r.stderr
        assert r.stderr.strip() == (
            "crc: error: Vultr kept rate-limiting GET /instances (HTTP 429) after 6 "
            "retries: wait a minute and try again"
        )
        assert sorted(fake.state.instances) == sorted(ids)  # nothing destroyed half-way
        states = [m["state"] for m in env.client.group("rl")["machines"]]
        assert states == ["pending"] * 3  # nor revoked

        # Vultr limits the rate (2 requests/s): down backs off, retries, and finishes.
        fake.state.rate_limit = 2
        before = len(fake.requests)
        r = crc("down", str(path), "--json", timeout=120, extra_env=vultr_env)
        assert r.returncode == 0, r.stdout + r.stderr
        done = next(o for o in lines(r.stdout) if o["event"] == "down")
        assert sorted(done["destroyed"]) == sorted(ids) and done["left"] == []
        assert done["group_deleted"] is True
        assert "3 machine(s) destroyed, none left at vultr; group deleted" in done["text"]
        limited = [q for q in fake.requests[before:] if q.status == 429]
        assert limited, "the rate limit was never hit: the test proves nothing"
        assert fake.state.instances == {}
        with pytest.raises(NotFound):
            env.client.group("rl")
        assert fake.violations == []
    finally:
        fake.stop()


@pytest.mark.root
@needs_vm
def test_fake_vm_runs_its_script_as_root_in_private_namespaces_and_halts_clean(tmp_path):
    """The boot double alone: its file system view, hostname, processes, and teardown."""
    boot = LinuxBoot(tmp_path / "vms", network="netns")
    script = textwrap.dedent("""\
        #!/bin/bash
        set -e
        echo "uid=$(id -u) host=$(hostname) env=$(env | sort | tr '\\n' ' ')"
        mkdir -p /opt/x /etc/x /var/lib/x && touch /opt/x/f /etc/x/f /var/lib/x/f
        setsid sleep 600 </dev/null >/dev/null 2>&1 &
        """)
    try:
        boot({"id": "i-1", "hostname": "web"}, script.encode())
        m = boot.machines["i-1"]
        assert m.exit_code == 0
        head = m.console_tail()
        assert "uid=0 host=web" in head
        assert "VULTR" not in head and "CRC_TOKEN" not in head and "PYTEST" not in head
        for p in ("/opt/x/f", "/etc/x/f", "/var/lib/x/f"):
            assert m.path(p).exists() and not Path(p).exists()
        assert m.path("/etc/hosts").read_text().endswith("127.0.1.1 web\n")
        assert m.netns is not None and m.ip is not None
        addrs = subprocess.run(
            ["ip", "-n", m.netns, "-o", "-4", "addr"], capture_output=True, text=True
        ).stdout
        assert f" {m.ip}/16 " in addrs and ipaddress.ip_address(m.ip) in localnet.NETWORK
        assert (
            stat.S_IMODE(m.path("/var/lib/cloud/instance/scripts/part-001").stat().st_mode) == 0o700
        )
        sleepers = [p for p, cmd in boot.leftovers().items() if cmd == "sleep 600"]
        assert len(sleepers) == 1  # the background process outlived the script

        boot.halt("i-1")

        assert boot.leftovers() == {} and boot.mounts() == [] and boot.running() == []
        assert boot.networks() == [] and m.netns not in localnet.netns_names()
        assert not (m.dir / "disk").exists() and m.console.exists()
        with pytest.raises(RuntimeError, match="not a Linux script"):
            boot({"id": "i-2", "hostname": "win"}, b"@echo off\r\n")
    finally:
        boot.close()
        localnet.release_bridge()


def test_up_on_a_cloud_with_a_loopback_server_url_warns_that_machines_cannot_reach_it(
    env, crc, tmp_path
):
    """Machines at Vultr would dial 127.0.0.1, themselves: `crc up` says so at once
    (they would never enroll, billed until the ready timeout and `crc down`)."""
    fake = FakeVultr(ready_delay=0.05).start()
    vultr_env = {"VULTR_API_KEY": fake.api_key, "CRC_VULTR_API_URL": fake.url}
    path = tmp_path / "far.yaml"
    path.write_text(
        "name: far\nprovider: vultr\ntimeouts: {ready: 1s}\n"
        'defaults: {region: ewr, plan: vc2-1c-1gb, image: "2284"}\nmachines: {a: }\n'
    )
    assert env.server.url.startswith("https://127.0.0.1:")
    try:
        r = crc("up", str(path), "--json", extra_env=vultr_env)
        assert r.returncode == 6, r.stdout + r.stderr  # never ready: nothing booted here
        notes = [o["text"] for o in lines(r.stdout) if o["event"] == "info"]
        assert (
            f"warning: machines at vultr will connect to {env.server.url}, a loopback "
            "address: on a machine that is the machine itself, not this server (`crc login` "
            "with an address the machines can reach)"
        ) in notes, notes
        r = crc("down", str(path), extra_env=vultr_env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert fake.state.instances == {}
    finally:
        fake.stop()
