"""`crc up` / `crc down` / `crc demo` with the local provider: real server, real agents in
their own namespaces, real teardown."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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
from cloudremotecontrol.providers import localnet
from cloudremotecontrol.providers.base import MachineSpec, ProviderError
from cloudremotecontrol.providers.local import LocalProvider, _marked
from cloudremotecontrol.providers.localnet import NETWORK, veth_name

ROOT = os.geteuid() == 0


def needs_root(fn):
    return pytest.mark.root(pytest.mark.skipif(not ROOT, reason="network namespaces need root")(fn))


def _netns(prefix: str) -> list[str]:
    try:
        return [n for n in os.listdir("/run/netns") if n.startswith(prefix)]
    except FileNotFoundError:
        return []


def _nothing_left(provider: LocalProvider, group: str) -> None:
    assert provider.list(group) == []
    assert _netns(f"crc-{provider.scope}-{group}.") == []
    assert [v for v in _marked().values() if v.startswith(f"{provider.scope}/{group}.")] == []
    assert not (provider.root / group).exists()


class Lab:
    """A server the machines can reach, a user, and `crc` with that user's credentials."""

    def __init__(self, tmp: Path, server: ServerProcess) -> None:
        self.tmp = tmp
        self.server = server
        self.provider = LocalProvider(tmp / "machines", server_url=server.url)
        token = server.add_user("alice")
        self.client = Client(server.url, token, server.fingerprint)
        self.env = {
            **os.environ,
            "CRC_URL": server.url,
            "CRC_TOKEN": token,
            "CRC_FINGERPRINT": server.fingerprint,
            "CRC_CONFIG_DIR": str(tmp / "cfg"),
            "CRC_LOCAL_DIR": str(tmp / "machines"),
        }

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "cloudremotecontrol", *args]

    def crc(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=timeout, env=self.env
        )

    def scenario(self, text: str, name: str = "scenario.yaml") -> Path:
        path = self.tmp / name
        path.write_text(textwrap.dedent(text))
        return path

    def cleanup(self, *groups: str) -> None:
        for g in groups:
            for inst in self.provider.list(g):
                self.provider.destroy(inst.id)
        self.client.close()


def lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture
def netlab(tmp_path: Path):
    """A server listening on the local provider's bridge: machines get namespaces."""
    provider = LocalProvider(tmp_path / "machines")
    gateway = provider.prepare_network()
    assert gateway is not None
    server = ServerProcess(tmp_path / "srv")
    _init_server(server, gateway)
    server.start()
    lab = Lab(tmp_path, server)
    yield lab
    server.stop()
    provider.release_network()


FULL = """\
name: {group}
provider: local
timeouts: {{ready: 60s, step: 60s}}
variables: {{greeting: hello}}
machines:
  a: {{labels: {{role: db}}}}
  b: {{labels: {{role: web}}}}
steps:
  - name: setup-a
    to: role=db
    run: |
      set -e
      crc agent progress "setting up" --percent 50
      echo "{{{{ vars.greeting }}}} from $(hostname)" > /srv/greeting
      crc agent emit user.done '{{"ok": true}}'
  - name: a-done
    to: a
    wait: {{message: done}}
  - name: config-b
    to: b
    needs: []
    push: {{dest: /srv/b.conf, content: "peer={{{{ machines.a.ip }}}}\\n", mode: "0640"}}
  - name: hosts
    needs: [a-done, config-b]
    hosts: {{}}
  - name: b-sees-a
    to: b
    run: getent hosts a
  - name: reboot-b
    to: b
    reboot: true
  - name: after-reboot
    to: b
    run: [cat, /srv/b.conf]
"""


