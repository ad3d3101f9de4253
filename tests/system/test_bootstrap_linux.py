"""The Linux startup script of `crc bootstrap`, run for real as root on a "fresh VM".

The VM is a mount namespace with its own /opt (empty tmpfs) and its own /etc, /var and
/usr/local (overlays: the host's files are visible, every write stays private), sharing
the host's network (the server listens on loopback), processes and /tmp.

What is real: the script exactly as `crc bootstrap` printed it (run with `bash`, a
clean environment and the distribution's /usr/bin/python3, which has neither click nor
websockets), the live server over TLS with its self-signed certificate, the pinned
download of the agent zipapp and its sha256, the venv under /opt/crc-agent, the key
file, the enrollment, the systemd unit file `crc agent install` writes (checked with
`systemd-analyze verify`), the agent process it starts (pure-Python websockets), the
`crc agent progress`/`ready` calls through the agent, and the master's view.

What is substituted: `systemctl` - systemd does not run in this container (no
/run/systemd/system). CRC_SYSTEMCTL points at agent/platform/fake_systemctl.py, which
starts the unit's real ExecStart= with systemd's clean environment and waits for the
agent's real READY=1 on its own NOTIFY_SOCKET (Type=notify), and records every call.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cloudremotecontrol.agent.platform.fake_systemctl as fake_systemctl_module
from cloudremotecontrol import __version__
from cloudremotecontrol.tlspin import client_context

needs_root = pytest.mark.skipif(
    os.geteuid() != 0
    or not all(shutil.which(t) for t in ("unshare", "nsenter"))
    or not os.path.exists("/usr/bin/python3"),
    reason="needs root, unshare(1), nsenter(1) and /usr/bin/python3 for a private /opt and /etc",
)

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FAKE_SYSTEMCTL = f"/usr/bin/python3 {fake_systemctl_module.__file__}"
MOUNTS = r"""
set -e
T=$0
mount -t tmpfs -o mode=0755 tmpfs /opt
for d in etc var usr/local; do
    n=$(echo "$d" | tr / _)
    mkdir -p "$T/$n/upper" "$T/$n/work"
    mount -t overlay overlay -o "lowerdir=/$d,upperdir=$T/$n/upper,workdir=$T/$n/work" "/$d"
