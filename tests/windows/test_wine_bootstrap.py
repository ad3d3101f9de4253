"""The Windows bootstrap as a VM runs it: `crc bootstrap G M --os windows --format cmd`
printed on the master, then `cmd /c bootstrap.cmd` on the machine (Wine), with Python
present but without pywin32 - which the bootstrap gets from the server's wheel directory.

One prefix for the module, tests in file order: a wrong fingerprint first (nothing may
happen), then the real run (the machine turns ready, a cmd job runs), then a second run
(nothing changes). What needs PowerShell (installing Python, a --then script) is not run
here: see tests/windows/README.md.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from wine_machine import PYTHON, WineMachine, WinePrefix, tear_down

from cloudremotecontrol.bootstrap.package import build_agent_package
from cloudremotecontrol.master.localrun import ServerProcess

PREFIX = r"C:\Program Files\CloudRemoteControl"
STATE_DIR = r"C:\ProgramData\CloudRemoteControl\agent"
WRONG_PIN = "sha256:" + "00" * 32
# pywin32 as the template prefix has it: removed from the Windows Python, so that the
# bootstrap must install it (from the server).
PYWIN32_PARTS = (
    "win32",
    "win32com",
    "win32comext",
    "pythonwin",
    "pywin32_system32",
    "adodbapi",
    "isapi",
    "pythoncom.py",
    "pywin32.pth",
    "pywin32.version.txt",
    "PyWin32.chm",
    "pywin32-312.dist-info",
)


class Boot:
    def __init__(self, machine: WineMachine, keys: dict[str, str], wheel: str) -> None:
        self.m = machine
        self.keys = keys
        self.wheel = wheel

    def script(self, name: str, *extra: str) -> str:
        """`crc bootstrap g NAME --os windows --format cmd` on the master, written into the
        prefix; its Windows path."""
        out = self.m.crc(
            "bootstrap",
            "g",
            name,
            "--os",
            "windows",
            "--format",
            "cmd",
            "--key",
            self.keys[name],
            *extra,
        )
        assert out.returncode == 0, out.stderr
        path = rf"C:\crc-test\bootstrap-{name}.cmd"
        host = self.m.prefix.host_path(path)
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_bytes(out.stdout.encode())
        return path

    def run(self, path: str) -> subprocess.CompletedProcess[str]:
        return self.m.prefix.run("cmd", "/c", path, timeout=600)


@pytest.fixture(scope="module")
def boot(wine_template: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Boot]:
    tmp = tmp_path_factory.mktemp("wineboot")
    server = ServerProcess(tmp / "srv").start()
    # The operator's wheel directory: pywin32 for the Windows service host.
    wheel = (
        Path(wine_template["prefix"]).parent.parent
        / "downloads"
        / (f"pywin32-{wine_template['pywin32']}-cp312-cp312-win_amd64.whl")
    )
    assert wheel.is_file(), wheel
    (tmp / "srv" / "wheels").mkdir()
    shutil.copy(wheel, tmp / "srv" / "wheels" / wheel.name)
    prefix = WinePrefix(Path(wine_template["prefix"]), tmp)
    site = prefix.host_path(r"C:\Python312\Lib\site-packages")
    for name in PYWIN32_PARTS:  # hard links: unlinking leaves the template intact
        path = site / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    machine = WineMachine(server, prefix, tmp)
    try:
        prefix.start()
        created = machine.client.create_group(
            "g", ["win", "w2"], settings={"uninstall_on_delete": True}
        )
        keys = {m["name"]: m["key"] for m in created["machines"]}
        yield Boot(machine, keys, wheel.name)
    finally:
        tear_down(machine, prefix, server)


def test_the_python_has_no_pywin32_to_begin_with(boot: Boot) -> None:
    out = boot.m.prefix.python("-c", "import win32service")
    assert out.returncode != 0 and "win32service" in out.stderr


def test_a_wrong_fingerprint_stops_before_the_key_is_sent(boot: Boot) -> None:
    path = boot.script("w2", "--fingerprint", WRONG_PIN)
    out = boot.run(path)
    assert out.returncode == 7, (out.stdout, out.stderr)
    assert "TLS fingerprint mismatch" in out.stderr and WRONG_PIN in out.stderr, out.stderr
    assert "the key was not used" in out.stderr
    # Nothing installed, no service, and the server never saw the key.
    assert not boot.m.prefix.host_path(PREFIX).exists()
    assert boot.m.prefix.sc_state() is None
    w2 = next(m for m in boot.m.client.group("g")["machines"] if m["name"] == "w2")
    assert w2["state"] == "pending", w2


def test_the_cmd_bootstrap_reaches_a_ready_machine(boot: Boot) -> None:
    path = boot.script("win")
    out = boot.run(path)
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert f"installing pywin32 ({boot.wheel}) from" in out.stderr, out.stderr
    assert "done: machine win of group g is ready" in out.stderr, out.stderr
    assert f"in {PREFIX}: changed" in out.stderr, out.stderr
    m = boot.m.wait_state("ready")
    assert (m.get("facts") or {}).get("os") == "windows", m
    assert boot.m.prefix.sc_state() == "RUNNING"
    # The agent is the server's package, in the plain-directory layout (the Windows
    # Python itself, no venv), and the key is on no disk and no command line.
    record = json.loads(boot.m.prefix.host_path(PREFIX + r"\installed.json").read_text())
    assert record["sha256"] == build_agent_package().sha256
    assert record["layout"] == "site" and record["python"].lower() == PYTHON.lower()
    assert record["pywin32"] == f"{boot.wheel} from the server"
    script = boot.m.prefix.host_path(path).read_text()
    assert boot.keys["win"] in script
    assert not boot.m.prefix.host_path(r"C:\ProgramData\CloudRemoteControl\key").exists()
    # The service runs optimized, from the bytecode the install compiled beside the code.
    options = rf"-OO -X no_debug_ranges -X pycache_prefix={PREFIX}\pycache -m "
    assert len(boot.m.prefix.pids(options + "cloudremotecontrol.agent.winservice")) == 1
    cache = boot.m.prefix.host_path(PREFIX + r"\pycache")
    assert any(p.name.startswith("winservice.") for p in cache.rglob("*.opt-2.pyc"))
    # A job through the service.
    run = boot.m.crc("run", "g", "--to", "win", "--shell", "cmd", "--", "ver")
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert "Microsoft Windows" in run.stdout
    # Progress went through the agent: the master sees the bootstrap's steps.
    events = boot.m.crc("events", "g", "--json")
    assert "crc-agent service running (machine win)" in events.stdout, events.stdout[-3000:]


def _service_pid(boot: Boot) -> int:
    out = boot.m.prefix.python(
        "-c",
        (
            "import win32service as ws\n"
            "scm = ws.OpenSCManager(None, None, ws.SC_MANAGER_ALL_ACCESS)\n"
            "h = ws.OpenService(scm, 'crc-agent', ws.SERVICE_QUERY_STATUS)\n"
            "print(ws.QueryServiceStatusEx(h)['ProcessId'])"
        ),
        check=True,
    )
    return int(out.stdout.strip())


def test_running_it_again_changes_nothing(boot: Boot) -> None:
    record = boot.m.prefix.host_path(PREFIX + r"\installed.json")
    before = record.read_bytes()
    pid = _service_pid(boot)
    out = boot.run(boot.script("win"))
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert f"in {PREFIX}: unchanged" in out.stderr, out.stderr
    assert "already enrolled" in out.stderr, out.stderr
    assert "downloading" not in out.stderr and "installing pywin32" not in out.stderr
    assert record.read_bytes() == before
    assert _service_pid(boot) == pid  # the running service was left alone
    assert boot.m.wait_state("ready")["state"] == "ready"


def test_deleting_the_group_makes_the_service_remove_itself(boot: Boot) -> None:
    """uninstall_on_delete: the service marks itself for deletion and stops; the Service
    Control Manager then removes it, and its state is gone (the code stays)."""
    assert boot.m.prefix.sc_state() == "RUNNING"
    boot.m.client.delete_group("g")
    deadline = time.monotonic() + 60
    while boot.m.prefix.sc_state() is not None or boot.m.prefix.pids(
        "cloudremotecontrol.agent.winservice"
    ):
        assert time.monotonic() < deadline, boot.m.prefix.diagnose()
        time.sleep(0.5)
    assert not boot.m.prefix.host_path(STATE_DIR).exists()
    assert boot.m.prefix.host_path(PREFIX + r"\installed.json").exists()
    # The bytecode `crc agent install` compiled for the service goes with it.
    assert not boot.m.prefix.host_path(PREFIX + r"\pycache").exists()
    assert boot.m.prefix.host_path(PREFIX + r"\lib\cloudremotecontrol").is_dir()