@needs_root
def test_up_runs_every_step_kind_in_namespaces_and_down_leaves_nothing(netlab):
    lab = netlab
    path = lab.scenario(FULL.format(group="full"))
    try:
        r = lab.crc("up", str(path), "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        out = lines(r.stdout)
        summary = out[-1]
        assert summary["event"] == "summary" and summary["ok"] is True
        assert [s["status"] for s in summary["steps"]] == ["succeeded"] * 7
        assert "own network namespaces" in out[0]["text"]

        insts = {i.name: i for i in lab.provider.list("full")}
        assert sorted(insts) == ["a", "b"]
        ip_a, ip_b = insts["a"].private_ip, insts["b"].private_ip
        assert ip_a != ip_b and all(
            ip in NETWORK for ip in map(__import__("ipaddress").ip_address, (ip_a, ip_b))
        )
        # Each machine has its own /srv, hostname and hosts file.
        srv_a = lab.tmp / "machines" / "full" / "a" / "srv"
        srv_b = lab.tmp / "machines" / "full" / "b" / "srv"
        assert (srv_a / "greeting").read_text() == "hello from a\n"
        assert (srv_b / "b.conf").read_text() == f"peer={ip_a}\n"
        assert (srv_b / "b.conf").stat().st_mode & 0o777 == 0o640
        seen = [o["data"] for o in out if o["event"] == "output" and o["step"] == "b-sees-a"]
        assert seen and seen[0].split()[:3] == [ip_a, "a", "a.full"]
        after = "".join(
            o["data"] for o in out if o["event"] == "output" and o["step"] == "after-reboot"
        )
        assert after == f"peer={ip_a}\n"
        # The reboot really took b away and back.
        states_b = [o["state"] for o in out if o["event"] == "machine" and o["machine"] == "b"]
        assert "offline" in states_b and states_b[-1] == "ready"
        with open("/etc/hosts") as fh:
            assert "cloudremotecontrol" not in fh.read()

        r = lab.crc("down", str(path), "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        done = next(o for o in lines(r.stdout) if o["event"] == "down")
        assert sorted(done["destroyed"]) == ["full.a", "full.b"]
        assert done["left"] == [] and done["group_deleted"] is True and done["revoked"] == 2
        _nothing_left(lab.provider, "full")
        with pytest.raises(NotFound):
            lab.client.group("full")
        assert not (lab.tmp / "cfg" / "scenarios" / "full.json").exists()
    finally:
        lab.cleanup("full")


RESUME = """\
name: resume
provider: local
timeouts: {ready: 60s, step: 2m}
machines: {a: , b: }
steps:
  - name: first
    run: echo first-ran >> /srv/count
  - name: gate
    wait: {kv: go}
  - name: last
    run: cat /srv/count
"""


@needs_root
def test_up_again_after_a_crash_resumes_without_duplicating_machines(netlab):
    lab = netlab
    path = lab.scenario(RESUME)
    try:
        proc = subprocess.Popen(
            lab.argv("up", str(path), "--json"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=lab.env,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            doc = json.loads(line)
            if doc.get("event") == "step" and doc["step"] == "gate" and doc["status"] == "started":
                break
        else:
            raise AssertionError(proc.stderr.read() if proc.stderr else "no gate step")
        proc.send_signal(signal.SIGKILL)  # a crash of the master, mid-scenario
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()
        before = {i.name: lab.provider._load(i.id)["pid"] for i in lab.provider.list("resume")}
        assert sorted(before) == ["a", "b"]

        lab.client.kv_set("resume", "go", True)
        r = lab.crc("up", str(path), "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        out = lines(r.stdout)
        status = {o["step"]: o["status"] for o in out if o["event"] == "step"}
        assert status == {"first": "done", "gate": "succeeded", "last": "succeeded"}
        # Same agents, no second machine for a slot, first step not run twice.
        after = {i.name: lab.provider._load(i.id)["pid"] for i in lab.provider.list("resume")}
        assert after == before
        assert len(lab.client.group("resume")["machines"]) == 2
        counts = [o["data"] for o in out if o["event"] == "output" and o["step"] == "last"]
        assert counts == ["first-ran\n", "first-ran\n"]

        r = lab.crc("down", "--group", "resume")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "2 machine(s) destroyed, none left at local; group deleted" in r.stdout
        _nothing_left(lab.provider, "resume")
    finally:
        lab.cleanup("resume")


SLOW_STEP = """\
name: slowstep
provider: local
timeouts: {ready: 60s, step: 2m}
machines: {a: }
steps:
  - name: slow
    run: echo started; echo started >> /srv/count; sleep 6; echo ended >> /srv/count
  - name: after
    run: cat /srv/count
"""


@needs_root
def _killed_mid_slow_step(lab: Any, *args: str) -> None:
    """Run `crc up` and kill it -9 (a crash of the master) once step slow's job runs."""
    proc = subprocess.Popen(
        lab.argv("up", *args, "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=lab.env,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        doc = json.loads(line)
        if doc.get("event") == "output" and doc["step"] == "slow":
            break  # the job runs on the machine
    else:
        raise AssertionError(proc.stderr.read() if proc.stderr else "no output of slow")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    assert proc.stderr is not None
    proc.stderr.close()


def test_up_again_after_a_crash_mid_step_follows_the_job_still_running(netlab):
    """A `crc up` killed while a step's job runs: the next one follows that job to its
    end (its output and its result decide the step) rather than running the step a
    second time beside it; so does a `crc up` after a `--rerun` killed so, the steps
    the run before it had done notwithstanding."""
    lab = netlab
    path = lab.scenario(SLOW_STEP)
    try:
        _killed_mid_slow_step(lab, str(path))

        r = lab.crc("up", str(path), "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        out = lines(r.stdout)
        status = {o["step"]: o["status"] for o in out if o["event"] == "step"}
        assert status == {"slow": "succeeded", "after": "succeeded"}, out
        notes = [o for o in out if o["event"] == "info" and o.get("step") == "slow"]
        assert len(notes) == 1 and "started by an earlier `crc up`" in notes[0]["text"], out
        # Run once, to its end: one start and one end, in that order.
        counts = [o["data"] for o in out if o["event"] == "output" and o["step"] == "after"]
        assert counts == ["started\nended\n"], counts
        # Once that job is over, `--rerun` runs the step again: a new job.
        r = lab.crc("up", str(path), "--rerun", "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        out = lines(r.stdout)
        assert not [o for o in out if o["event"] == "info" and o.get("step") == "slow"], out
        counts = [o["data"] for o in out if o["event"] == "output" and o["step"] == "after"]
        assert counts == ["started\nended\nstarted\nended\n"], counts

        _killed_mid_slow_step(lab, str(path), "--rerun")
        r = lab.crc("up", str(path), "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        out = lines(r.stdout)
        status = {o["step"]: o["status"] for o in out if o["event"] == "step"}
        assert status == {"slow": "succeeded", "after": "succeeded"}, out
        notes = [o for o in out if o["event"] == "info" and o.get("step") == "slow"]
        assert len(notes) == 1 and "started by an earlier `crc up`" in notes[0]["text"], out
        counts = [o["data"] for o in out if o["event"] == "output" and o["step"] == "after"]
        assert counts == ["started\nended\n" * 3], counts
    finally:
        lab.cleanup("slowstep")


ISOLATED = """\
name: iso
provider: local
timeouts: {ready: 60s, step: 60s}
machines: {a: , b: }
steps:
  - name: hosts
    hosts: true
  - name: a-sees-b
    to: a
    run: getent hosts b
  - name: flaky
    to: b
    needs: []
    retries: 1
    retry_delay: 0.1s
    run: exit 3
  - name: after-flaky
    to: b
    run: echo never
"""


def test_up_with_a_loopback_server_isolates_machines_without_a_network(env, crc):
    env.cli_env["CRC_LOCAL_DIR"] = str(env.tmp / "machines")
    path = env.tmp / "iso.yaml"
    path.write_text(ISOLATED)
    provider = LocalProvider(env.tmp / "machines")
    try:
        r = crc("up", str(path), "--json")
        assert r.returncode == 1, r.stdout + r.stderr  # one step failed
        out = lines(r.stdout)
        if ROOT:
            assert "the server listens on loopback" in out[0]["text"]
        summary = {s["name"]: s for s in out[-1]["steps"]}
        assert summary["hosts"]["status"] == "succeeded"
        assert summary["a-sees-b"]["status"] == "succeeded"
        assert summary["flaky"]["status"] == "failed" and summary["flaky"]["attempts"] == 2
        assert "b: failed (exit 3)" in summary["flaky"]["message"]
        assert summary["after-flaky"]["status"] == "skipped"
        # One shared network: b's address is one of this computer's own.
        seen = [o["data"] for o in out if o["event"] == "output" and o["step"] == "a-sees-b"]
        ip, *names = seen[0].split()
        assert "b" in names and "b.iso" in names
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((ip, 0))
        with open("/etc/hosts") as fh:
            assert "cloudremotecontrol" not in fh.read()

        r = crc("down", str(path))
        assert r.returncode == 0, r.stdout + r.stderr
        _nothing_left(provider, "iso")
    finally:
        for inst in provider.list("iso"):
            provider.destroy(inst.id)


def test_up_passes_env_values_and_argv_elements_as_written(env, crc):
    """``MODE: 010`` is ``010`` on the machine, not YAML's 8: the file is composed by
    libyaml there, which marks a plain scalar otherwise than PyYAML's own composer."""
    env.cli_env["CRC_LOCAL_DIR"] = str(env.tmp / "machines")
    path = env.tmp / "written.yaml"
    path.write_text(
        "name: written\nprovider: {name: local, network: isolated}\nmachines:\n  a: {}\n"
        "steps:\n  - name: show\n    run: [sh, -c, 'echo \"MODE=$MODE ARG=$0\"', 0755]\n"
        "    env:\n      MODE: 010\n"
    )
    provider = LocalProvider(env.tmp / "machines")
    try:
        r = crc("up", str(path), "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        seen = [o["data"] for o in lines(r.stdout) if o["event"] == "output"]
        assert "".join(seen) == "MODE=010 ARG=0755\n", seen
        r = crc("down", str(path))
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        for inst in provider.list("written"):
            provider.destroy(inst.id)


def test_up_refuses_an_invalid_scenario_with_file_and_line(env, crc):
    path = env.tmp / "bad.yaml"
    path.write_text("name: bad\nmachines: {a: }\nsteps:\n  - run: ~\n    to: nobody\n")
    r = crc("up", str(path))
    assert r.returncode == 2
    assert "bad.yaml:4:10: steps.run-1.run: expected a string" in r.stderr
    assert "bad.yaml:5:9: steps.run-1.to: no machine nobody" in r.stderr
    assert "Traceback" not in r.stderr
    # One line, the problems in the file's order (not with "\n" escapes in it).
    assert r.stderr.startswith("crc: error: invalid scenario: bad.yaml:4:10: "), r.stderr
    assert "expected a string; bad.yaml:5:9: " in r.stderr and "\\n" not in r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr


@contextlib.contextmanager
def _local_machines(env: Any, scenario: str) -> Iterator[LocalProvider]:
    """`crc up`'s local machines under the test's directory; whatever of ``scenario``
    the test leaves is destroyed at the end."""
    env.cli_env["CRC_LOCAL_DIR"] = str(env.tmp / "machines")
    provider = LocalProvider(env.tmp / "machines")
    try:
        yield provider
    finally:
        for inst in provider.list(scenario):
            provider.destroy(inst.id)


@needs_root
def test_up_with_network_plain_as_root_is_refused_before_anything_is_made(env, crc):
    """As root, plain processes would share and edit this computer's /etc/hosts: the
    setting is refused before the group is made, saying so (not that unshare is
    missing, as when auto has nothing better)."""
    env.cli_env["CRC_LOCAL_DIR"] = str(env.tmp / "machines")
    path = env.tmp / "plain.yaml"
    path.write_text("name: plainly\nprovider: {name: local, network: plain}\nmachines: {a: }\n")
    r = crc("up", str(path))
    assert r.returncode == 2, r.stdout + r.stderr  # the file's setting: invalid input
    assert "network: plain is refused as root" in r.stderr, r.stderr
    assert "unshare(1) (util-linux) is missing" not in r.stderr
    assert "crc down" not in r.stderr + r.stdout  # nothing was made
    assert "plainly" not in crc("group", "list").stdout
    assert LocalProvider(env.tmp / "machines").list("plainly") == []


@needs_root
def test_up_from_a_pipe_names_the_group_to_tear_down_and_where_problems_are(env, crc):
    """`crc up <(...)` reads a pipe once: the advice after a failed step names the group
    for `crc down` (not /dev/fd/63, gone by then, nor `crc up` it again), and a problem
    of the file says /dev/fd/63, not 63."""
    text = "name: piped\nprovider: local\ntimeouts: {ready: 60s}\nmachines: {a: }\n"
    (env.tmp / "piped.yaml").write_text(text + "steps:\n  - {name: fails, run: exit 3}\n")
    (env.tmp / "bad.yaml").write_text(text + "steps:\n  - {name: bad, run: x, to: nobody}\n")

    def up_from_a_pipe(name: str) -> subprocess.CompletedProcess[str]:
        crc_argv = f"{shlex.quote(sys.executable)} -m cloudremotecontrol"
        return subprocess.run(
            ["bash", "-c", f"{crc_argv} up <(cat {shlex.quote(str(env.tmp / name))})"],
            capture_output=True,
            text=True,
            env={**os.environ, **env.cli_env},
            timeout=120,
        )

    with _local_machines(env, "piped") as provider:
        r = up_from_a_pipe("bad.yaml")
        assert r.returncode == 2, r.stdout + r.stderr
        assert re.search(r"error: invalid scenario: /dev/fd/\d+:6:", r.stderr), r.stderr
        r = up_from_a_pipe("piped.yaml")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "`crc down --group piped` destroys them" in r.stderr, r.stderr
        assert "/dev/fd" not in r.stderr and "again resumes" not in r.stderr, r.stderr
        r = crc("down", "--group", "piped")
        assert r.returncode == 0, r.stdout + r.stderr
        _nothing_left(provider, "piped")


@needs_root
def test_up_of_a_scenario_whose_ttl_passed_says_to_tear_it_down_not_to_resume(env, crc):
    """Its machines revoked by the server, nothing of it can resume: `crc up` says the
    TTL passed and that `crc down` comes first, not that `crc up` again resumes."""
    path = env.tmp / "brief.yaml"
    path.write_text(
        "name: brief\nprovider: local\nttl: 1s\ntimeouts: {ready: 60s}\nmachines: {a: }\n"
    )
    with _local_machines(env, "brief") as provider:
        crc("up", str(path))  # ready in time or not: the TTL passes either way
        deadline = time.monotonic() + 30
        while not env.client.group("brief").get("expired"):
            assert time.monotonic() < deadline, env.client.group("brief")
            time.sleep(0.2)
        r = crc("up", str(path))
        assert r.returncode == 5, r.stdout + r.stderr
        assert "group brief has expired (its TTL passed)" in r.stderr, r.stderr
        assert "`crc down --group brief` then `crc up`" in r.stderr, r.stderr
        assert "again resumes" not in r.stderr + r.stdout, r.stderr
        # A command to it is refused; a `crc up` made it, so `crc down` is named (it
        # destroys the machines too; `crc group delete` would refuse the group).
        r = crc("send", "brief", "--to", "all", "user.hi")
        assert r.returncode == 4, r.stdout + r.stderr
        assert r.stderr.splitlines()[-1].endswith(
            "group 'brief' has expired (its TTL): its machines are revoked; run "
            "`crc down --group brief`"
        ), r.stderr
        r = crc("down", str(path))
        assert r.returncode == 0, r.stdout + r.stderr
        _nothing_left(provider, "brief")


def test_up_whose_ttl_passes_during_a_step_does_not_say_up_again_resumes(env, crc):
    """The TTL passes while a step runs: the machines are revoked, so the failure names
    `crc down` alone, not `crc up` again (which would be refused)."""
    path = env.tmp / "short.yaml"
    path.write_text(
        "name: short\nprovider: local\nttl: 4s\ntimeouts: {ready: 60s, step: 60s}\n"
        "machines: {a: }\nsteps:\n  - name: long\n    run: sleep 30\n"
    )
    with _local_machines(env, "short") as provider:
        r = crc("up", str(path), timeout=120)
        assert r.returncode != 0, r.stdout + r.stderr
        assert env.client.group("short").get("expired"), r.stdout + r.stderr
        assert "still at local" in r.stderr, r.stderr
        assert "again resumes" not in r.stderr, r.stderr
        assert f"`crc down {path}` destroys them" in r.stderr, r.stderr
        r = crc("down", str(path))
        assert r.returncode == 0, r.stdout + r.stderr
        _nothing_left(provider, "short")


@needs_root
def test_up_again_with_other_labels_or_ttl_says_the_group_keeps_what_it_was_made_with(env, crc):
    """Labels and the TTL are given when the group is made. Changed in the file, steps
    would select by the file's labels while the server answers with the group's: refused,
    saying which; a changed TTL is said and the rest goes on."""
    path = env.tmp / "feat.yaml"
    text = (
        "name: feat\nprovider: local\nttl: 8h\ntimeouts: {ready: 60s}\n"
        "machines: {db: {labels: {role: db}}}\n"
        "steps:\n  - name: show\n    to: role=db\n    run: echo {{ machines.db.labels.role }}\n"
    )
    path.write_text(text)
    with _local_machines(env, "feat") as provider:
        r = crc("up", str(path))
        assert r.returncode == 0, r.stdout + r.stderr
        path.write_text(text.replace("role: db", "role: dbx").replace("role=db", "role=dbx"))
        r = crc("up", str(path))
        assert r.returncode == 5, r.stdout + r.stderr
        assert (
            "the labels of machine(s) db (role=db -> role=dbx) changed in the scenario after "
            "group feat was made: put them back, or `crc down --group feat` then `crc up`"
        ) in r.stderr, r.stderr
        assert "again resumes" not in r.stderr, r.stderr
        path.write_text(text.replace("ttl: 8h", "ttl: 1h"))
        r = crc("up", str(path), "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        notes = [o["text"] for o in lines(r.stdout) if o["event"] == "info"]
        assert (
            "ttl: the scenario says 3600s; group feat keeps the TTL it was made with "
            "(28800s): `crc down` then `crc up` applies it"
        ) in notes, notes
        r = crc("down", str(path))
        assert r.returncode == 0, r.stdout + r.stderr
        _nothing_left(provider, "feat")


def test_down_of_an_unknown_group_says_how_to_clean_up(env, crc):
    r = crc("down", "--group", "nothing-here")
    assert r.returncode == 4
    assert "--provider" in r.stderr


@needs_root
def test_demo_runs_the_scenario_and_leaves_no_process_or_namespace():
    # A TMPDIR of its own, to check that the demo leaves nothing in it.
    tmp = Path(tempfile.mkdtemp(prefix="crct-", dir="/tmp"))
    try:
        r = subprocess.run(
            [sys.executable, "-m", "cloudremotecontrol", "demo", "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "TMPDIR": str(tmp)},
        )
        left_files = list(tmp.iterdir())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert r.returncode == 0, r.stdout + r.stderr
    out = lines(r.stdout)
    summary = next(o for o in out if o["event"] == "summary")
    assert summary["ok"] and {m["name"] for m in summary["machines"]} == {"mysql", "web", "dev"}
    reached = "".join(
        o["data"] for o in out if o["event"] == "output" and o["step"] == "dev-reaches-web"
    )
    assert "GET http://web:8080/app.conf -> 200" in reached and "name = shop" in reached
    assert out[-1]["left"] == []
    demo = LocalProvider(Path(out[0]["dir"]) / "machines")  # the demo's own provider
    assert _netns(f"crc-{demo.scope}-") == []
    assert [v for v in _marked().values() if v.startswith(f"{demo.scope}/")] == []
    assert left_files == []  # the demo's temporary directory is gone
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for m in ("mysql", "web", "dev"):
        assert veth_name(f"{demo.scope}/demo.{m}") not in links


@needs_root
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_demo_stopped_by_a_signal_tears_down_what_it_made(sig):
    """`kill` or a closed terminal stops the demo as Ctrl-C does: its machines, its
    server and its directory are gone (no later `crc down` would find them)."""
    tmp = Path(tempfile.mkdtemp(prefix="crct-", dir="/tmp"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", "demo", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp)},
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        demo = LocalProvider(Path(first["dir"]) / "machines")
        deadline = time.monotonic() + 90
        while not _netns(f"crc-{demo.scope}-"):  # a machine exists
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.1)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=90)
        left_files = list(tmp.iterdir())
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    assert proc.returncode == 128 + sig, (proc.returncode, err)
    assert "Traceback" not in err, err
    assert any(o.get("event") == "summary" for o in lines(out)), out
    assert _netns(f"crc-{demo.scope}-") == []
    assert [v for v in _marked().values() if v.startswith(f"{demo.scope}/")] == []
    assert left_files == []  # its directory, with the server's data, is gone
    servers = subprocess.run(["pgrep", "-f", first["dir"]], capture_output=True, text=True)
    assert servers.stdout == "", servers.stdout  # no server or agent of it still runs


@needs_root
def test_a_create_that_fails_halfway_leaves_no_namespace_veth_or_process(tmp_path, monkeypatch):
    provider = LocalProvider(tmp_path / "m", server_url="https://10.213.0.1:9")
    real = localnet.run

    def failing(*argv: str, check: bool = True):
        if argv[:3] == ("ip", "link", "set") and "master" in argv:
            raise ProviderError("injected failure")
        return real(*argv, check=check)

    spec = MachineSpec(name="a", os="linux", region="", plan="", image="")
    monkeypatch.setattr(localnet, "run", failing)
    with pytest.raises(ProviderError, match="injected failure"):
        provider.create("broken", spec, "#!/bin/sh\nexec sleep 600\n")
    monkeypatch.undo()
    _nothing_left(provider, "broken")
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert veth_name(f"{provider.scope}/broken.a") not in links

    # A machine whose boot dies is reported stopped, with its console, and goes cleanly.
    inst = provider.create("broken", spec, "#!/bin/sh\necho cannot boot; exit 1\n")
    with pytest.raises(ProviderError, match="cannot boot"):
        for _ in range(100):
            provider.wait_running(inst.id, timeout=5)
            time.sleep(0.05)
    provider.destroy(inst.id)
    _nothing_left(provider, "broken")
    provider.release_network()


@needs_root
def test_sync_hosts_follows_a_peer_that_changes_ip(netlab):
    """Each machine in its own network namespace; a's address changes: b's hosts file
    (its own, bind-mounted) follows, through facts refresh and the group's --sync-hosts."""
    from cloudremotecontrol.providers.local import startup_script

    lab = netlab
    out = lab.client.create_group(
        "moving", ["a", "b"], settings={"sync_hosts": True, "hosts_ip": "private"}
    )
    for m in out["machines"]:
        script = startup_script(lab.server.url, m["key"], lab.server.fingerprint).replace(
            "agent run", "agent run --facts-interval 0.5"
        )
        lab.provider.create(
            "moving", MachineSpec(name=m["name"], os="linux", region="", plan="", image=""), script
        )
    try:
        insts = {i.name: i for i in lab.provider.list("moving")}
        hosts_b = lab.provider._dir(insts["b"].id) / "hosts"
        old_ip = insts["a"].private_ip
        assert old_ip and old_ip.startswith("10.213.")

        def wait_for(needle: bytes, gone: bytes | None = None) -> None:
            deadline = time.monotonic() + 60
            while True:
                content = hosts_b.read_bytes()
                if needle in content and (gone is None or gone not in content):
                    return
                assert time.monotonic() < deadline, content
                time.sleep(0.1)

        wait_for(f"{old_ip} a a.moving\n".encode())
        new_ip = "10.213.250.7"
        ns = lab.provider._ns(insts["a"].id)
        # Like a DHCP renumbering: the new address first, then the old one goes (promoted
        # secondaries keep the interface's routes).
        localnet.run(
            "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.conf.eth0.promote_secondaries=1"
        )
        localnet.run("ip", "-n", ns, "addr", "add", f"{new_ip}/16", "dev", "eth0")
        localnet.run("ip", "-n", ns, "addr", "del", f"{old_ip}/16", "dev", "eth0")
        wait_for(f"{new_ip} a a.moving\n".encode(), gone=f"{old_ip} a".encode())
        assert hosts_b.read_bytes().count(b"# BEGIN cloudremotecontrol group=moving") == 1
    finally:
        lab.cleanup("moving")


EXPOSE = """\
name: {group}
provider: local
timeouts: {{ready: 60s, step: 60s}}
machines:
  web: {{expose: [80]}}
  db:
steps:
  - name: sites
    run: |
      mkdir -p /srv/site && cd /srv/site && echo "page of $(hostname)" > index.html
      setsid python3 -m http.server {port} --bind 0.0.0.0 >/dev/null 2>&1 < /dev/null &
      echo $! > /srv/http.pid
      for i in $(seq 100); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1', {port}))" \\
          2>/dev/null && exit 0
        sleep 0.1
      done
      exit 1
"""


@needs_root
def test_expose_forwards_to_machines_in_namespaces_and_to_a_peers_private_address(netlab):
    """`crc up` lists the exposed ports, `crc forward --scenario` opens them, and a
    forward through web reaches db's private address on the namespaces' network."""
    lab = netlab
    path = lab.scenario(EXPOSE.format(group="expo", port=80))
    procs: list[subprocess.Popen[str]] = []
    try:
        r = lab.crc("up", str(path))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "crc forward expo web 8080:80" in r.stderr
        assert f"crc forward expo --scenario {path}" in r.stderr
        ip_db = {i.name: i for i in lab.provider.list("expo")}["db"].private_ip
        # A forward through web to its peer's private address (web connects to it).
        procs.append(
            subprocess.Popen(
                lab.argv("forward", "expo", "web", f"0:{ip_db}:80"),
                env=lab.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
        procs.append(
            subprocess.Popen(
                lab.argv("forward", "expo", "--scenario", str(path)),
                env=lab.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
        import urllib.request

        pages = []
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert " -> " in line, line + (proc.stderr.read() if proc.stderr else "")
            url = line.split()[0]
            with urllib.request.urlopen(url, timeout=60) as resp:
                pages.append(resp.read().decode())
        assert pages == ["page of db\n", "page of web\n"]
        assert "127.0.0.1:8080" in url
        # web made the connection to db (the audit's record of the forward).
        via = [x for x in lab.client.sessions("expo") if x["target"] == f"{ip_db}:80"]
        assert via and all(x["machine"] == "web" for x in via)
        assert any(x["bytes_from_machine"] > 0 for x in via)
    finally:
        # Everything is torn down before the forwards' exit codes are judged: a forward
        # that failed (its port taken) must not leave the machines running.
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        codes = []
        for proc in procs:
            try:
                codes.append(proc.wait(30))
            except subprocess.TimeoutExpired:
                codes.append(None)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                for f in (proc.stdout, proc.stderr):
                    if f is not None:
                        f.close()
        for m in ("web", "db"):
            pid = lab.tmp / "machines" / "expo" / m / "srv" / "http.pid"
            if pid.exists():
                with contextlib_suppress():
                    os.kill(int(pid.read_text()), signal.SIGTERM)
        lab.crc("down", str(path))
        lab.cleanup("expo")
    assert codes == [0] * len(procs), codes


def contextlib_suppress() -> object:
    import contextlib

    return contextlib.suppress(ProcessLookupError, ValueError)


EDITED = """\
name: edited
provider: local
timeouts: {{ready: 60s, step: 60s}}
variables: {{word: {word}, other: same}}
machines: {{a: }}
steps:
  - name: say
    run: echo "{{{{ vars.word }}}}"
  - name: fixed
    needs: []
    run: echo "{{{{ vars.other }}}}"
  - name: push
    needs: []
    push: {{dest: /tmp/crc-edited-{tag}.conf, src: payload.txt}}
"""


def test_up_again_reruns_a_step_whose_variable_or_pushed_file_changed(env, crc):
    """What a step does is its definition plus the variables it uses and the file it
    pushes: editing either makes the next `crc up` run it again, the others stay done."""
    env.cli_env["CRC_LOCAL_DIR"] = str(env.tmp / "machines")
    tag = env.tmp.name
    path = env.tmp / "edited.yaml"
    payload = env.tmp / "payload.txt"
    provider = LocalProvider(env.tmp / "machines")
    try:
        path.write_text(EDITED.format(word="one", tag=tag))
        payload.write_text("v1\n")
        r = crc("up", str(path), "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        status = {o["step"]: o["status"] for o in lines(r.stdout) if o["event"] == "step"}
        assert status == {"say": "succeeded", "fixed": "succeeded", "push": "succeeded"}

        path.write_text(EDITED.format(word="two", tag=tag))
        payload.write_text("v2\n")
        r = crc("up", str(path), "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        out = lines(r.stdout)
        status = {o["step"]: o["status"] for o in out if o["event"] == "step"}
        assert status == {"say": "succeeded", "fixed": "done", "push": "succeeded"}
        said = [o["data"] for o in out if o["event"] == "output" and o["step"] == "say"]
        assert said == ["two\n"]
        # Nothing changed since: every step is done.
        r = crc("up", str(path), "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        status = {o["step"]: o["status"] for o in lines(r.stdout) if o["event"] == "step"}
        assert status == {"say": "done", "fixed": "done", "push": "done"}

        r = crc("down", str(path))
        assert r.returncode == 0, r.stdout + r.stderr
        _nothing_left(provider, "edited")
    finally:
        for inst in provider.list("edited"):
            provider.destroy(inst.id)
        Path(f"/tmp/crc-edited-{tag}.conf").unlink(missing_ok=True)


def test_down_destroys_the_machines_when_the_server_cannot_be_reached(env, crc):
    """A dead server must not keep machines running: `crc down FILE` (or `--group G
    --provider P`) destroys them, then says in one line that the group is left."""
    env.cli_env["CRC_LOCAL_DIR"] = str(env.tmp / "machines")
    path = env.tmp / "away.yaml"
    path.write_text("name: away\nprovider: local\ntimeouts: {ready: 60s}\nmachines: {a: , b: }\n")
    provider = LocalProvider(env.tmp / "machines")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = {"CRC_URL": f"https://127.0.0.1:{s.getsockname()[1]}"}
    try:
        r = crc("up", str(path))
        assert r.returncode == 0, r.stdout + r.stderr
        assert sorted(i.name for i in provider.list("away")) == ["a", "b"]

        # Without the file or a provider there is no knowing where the machines are.
        r = crc("down", "--group", "away", extra_env=dead)
        assert r.returncode == 6, r.stdout + r.stderr
        assert "cannot reach" in r.stderr and "--provider" in r.stderr
        assert len(provider.list("away")) == 2

        r = crc("down", str(path), extra_env=dead)
        assert r.returncode == 6, r.stdout + r.stderr
        assert "2 machine(s) destroyed, none left at local; group not deleted" in r.stdout
        assert r.stderr.startswith("crc: error: cannot reach "), r.stderr
        assert "group away is not deleted" in r.stderr
        assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr
        _nothing_left(provider, "away")
        assert len(env.client.group("away")["machines"]) == 2  # left on the server

        # Once the server is back, `crc down` finishes the job.
        r = crc("down", str(path))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "0 machine(s) destroyed, none left at local; group deleted" in r.stdout
        with pytest.raises(NotFound):
            env.client.group("away")
    finally:
        for inst in provider.list("away"):
            provider.destroy(inst.id)


def test_down_destroys_the_machines_when_the_server_stops_or_refuses_the_token(env, crc):
    """The profile knows the server's certificate, so the first call to the server is
    the group's lookup: a server that stopped since, or that refuses the token, must
    not keep the machines running either. They are destroyed, and one line says the
    group is left and why (exit 6 or 3)."""
    env.cli_env["CRC_LOCAL_DIR"] = str(env.tmp / "machines")
    provider = LocalProvider(env.tmp / "machines")
    paths = {}
    try:
        for name in ("refused", "stopped"):
            paths[name] = env.tmp / f"{name}.yaml"
            paths[name].write_text(
                f"name: {name}\nprovider: local\ntimeouts: {{ready: 60s}}\nmachines: {{a: }}\n"
            )
            r = crc("up", str(paths[name]))
            assert r.returncode == 0, r.stdout + r.stderr

        r = crc("down", str(paths["refused"]), extra_env={"CRC_TOKEN": "crc_not_a_token"})
        assert r.returncode == 3, r.stdout + r.stderr
        assert "1 machine(s) destroyed, none left at local; group not deleted" in r.stdout
        assert "refused the token" in r.stdout
        assert "group refused is not deleted" in r.stderr and "crc login" in r.stderr
        assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr
        _nothing_left(provider, "refused")

        env.server.stop()
        try:
            r = crc("down", str(paths["stopped"]))
        finally:
            env.server.start()
        assert r.returncode == 6, r.stdout + r.stderr
        assert "1 machine(s) destroyed, none left at local; group not deleted" in r.stdout
        assert "group stopped is not deleted" in r.stderr
        assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr
        _nothing_left(provider, "stopped")
        assert len(env.client.group("stopped")["machines"]) == 1  # left on the server
    finally:
        for name in paths:
            for inst in provider.list(name):
                provider.destroy(inst.id)


def test_down_destroys_the_machines_when_the_scenario_cannot_be_locked(env, crc, tmp_path):
    """A configuration directory `crc down` cannot write (read-only, owned by another
    user after a `sudo crc up`) does not keep the machines running: it warns that it goes
    on unlocked; `crc up` there says why in one line."""
    env.cli_env["CRC_LOCAL_DIR"] = str(env.tmp / "machines")
    provider = LocalProvider(env.tmp / "machines")
    path = env.tmp / "ro.yaml"
    path.write_text("name: ro\nprovider: local\ntimeouts: {ready: 60s}\nmachines: {a: }\n")
    config = Path(env.cli_env.get("CRC_CONFIG_DIR") or tmp_path / "cfg")
    try:
        r = crc("up", str(path))
        assert r.returncode == 0, r.stdout + r.stderr
        scenarios = config / "scenarios"
        assert scenarios.is_dir(), list(config.iterdir())
        for f in scenarios.iterdir():  # as if another process had never made its lock
            if f.suffix == ".lock":
                f.unlink()
        shutil.move(scenarios, config / "scenarios.saved")
        scenarios.write_text("not a directory\n")  # the lock cannot be made under it
        try:
            up = crc("up", str(path))
            r = crc("down", str(path))
        finally:
            scenarios.unlink()
            shutil.move(config / "scenarios.saved", scenarios)
        assert up.returncode == 1, up.stdout + up.stderr
        assert up.stderr.startswith("crc: error: cannot lock "), up.stderr
        assert len(up.stderr.splitlines()) == 1 and "Traceback" not in up.stderr
        assert r.returncode == 0, r.stdout + r.stderr
        assert "warning: cannot lock " in r.stdout + r.stderr
        assert "1 machine(s) destroyed, none left at local; group deleted" in r.stdout
        _nothing_left(provider, "ro")
    finally:
        for inst in provider.list("ro"):
            provider.destroy(inst.id)


INTERRUPTED = """\
name: ctrlc
provider: local
timeouts: {ready: 60s, step: 2m}
machines: {a: }
steps:
  - name: first
    run: echo first
  - name: slow
    run: crc agent kv set slow started; sleep 120
  - name: gate
    needs: [first]
    wait: {kv: go}
  - name: after
    needs: [slow, gate]
    run: echo after
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_during_steps_reports_them_and_up_again_resumes(env, crc, sig):
    """Ctrl-C (or `kill`, taken as it): exit 130 (143), the summary says what each step
    did (the one that succeeded is kept, the running ones failed, the rest skipped), the
    run's report is ended and `crc up` again resumes."""
    env.cli_env["CRC_LOCAL_DIR"] = str(env.tmp / "machines")
    path = env.tmp / "ctrlc.yaml"
    path.write_text(INTERRUPTED)
    provider = LocalProvider(env.tmp / "machines")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cloudremotecontrol", "up", str(path), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env.cli_env},
        )
        deadline = time.monotonic() + 60
        while True:  # both running: the job on the machine, the wait on the server
            try:
                env.client.kv_get("ctrlc", "slow")
                break
            except NotFound:
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
                time.sleep(0.1)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + sig, out + err
        assert "Traceback" not in err
        summary = lines(out)[-1]
        assert summary["event"] == "summary" and summary["interrupted"] is True
        steps = {s["name"]: (s["status"], s["message"]) for s in summary["steps"]}
        assert list(steps) == ["first", "slow", "gate", "after"]
        assert steps["first"] == ("succeeded", "job " + steps["first"][1][4:])
        assert steps["slow"][0] == "failed" and steps["gate"][0] == "failed"
        assert steps["after"] == ("skipped", "interrupted")
        run = env.client.run_state("ctrlc")
        assert (run["state"], run["message"]) == ("failed", "interrupted")
        assert run["finished"] is not None
        # The job was cancelled on the machine.
        assert (
            "sleep 120"
            not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        )

        env.client.kv_set("ctrlc", "go", True)
        path.write_text(INTERRUPTED.replace("sleep 120", "true"))
        r = crc("up", str(path), "--json", timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        status = {o["step"]: o["status"] for o in lines(r.stdout) if o["event"] == "step"}
        assert status == {
            "first": "done",
            "slow": "succeeded",
            "gate": "succeeded",
            "after": "succeeded",
        }
        assert [i.name for i in provider.list("ctrlc")] == ["a"]

        r = crc("down", str(path))
        assert r.returncode == 0, r.stdout + r.stderr
        _nothing_left(provider, "ctrlc")
    finally:
        for inst in provider.list("ctrlc"):
            provider.destroy(inst.id)


def test_a_wait_for_a_message_that_times_out_says_the_steps_timeout(env, crc):
    env.cli_env["CRC_LOCAL_DIR"] = str(env.tmp / "machines")
    path = env.tmp / "late.yaml"
    path.write_text(
        "name: late\nprovider: local\ntimeouts: {ready: 60s}\nmachines: {a: }\n"
        "steps:\n  - name: m\n    timeout: 1s\n    wait: {message: never}\n"
    )
    provider = LocalProvider(env.tmp / "machines")
    try:
        r = crc("up", str(path), "--json")
        assert r.returncode == 1, r.stdout + r.stderr
        (step,) = lines(r.stdout)[-1]["steps"]
        assert (step["status"], step["message"]) == ("failed", "no user.never from a within 1 s")
        r = crc("down", str(path))
        assert r.returncode == 0, r.stdout + r.stderr
        _nothing_left(provider, "late")
    finally:
        for inst in provider.list("late"):
            provider.destroy(inst.id)


@needs_root
def test_a_waits_message_body_and_kv_value_are_shown_as_json(env, crc):
    """What a wait found is shown as every command shows a machine's value: JSON (null,
    true, double quotes), its controls escaped, not as Python's repr."""
    path = env.tmp / "shown.yaml"
    path.write_text(
        "name: shown\nprovider: local\ntimeouts: {ready: 60s}\nmachines: {a: }\nsteps:\n"
        "  - name: say\n    run: |\n"
        '      crc agent kv set k \'{"n": null, "b": true}\'\n'
        '      crc agent emit user.m \'{"t": "\\u001b[31mR", "n": null}\'\n'
        "  - name: kv\n    needs: [say]\n    wait: {kv: k}\n"
        "  - name: m\n    to: a\n    wait: {message: m}\n"
    )
    with _local_machines(env, "shown") as provider:
        r = crc("up", str(path), "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        out = lines(r.stdout)
        steps = {s["name"]: s for s in out[-1]["steps"]}
        assert steps["kv"]["message"] == 'k = {"n": null, "b": true}'
        shown = [o["data"] for o in out if o["event"] == "output" and o["step"] == "m"]
        assert shown == ['user.m {"t": "\\u001b[31mR", "n": null}'], shown
        r = crc("down", str(path))
        assert r.returncode == 0, r.stdout + r.stderr
        _nothing_left(provider, "shown")


def test_down_with_a_file_leaves_a_group_crc_up_did_not_make(env, crc):
    """`crc up` refuses to adopt a group made by hand; `crc down FILE` must not delete
    it (and revoke its machines) either, as `crc down --group` does not."""
    env.cli_env["CRC_LOCAL_DIR"] = str(env.tmp / "machines")
    env.client.create_group("byhand", ["a"])
    path = env.tmp / "byhand.yaml"
    path.write_text("name: byhand\nprovider: local\nmachines: {a: }\n")
    for args in ([str(path)], ["--group", "byhand"]):
        r = crc("down", *args)
        assert r.returncode == 5, r.stdout + r.stderr
        assert r.stderr == (
            "crc: error: group byhand was not made by `crc up`: delete it with "
            "`crc group delete byhand`\n"
        )
    assert [m["name"] for m in env.client.group("byhand")["machines"]] == ["a"]


def test_down_after_the_file_changed_provider_destroys_where_up_made_them(env, crc):
    """`crc up` refuses a scenario whose provider changed since and says to `crc down`
    first: `crc down FILE` then destroys the machines at the provider that made them."""
    env.cli_env["CRC_LOCAL_DIR"] = str(env.tmp / "machines")
    path = env.tmp / "moved.yaml"
    path.write_text("name: moved\nprovider: local\ntimeouts: {ready: 60s}\nmachines: {a: }\n")
    provider = LocalProvider(env.tmp / "machines")
    try:
        r = crc("up", str(path))
        assert r.returncode == 0, r.stdout + r.stderr
        path.write_text(
            "name: moved\nprovider: vultr\nmachines: {a: }\n"
            "defaults: {region: ewr, plan: vc2-1c-1gb, image: '2284'}\n"
        )
        nowhere = {"VULTR_API_KEY": "k", "CRC_VULTR_API_URL": "http://127.0.0.1:9/v2"}
        r = crc("up", str(path), extra_env=nowhere)
        assert r.returncode == 5, r.stdout + r.stderr
        assert (
            "runs on provider local; the scenario now says vultr: `crc down --group moved` it"
            in r.stderr
        )

        r = crc("down", str(path), extra_env=nowhere)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "1 machine(s) destroyed, none left at local; group deleted" in r.stdout
        _nothing_left(provider, "moved")
    finally:
        for inst in provider.list("moved"):
            provider.destroy(inst.id)


def test_a_second_up_or_down_of_a_running_scenario_is_refused(env, crc):
    """Two `crc up` of one scenario at once raced for the group: the second found it
    "without keys", made it again and revoked the first one's machines. Now the second
    `crc up` (or a `crc down`) is refused while the first runs."""
    env.cli_env["CRC_LOCAL_DIR"] = str(env.tmp / "machines")
    path = env.tmp / "busy.yaml"
    path.write_text(
        "name: busy\nprovider: local\ntimeouts: {ready: 60s, step: 2m}\nmachines: {a: }\n"
        "steps:\n  - name: gate\n    wait: {kv: go}\n"
    )
    provider = LocalProvider(env.tmp / "machines")
    first = subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", "up", str(path), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env.cli_env},
    )
    try:
        assert first.stdout is not None
        for line in first.stdout:
            if json.loads(line).get("event") == "step":
                break
        for cmd in ("up", "down"):
            r = crc(cmd, str(path))
            assert r.returncode == 5, r.stdout + r.stderr
            assert r.stderr.startswith(
                "crc: error: another `crc up` or `crc down` of busy is running on this "
                f"computer (crc up, pid {first.pid})"
            ), r.stderr
        env.client.kv_set("busy", "go", True)
        out, err = first.communicate(timeout=60)
        assert first.returncode == 0, out + err
        assert [m["state"] for m in env.client.group("busy")["machines"]] == ["ready"]

        r = crc("down", str(path))
        assert r.returncode == 0, r.stdout + r.stderr
        _nothing_left(provider, "busy")
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
        for inst in provider.list("busy"):
            provider.destroy(inst.id)


def test_down_of_a_group_that_does_not_name_its_provider_asks_for_it(env, crc):
    """A group whose `crc up` record lacks the provider (written by another tool): `crc
    down --group` says to name it instead of crashing, and does the work once named."""
    env.cli_env["CRC_LOCAL_DIR"] = str(env.tmp / "machines")
    env.client.create_group("noprov", ["a"], settings={"crc_up": {"scenario": "noprov"}})
    r = crc("down", "--group", "noprov")
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr == (
        "crc: error: group noprov does not say which provider made its machines: "
        "name it with --provider\n"
    )
    r = crc("down", "--group", "noprov", "--provider", "local")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "group deleted" in r.stdout
    with pytest.raises(NotFound):
        env.client.group("noprov")


def test_down_without_login_destroys_leftovers_and_says_the_group_was_not_checked(env, crc):
    """`crc down --group G --provider P` works without login (leftovers of a group the
    server no longer knows); it must not claim the group is gone: nobody asked."""
    env.cli_env["CRC_LOCAL_DIR"] = str(env.tmp / "machines")
    path = env.tmp / "nolog.yaml"
    path.write_text("name: nolog\nprovider: local\ntimeouts: {ready: 60s}\nmachines: {a: }\n")
    provider = LocalProvider(env.tmp / "machines")
    try:
        r = crc("up", str(path))
        assert r.returncode == 0, r.stdout + r.stderr
        logged_out = {"CRC_URL": None, "CRC_TOKEN": None, "CRC_CONFIG_DIR": str(env.tmp / "none")}
        r = crc("down", "--group", "nolog", "--provider", "local", extra_env=logged_out)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "1 machine(s) destroyed, none left at local; group not checked" in r.stdout
        assert "crc login" in r.stdout and "already gone" not in r.stdout
        _nothing_left(provider, "nolog")
        assert len(env.client.group("nolog")["machines"]) == 1  # still on the server
    finally:
        for inst in provider.list("nolog"):
            provider.destroy(inst.id)


def test_down_with_an_empty_token_variable_still_destroys_the_machines(env, crc):
    """A cleanup job whose secret came out empty (`CRC_TOKEN=`): `crc down --group G
    --provider P` still destroys the machines, then says why the group is left (exit 2)."""
    env.cli_env["CRC_LOCAL_DIR"] = str(env.tmp / "machines")
    path = env.tmp / "emptytok.yaml"
    path.write_text("name: emptytok\nprovider: local\ntimeouts: {ready: 60s}\nmachines: {a: }\n")
    provider = LocalProvider(env.tmp / "machines")
    try:
        r = crc("up", str(path))
        assert r.returncode == 0, r.stdout + r.stderr
        # Without the provider named, nothing can be done: the error, nothing destroyed.
        r = crc("down", "--group", "emptytok", extra_env={"CRC_TOKEN": ""})
        assert r.returncode == 2, r.stdout + r.stderr
        assert r.stderr.startswith("crc: error: CRC_TOKEN is set but empty"), r.stderr
        assert len(provider.list("emptytok")) == 1
        r = crc("down", "--group", "emptytok", "--provider", "local", extra_env={"CRC_TOKEN": ""})
        assert r.returncode == 2, r.stdout + r.stderr
        assert "1 machine(s) destroyed, none left at local; group not deleted" in r.stdout
        assert r.stderr.startswith("crc: error: CRC_TOKEN is set but empty"), r.stderr
        assert "group emptytok is not deleted" in r.stderr
        _nothing_left(provider, "emptytok")
        assert len(env.client.group("emptytok")["machines"]) == 1  # still on the server
        r = crc("down", "--group", "emptytok", "--provider", "local")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "group deleted" in r.stdout
    finally:
        for inst in provider.list("emptytok"):
            provider.destroy(inst.id)


def test_up_that_needs_a_down_first_does_not_also_say_up_again_resumes(env, crc):
    """A machine that enrolled and then lost its instance cannot be resumed: `crc up`
    says `crc down` then `crc up`, and the hint about the machines still running says
    only that `crc down` destroys them, not that `crc up` again resumes."""
    env.cli_env["CRC_LOCAL_DIR"] = str(env.tmp / "machines")
    path = env.tmp / "lost.yaml"
    path.write_text("name: lost\nprovider: local\ntimeouts: {ready: 60s}\nmachines: {a: , b: }\n")
    provider = LocalProvider(env.tmp / "machines")
    try:
        r = crc("up", str(path))
        assert r.returncode == 0, r.stdout + r.stderr
        (b,) = [i for i in provider.list("lost") if i.name == "b"]
        provider.destroy(b.id)
        r = crc("up", str(path))
        assert r.returncode == 5, r.stdout + r.stderr
        assert "crc: error: machine b enrolled before but has no instance at local" in r.stderr
        assert "`crc down --group lost` then `crc up`" in r.stderr
        hint = f"1 machine(s) of lost are still at local (a): `crc down {path}` destroys them"
        assert hint in r.stderr, r.stderr
        assert "again resumes" not in r.stderr, r.stderr
        assert "Traceback" not in r.stderr

        r = crc("down", str(path))
        assert r.returncode == 0, r.stdout + r.stderr
        _nothing_left(provider, "lost")
    finally:
        for inst in provider.list("lost"):
            provider.destroy(inst.id)


def test_up_names_the_machines_the_file_no_longer_has_and_leaves_them(env, crc):
    """Machines removed from the file keep running at the provider and in the group:
    `crc up` neither waits for them nor destroys them, and says so (stderr, and
    `not_in_file` in the summary) with how to remove them."""
    env.cli_env["CRC_LOCAL_DIR"] = str(env.tmp / "machines")
    path = env.tmp / "shrink.yaml"
    path.write_text(
        "name: shrink\nprovider: local\ntimeouts: {ready: 60s}\nmachines: {a: , b: , c: }\n"
    )
    provider = LocalProvider(env.tmp / "machines")
    try:
        r = crc("up", str(path))
        assert r.returncode == 0, r.stdout + r.stderr
        c_id = next(i.id for i in provider.list("shrink") if i.name == "c")
        path.write_text(
            "name: shrink\nprovider: local\ntimeouts: {ready: 60s}\nmachines: {a: , b: }\n"
        )
        r = crc("up", str(path))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "all 2 machines ready" in r.stdout, r.stdout
        # Only the machines of the file are shown among those waited for.
        assert not [ln for ln in r.stdout.splitlines() if ln.split()[:1] == ["c"]], r.stdout
        assert (
            f"warning: 1 machine(s) of shrink are no longer in {path} but still run at "
            f"local and in group shrink (on a cloud they cost money): c ({c_id})"
        ) in r.stderr, r.stderr
        assert f"`crc down {path}` (it destroys every machine of the scenario) then" in r.stderr
        assert sorted(i.name for i in provider.list("shrink")) == ["a", "b", "c"]

        r = crc("up", str(path), "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        out = lines(r.stdout)
        (summary,) = [o for o in out if o["event"] == "summary"]
        assert summary["not_in_file"] == [{"machine": "c", "instances": [c_id]}]
        assert [m["name"] for m in summary["machines"]] == ["a", "b"]
        assert not [o for o in out if o["event"] == "machine" and o["machine"] == "c"]

        r = crc("down", str(path))
        assert r.returncode == 0, r.stdout + r.stderr
        _nothing_left(provider, "shrink")
    finally:
        for inst in provider.list("shrink"):
            provider.destroy(inst.id)