done
echo mounted
exec sleep 3600
"""


class VM:
    """A fresh machine's view of the file system, kept by a holder process."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.fake_state = tmp / "fake-systemd"
        (tmp / "overlays").mkdir(parents=True)
        self.holder = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "bash",
                "-c",
                MOUNTS,
                str(tmp / "overlays"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline()
        assert line.strip() == "mounted", self.holder.stderr.read() if self.holder.stderr else ""

    def path(self, inside: str) -> Path:
        """A path inside the VM, reached from outside through the holder's root."""
        return Path(f"/proc/{self.holder.pid}/root") / inside.lstrip("/")

    def run(self, *argv: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """Run as root inside the VM with a clean environment, as a startup script is."""
        return subprocess.run(
            [
                "nsenter",
                "--target",
                str(self.holder.pid),
                "--mount",
                "--",
                "env",
                "-i",
                f"PATH={SYSTEM_PATH}",
                "LANG=C.UTF-8",
                f"CRC_SYSTEMCTL={FAKE_SYSTEMCTL}",
                f"CRC_FAKE_SYSTEMD_STATE={self.fake_state}",
                *argv,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def agent_pid(self) -> int | None:
        try:
            pid = int((self.fake_state / "crc-agent.pid").read_text())
        except (OSError, ValueError):
            return None
        try:  # alive, and not a zombie waiting for init to reap it
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return None
        return None if state == "Z" else pid

    def systemctl_calls(self) -> list[list[str]]:
        path = self.fake_state / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def journal(self) -> str:
        path = self.fake_state / "crc-agent.journal"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        pid = self.agent_pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if self.agent_pid() is None:
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
        self.holder.kill()
        self.holder.communicate()


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[VM]:
    machine = VM(tmp_path / "vm")
    yield machine
    machine.close()


def _bootstrap(crc: Any, tmp: Path, name: str, *args: str, file: str = "bootstrap.sh") -> Path:
    """`crc bootstrap` as the master runs it; the script goes to a file (mode 0600)."""
    out = tmp / file
    res = crc("bootstrap", "vm", name, "--os", "linux", "-o", str(out), *args)
    assert res.returncode == 0, res.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    return out


def _snapshot(vm: VM) -> dict[str, tuple[Any, ...]]:
    """Everything the bootstrap writes: path -> (mode, mtime, content digest or target)."""
    out: dict[str, tuple[Any, ...]] = {}
    roots = [
        "/opt/crc-agent",
        "/etc/crc-agent",
        "/etc/systemd/system/crc-agent.service",
        "/var/lib/crc-agent/credential.json",
        "/usr/local/bin/crc",
    ]
    for root in roots:
        base = vm.path(root)
        paths = [base] if not base.is_dir() or base.is_symlink() else [base, *base.rglob("*")]
        for p in paths:
            if "__pycache__" in p.parts:  # written by Python at import time, not by us
                continue
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                what: Any = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                what = "dir"
            out[str(p.relative_to(vm.path("/")))] = (stat.S_IMODE(st.st_mode), st.st_mtime_ns, what)
    return out


def _enroll(server: Any, key: str) -> tuple[int, str]:
    """POST /v1/agent/enroll with ``key``: (HTTP status, error code)."""
    ctx, _ = client_context(server.url, server.fingerprint)
    req = urllib.request.Request(
        server.url + "/v1/agent/enroll",
        method="POST",
        data=json.dumps({"key": key}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30):
            return 200, ""
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["error"]["code"]


def _machine(env: Any, name: str) -> dict[str, Any]:
    return next(m for m in env.client.group("vm")["machines"] if m["name"] == name)


def _events(env: Any, name: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in env.client.events("vm") if e["type"] == kind and e["machine"] == name]


@pytest.mark.root
@needs_root
def test_wrong_fingerprint_stops_the_script_before_the_key_is_used(env, crc, vm, tmp_path):
    env.client.create_group("vm", ["web"])
    good = _bootstrap(crc, tmp_path, "web")
    key = next(
        line.split("=", 1)[1]
        for line in good.read_text().splitlines()
        if line.startswith("CRC_KEY=")
    )
    wrong = _bootstrap(
        crc, tmp_path, "web", "--key", key, "--fingerprint", "sha256:" + "0" * 64, file="wrong.sh"
    )

    res = vm.run("bash", str(wrong))

    assert res.returncode == 7, res.stderr
    assert "TLS fingerprint mismatch" in res.stderr
    assert "sha256:" + "0" * 64 in res.stderr and "nothing secret was sent" in res.stderr
    assert not vm.path("/etc/crc-agent/key").exists()
    assert not vm.path("/opt/crc-agent").exists()
    assert not vm.path("/var/lib/crc-agent").exists()
    assert _machine(env, "web")["state"] == "pending"
    # The proof that the key never left: the same key still enrolls afterwards.
    res = vm.run("bash", str(good))
    assert res.returncode == 0, res.stderr + vm.journal()
    env.wait_state("vm", ["web"], "ready")


@pytest.mark.root
@needs_root
def test_bootstrap_installs_the_agent_from_the_server_and_a_second_run_changes_nothing(
    env, crc, vm, tmp_path
):
    created = env.client.create_group("vm", ["web"])
    then = tmp_path / "provision.sh"
    then.write_text(
        'set -e\necho "$CRC_MACHINE of $CRC_GROUP" > /etc/provisioned\n'
        'crc agent progress "hello from the provisioning script" --percent 90\n'
    )
    script = _bootstrap(crc, tmp_path, "web", "--then", str(then))
    assert created["machines"][0]["key"] not in script.read_text()  # a fresh key was issued

    first = vm.run("bash", str(script))

    assert first.returncode == 0, first.stderr + vm.journal()
    assert "done: machine web of group vm is ready" in first.stderr
    env.wait_state("vm", ["web"], "ready")
    # The key `crc group create` printed was burnt when `crc bootstrap` issued a new one.
    assert _enroll(env.server, created["machines"][0]["key"]) == (401, "key_rejected")

    # What is on the machine now.
    unit = vm.path("/etc/systemd/system/crc-agent.service").read_text()
    assert "Type=notify" in unit and "Restart=always" in unit and "WatchdogSec=" in unit
    assert (
        "ExecStart=/opt/crc-agent/venv/bin/python -OO -X no_debug_ranges -X pycache_prefix="
        "/opt/crc-agent/venv/pycache -m cloudremotecontrol.agent run --state-dir "
        "/var/lib/crc-agent --gate-ready"
    ) in unit  # the lean entry point: no click, no CLI code in the service
    assert "crck_" not in unit
    assert not vm.path("/etc/crc-agent/key").exists()  # deleted once enrolled
    cred = vm.path("/var/lib/crc-agent/credential.json")
    assert stat.S_IMODE(cred.stat().st_mode) == 0o600
    assert json.loads(cred.read_text())["machine"] == "web"
    assert vm.path("/etc/provisioned").read_text() == "web of vm\n"
    assert os.readlink(vm.path("/usr/local/bin/crc")) == "/opt/crc-agent/venv/bin/crc"
    # The agent runs the distribution's python (no websockets C speedups, no click of its
    # own): everything came from the zipapp.
    pid = vm.agent_pid()
    assert pid is not None
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert argv[0] == b"/opt/crc-agent/venv/bin/python"
    assert argv[1:9] == [
        b"-OO",
        b"-X",
        b"no_debug_ranges",
        b"-X",
        b"pycache_prefix=/opt/crc-agent/venv/pycache",
        b"-m",
        b"cloudremotecontrol.agent",
        b"run",
    ]

    assert os.readlink(vm.path("/opt/crc-agent/venv/bin/python3")) == "/usr/bin/python3"
    assert (
        subprocess.run(
            ["/usr/bin/python3", "-I", "-c", "import websockets"], capture_output=True
        ).returncode
        != 0
    )
    assert "READY=1" in (vm.fake_state / "crc-agent.notified").read_text()
    assert not list(vm.path("/opt/crc-agent").rglob("speedups*.so"))
    # Byte-compiled at install for that python: the agent's first start compiles nothing
    # (the service process would keep the compiler's freed memory for its lifetime).
    tag = subprocess.run(
        ["/usr/bin/python3", "-c", "import sys; print(sys.implementation.cache_tag)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    site = next(vm.path("/opt/crc-agent/venv/lib").glob("python3*/site-packages"))
    tops = ("cloudremotecontrol", "websockets")
    sources = [p for top in tops for p in (site / top).rglob("*.py")]
    assert sources
    assert [
        p for p in sources if not (p.parent / "__pycache__" / f"{p.stem}.{tag}.pyc").exists()
    ] == []
    # ... and for the service's -OO, in its own cache (agent/install.py).
    vm_site = "/" + str(site.relative_to(vm.path("/")))
    cached = vm.path(f"/opt/crc-agent/venv/pycache{vm_site}/cloudremotecontrol/agent")
    assert (cached / f"core.{tag}.opt-2.pyc").exists()
    # The master saw the steps as progress, then ready.
    texts = [e["data"]["text"] for e in _events(env, "web", "progress")]
    assert any(t.startswith("python 3.") for t in texts)
    assert f"agent {__version__} installed in /opt/crc-agent (changed)" in texts
    assert "hello from the provisioning script" in texts
    assert texts[-1] == "provisioning script done"
    if shutil.which("systemd-analyze"):
        verify = vm.run("systemd-analyze", "verify", "/etc/systemd/system/crc-agent.service")
        assert verify.returncode == 0, verify.stdout + verify.stderr
    # And it executes what the master sends, as root.
    res = crc("run", "vm", "--to", "web", "--", "id", "-u")
    assert res.returncode == 0 and res.stdout.strip().endswith("0"), res.stdout + res.stderr

    before = _snapshot(vm)
    calls_before = len(vm.systemctl_calls())
    second = vm.run("bash", str(script))

    assert second.returncode == 0, second.stderr
    assert "already enrolled" in second.stderr
    assert _snapshot(vm) == before
    assert vm.agent_pid() == pid  # not restarted
    verbs = {c[0] for c in vm.systemctl_calls()[calls_before:]}
    assert verbs <= {"is-enabled", "is-active"}, verbs
    assert _machine(env, "web")["state"] == "ready"
    assert len(_events(env, "web", "machine.state")) == 2  # pending->enrolled->ready only

    removed = vm.run("crc", "agent", "uninstall", "--json")
    assert removed.returncode == 0, removed.stderr
    report = json.loads(removed.stdout)
    assert report["removed"] is True
    assert not vm.path("/etc/systemd/system/crc-agent.service").exists()
    # The bytecode install compiled goes with the service; the venv stays.
    assert not vm.path("/opt/crc-agent/venv/pycache").exists()
    assert report["bytecode_cache_removed"] == "/opt/crc-agent/venv/pycache"
    assert vm.path("/opt/crc-agent/venv/bin/python3").is_symlink()
    assert vm.agent_pid() is None
    env.wait_state("vm", ["web"], "offline")


@pytest.mark.root
@needs_root
def test_a_failing_provisioning_script_is_reported_and_the_machine_is_not_ready(
    env, crc, vm, tmp_path
):
    env.client.create_group("vm", ["db"])
    then = tmp_path / "provision.sh"
    then.write_text("echo installing mysql\nexit 42\n")
    script = _bootstrap(crc, tmp_path, "db", "--then", str(then))
    # A minimal image without /usr/local/bin: the script makes it, as any image has it.
    assert vm.run("rm", "-rf", "/usr/local/bin").returncode == 0

    res = vm.run("bash", str(script))

    assert res.returncode == 42, res.stderr
    assert stat.S_IMODE(vm.path("/usr/local/bin").stat().st_mode) == 0o755
    assert os.readlink(vm.path("/usr/local/bin/crc")) == "/opt/crc-agent/venv/bin/crc"
    assert "the provisioning script failed (exit 42)" in res.stderr
    deadline = time.monotonic() + 30
    while not (messages := _events(env, "db", "message")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert messages and messages[0]["data"]["type"] == "user.bootstrap.failed"
    assert messages[0]["data"]["body"]["exit_code"] == 42
    assert messages[0]["data"]["body"]["step"] == "running the provisioning script"
    texts = [e["data"]["text"] for e in _events(env, "db", "progress")]
    assert "bootstrap failed: the provisioning script failed (exit 42)" in texts
    assert _machine(env, "db")["state"] == "enrolled"  # the agent runs, but not ready


def test_bootstrap_key_is_refused_once_the_machine_enrolled(env, crc):
    out = env.client.create_group("vm", ["a"])
    env.agent("a", out["machines"][0]["key"])
    env.wait_state("vm", ["a"], "ready")

    res = crc("bootstrap", "vm", "a", "--os", "linux")

    assert res.returncode == 5, res.stdout + res.stderr
    assert "not pending" in res.stderr and "Traceback" not in res.stderr


def _bare_pythons() -> list[Any]:
    """Interpreters without our dependencies: the distribution's, and a 3.10 (the oldest
    the agent supports) when this machine has one (pyenv); else that case says why not."""
    found: list[Any] = []
    if os.path.exists("/usr/bin/python3"):
        found.append("/usr/bin/python3")
    py310 = shutil.which("python3.10")
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [py310] if py310 else []
    candidates += sorted(str(p) for p in pyenv.glob("3.10.*/bin/python3.10"))
    for c in candidates:
        ok = (
            subprocess.run(
                [c, "-c", "import sys; sys.exit(sys.version_info[:2] != (3, 10))"],
                capture_output=True,
            ).returncode
            == 0
        )
        if ok:
            found.append(c)
            break
    else:
        reason = (
            "no Python 3.10 here (python3.10 on PATH or pyenv's 3.10.x): the agent "
            "package's code is checked against 3.10 statically only (test_packaging.py)"
        )
        found.append(pytest.param("python3.10", marks=pytest.mark.skip(reason=reason)))
    return found


@pytest.mark.parametrize("python", _bare_pythons())
def test_agent_package_from_the_server_runs_on_a_bare_python(env, python, tmp_path):
    """The zipapp served at /v1/agent/package matches its .sha256, runs with `-I -S` (no
    site-packages at all: click and websockets must come from the zipapp, websockets
    without its C speedups) and enrolls a real agent to ready."""
    ctx, _ = client_context(env.server.url, env.server.fingerprint)
    with urllib.request.urlopen(env.server.url + "/v1/agent/package", context=ctx) as r:
        data = r.read()
        assert r.headers["X-Crc-Sha256"] == hashlib.sha256(data).hexdigest()
    with urllib.request.urlopen(env.server.url + "/v1/agent/package.sha256", context=ctx) as r:
        digest, name = r.read().decode().split()
    assert digest == hashlib.sha256(data).hexdigest() and name == f"crc-agent-{__version__}.pyz"
    pyz = tmp_path / name
    pyz.write_bytes(data)
    bare = [python, "-I", "-S", str(pyz)]
    assert (
        subprocess.run(
            [python, "-I", "-S", "-c", "import websockets"], capture_output=True
        ).returncode
        != 0
    )
    version = subprocess.run([*bare, "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and __version__ in version.stdout, version.stderr
    # The server part is not in the agent package; on 3.10 it would not run anyway.
    serve = subprocess.run([*bare, "server", "run"], capture_output=True, text=True)
    assert serve.returncode != 0 and "Traceback" not in serve.stderr, serve.stderr
    if "3.10" in subprocess.run([python, "-V"], capture_output=True, text=True).stdout:
        assert "the server needs Python >= 3.11" in serve.stderr, serve.stderr
    else:
        assert "not part of the agent package" in serve.stderr, serve.stderr

    out = env.client.create_group("zip", ["z"])
    agent = subprocess.Popen(
        [
            *bare,
            "agent",
            "run",
            "--url",
            env.server.url,
            "--fingerprint",
            env.server.fingerprint,
            "--state-dir",
            str(tmp_path / "state"),
        ],
        env={"PATH": SYSTEM_PATH, "CRC_KEY": out["machines"][0]["key"]},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        env.wait_state("zip", ["z"], "ready")
        py_version = subprocess.run(
            [python, "-c", "import platform; print(platform.python_version())"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        deadline = time.monotonic() + 30  # facts follow "ready" on their own schedule
        while not (facts := env.client.group("zip")["machines"][0]["facts"]):
            assert time.monotonic() < deadline, "no facts from the agent"
            time.sleep(0.1)
        assert facts["python"] == py_version
    finally:
        agent.terminate()
        log = agent.communicate(timeout=20)[0]
    assert "Traceback" not in log, log


def test_the_server_serves_the_wheels_its_operator_put_in_data_dir_wheels(env, tmp_path):
    """/v1/agent/wheels lists DATA_DIR/wheels with SHA-256 and size (the Windows bootstrap
    takes pywin32 from there); a file is served byte for byte; anything else is a 404 that
    says where to look, and names that are not wheel files are neither listed nor served."""
    ctx, _ = client_context(env.server.url, env.server.fingerprint)

    def get(path: str) -> tuple[int, bytes, Any]:
        try:
            with urllib.request.urlopen(env.server.url + path, context=ctx) as r:
                return r.status, r.read(), r.headers
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers

    assert json.loads(get("/v1/agent/wheels")[1]) == {"wheels": []}
    wheels = env.server.data_dir / "wheels"
    wheels.mkdir()
    data = os.urandom(50_000)
    name = "pywin32-312-cp312-cp312-win_amd64.whl"
    (wheels / name).write_bytes(data)
    (wheels / "notes.txt").write_text("not a wheel")
    status, body, _ = get("/v1/agent/wheels")
    assert status == 200
    assert json.loads(body) == {
        "wheels": [
            {"filename": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        ]
    }
    status, body, headers = get("/v1/agent/wheels/" + name)
    assert status == 200 and body == data
    assert headers["X-Crc-Sha256"] == hashlib.sha256(data).hexdigest()
    for missing in ("notes.txt", "other-1-py3-none-any.whl"):
        status, body, _ = get("/v1/agent/wheels/" + missing)
        assert status == 404, (missing, status)
        assert json.loads(body)["error"]["message"] == (
            f"no wheel {missing!r} on this server (see GET /v1/agent/wheels)"
        ), body
    status, body, _ = get("/v1/agent/wheels/..%2Fserver.log")  # not a route at all
    assert status == 404 and json.loads(body)["error"]["message"].startswith(
        "no endpoint GET /v1/agent/"
    ), body


@pytest.mark.root
@needs_root
def test_group_deleted_with_uninstall_on_delete_removes_the_service_and_its_state(
    env, crc, vm, tmp_path
):
    env.client.create_group("vm", ["web"], settings={"uninstall_on_delete": True})
    script = _bootstrap(crc, tmp_path, "web")
    first = vm.run("bash", str(script))
    assert first.returncode == 0, first.stderr + vm.journal()
    env.wait_state("vm", ["web"], "ready")
    pid = vm.agent_pid()
    assert pid is not None and vm.path("/var/lib/crc-agent/service.json").exists()
    calls_before = len(vm.systemctl_calls())

    res = crc("group", "delete", "vm")
    assert res.returncode == 0, res.stderr

    deadline = time.monotonic() + 20
    while vm.agent_pid() is not None or vm.path("/var/lib/crc-agent").exists():
        assert time.monotonic() < deadline, vm.journal()
        time.sleep(0.1)
    assert not vm.path("/etc/systemd/system/crc-agent.service").exists()
    calls = vm.systemctl_calls()[calls_before:]
    # Disabled and removed by the agent itself, without `--now` (which would have killed
    # it halfway): it ended on its own, exit 0, which the unit does not restart.
    assert ["disable", "--quiet", "crc-agent"] in calls, calls
    assert ["daemon-reload"] in calls and not any("--now" in c for c in calls), calls
    assert "service crc-agent removed" in vm.journal(), vm.journal()
    # The agent's code stays where the bootstrap put it.
    assert vm.path("/opt/crc-agent/venv/bin/python").exists()


def test_uninstall_on_delete_leaves_an_agent_that_is_not_a_service_alone(env, tmp_path):
    out = env.client.create_group("plain", ["p"], settings={"uninstall_on_delete": True})
    agent = env.agent("p", out["machines"][0]["key"])
    env.wait_state("plain", ["p"], "ready")
    env.client.delete_group("plain")
    assert agent.proc.wait(timeout=20) == 0
    assert "stopping: group 'plain' deleted" in agent.log()
    # Not installed as a service (no service.json): its state stays, nothing is removed.
    assert (agent.state_dir / "credential.json").exists()
    assert "removed" not in agent.log()
