"""Bootstrap pieces without a server: scripts (parsed by bash and a PowerShell grammar),
the agent zipapp, the service managers (systemd, Windows SCM) through the Platform
interface with fake runners, sd_notify over a real datagram socket, key re-issue."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import io
import json
import os
import re
import socket
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import tree_sitter
import tree_sitter_powershell
import yaml

from cloudremotecontrol import __version__
from cloudremotecontrol.agent import install as install_mod
from cloudremotecontrol.agent import sdnotify
from cloudremotecontrol.agent.install import bytecode_cache, install_agent, uninstall_agent
from cloudremotecontrol.agent.platform.linux import LinuxPlatform
from cloudremotecontrol.agent.platform.scm import HOST_MODULE, WindowsServices
from cloudremotecontrol.agent.platform.services import ServiceSpec
from cloudremotecontrol.agent.platform.systemd import Systemd, systemd_quote
from cloudremotecontrol.agent.platform.windows import WindowsPlatform
from cloudremotecontrol.bootstrap import scripts as render_mod
from cloudremotecontrol.bootstrap.package import build_agent_package
from cloudremotecontrol.bootstrap.scripts import BootstrapParams, render
from cloudremotecontrol.errors import Conflict, CrcError, InvalidInput, KeyRejected, NotFound

FP = "sha256:" + "ab" * 32
KEY = "crck_0123456789abcdef_" + "Zz-_" * 8
TEMPLATES = Path(render_mod.__file__).parent / "templates"


def params(**kw: Any) -> BootstrapParams:
    base: dict[str, Any] = {
        "url": "https://203.0.113.7:8443",
        "fingerprint": FP,
        "group": "lab",
        "machine": "web",
        "key": KEY,
    }
    return BootstrapParams(**{**base, **kw})


def ps_errors(source: str) -> list[str]:
    """Syntax errors the tree-sitter PowerShell grammar finds (empty: it parses)."""
    parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))
    data = source.encode()
    tree = parser.parse(data)
    bad: list[str] = []

    def walk(node: Any) -> None:
        if node.type == "ERROR" or node.is_missing:
            bad.append(f"{node.start_point}: {data[node.start_byte : node.end_byte][:80]!r}")
        for child in node.children:
            walk(child)

    walk(tree.root_node)
    return bad


def bash_n(script: str, tmp_path: Path) -> None:
    path = tmp_path / "script.sh"
    path.write_text(script)
    res = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def fetch_helper() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fetch_agent", TEMPLATES / "fetch_agent.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# -- scripts ------------------------------------------------------------------------------
def test_linux_script_parses_and_carries_the_machine_values_quoted(tmp_path: Path) -> None:
    script = render("linux", None, params())
    bash_n(script, tmp_path)
    assert script.startswith("#!/bin/bash\n")
    assert f"CRC_URL=https://203.0.113.7:8443\nCRC_FINGERPRINT={FP}\n" in script
    assert [line for line in script.splitlines() if KEY in line] == [f"CRC_KEY={KEY}"]
    assert (TEMPLATES / "fetch_agent.py").read_text().rstrip("\n") in script
    assert "{{" not in script.replace("{{THEN", "")


def test_linux_script_with_a_provisioning_script_parses(tmp_path: Path) -> None:
    then = "set -e\ncat <<'EOF'\nnested heredoc with {{BRACES}} and 'quotes'\nEOF\nexit 0\n"
    script = render("linux", "shell", params(then_script=then))
    bash_n(script, tmp_path)
    assert then.rstrip("\n") in script  # verbatim, never re-expanded
    assert script.index(then.rstrip("\n")) < script.index('"$CRC" agent ready')


@pytest.mark.parametrize(
    "field,value",
    [
        ("url", "https://x.example/$(reboot)"),
        ("url", "ftp://x.example"),
        ("url", "https://x.example:8443/path"),
        ("url", "https://a'b.example"),
        ("fingerprint", "sha256:1234"),
        ("key", "crcm_abc_def"),
        ("key", "crck_a_b c"),
        ("group", "Lab;rm"),
        ("machine", "-rf"),
        ("python_version", "3.12; calc"),
    ],
)
def test_values_that_could_change_the_script_are_refused(field: str, value: str) -> None:
    with pytest.raises(InvalidInput):
        render("linux", None, params(**{field: value}))


def test_without_a_fingerprint_the_script_uses_the_system_cas(tmp_path: Path) -> None:
    script = render("linux", None, params(fingerprint=None))
    bash_n(script, tmp_path)
    assert "CRC_FINGERPRINT=''\n" in script


def test_cloud_init_writes_the_same_script_and_runs_it(tmp_path: Path) -> None:
    text = render("linux", "cloud-init", params())
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    (f,) = doc["write_files"]
    assert f["path"] == "/root/crc-bootstrap.sh" and f["permissions"] == "0700"
    script = base64.b64decode(f["content"]).decode()
    bash_n(script, tmp_path)
    assert f"CRC_KEY={KEY}" in script
    assert doc["runcmd"] == [["bash", "/root/crc-bootstrap.sh"]]


def test_the_powershell_grammar_check_is_not_vacuous() -> None:
    assert ps_errors("function F { if ($a -eq 1) { 'x' }\n") != []
    assert ps_errors("$x = @'\nunterminated\n") != []
    assert ps_errors("$x = @'\nfine\n'@\nWrite-Host $x\n") == []


def test_windows_powershell_script_parses(tmp_path: Path) -> None:
    then = "Write-Host 'it''s me'\n& choco install -y mysql\nexit 0\n"
    for p in (params(), params(fingerprint=None), params(then_script=then)):
        script = render("windows", "powershell", p)
        assert ps_errors(script) == []
        assert f"$CrcKey = '{KEY}'" in script
        assert "$PythonVersion = '3.12.10'" in script
    assert "exit 0\n" in render("windows", "powershell", params(then_script=then))


def test_powershell_values_are_single_quoted() -> None:
    assert render_mod._ps_quote("it's") == "'it''s'"
    script = render("windows", "powershell", params(then_script="Write-Host 'a'\n"))
    assert ps_errors(script) == []
    with pytest.raises(InvalidInput):
        render("windows", "powershell", params(then_script="$x = @'\nbody\n'@\n"))


def _cmd_sections(text: str) -> tuple[str, str, str, str]:
    """cmd head, PowerShell (install Python), Python driver, fetch helper (LF ends)."""
    text = text.replace("\r\n", "\n")
    i = text.index("#CRC-INSTALL-PYTHON")
    j = text.index("#CRC-PYTHON-BELOW")
    k = text.index("#CRC-FETCH-AGENT-PY")
    return text[:i], text[i:j], text[j:k], text[k:]


def test_windows_cmd_is_cmd_then_python_with_powershell_only_to_install_python() -> None:
    then = "Write-Host 'it''s me'\n# CRC-PYTHON-BELOW mentioned\nexit 0\n"
    for p in (params(), params(fingerprint=None), params(then_script=then)):
        text = render("windows", "cmd", p)
        assert "\r\n" in text and "\n" not in text.replace("\r\n", "")
        head, install_python, driver, helper = _cmd_sections(text)
        lines = head.splitlines()
        assert lines[0] == "@echo off"
        # cmd runs the head only; the key and the server are not in it (Python literals
        # below), and no construct Wine's cmd gets wrong (||, &&, wildcards in for).
        assert KEY not in head and "203.0.113.7" not in head
        assert "||" not in head and "&&" not in head and "Python3*" not in head
        assert "exit /b %ERRORLEVEL%" in lines
        (ps_call,) = [line for line in lines if line.startswith("powershell.exe ")]
        command = re.search(r'-Command "(.*)"$', ps_call)
        assert command is not None and '"' not in command.group(1)
        assert ps_errors(command.group(1)) == [] and ps_errors(install_python) == []
        assert "Get-AuthenticodeSignature" in install_python
        # The Python part: valid Python carrying the values as literals.
        tree = compile(driver, "driver", "exec", flags=0x400, dont_inherit=True)  # AST only
        assert tree is not None
        assert f"KEY = {KEY!r}" in driver and f"FINGERPRINT = {(p.fingerprint or '')!r}" in driver
        assert f"THEN_SCRIPT = {p.then_script!r}" in driver
        assert helper == "#CRC-FETCH-AGENT-PY\n" + (TEMPLATES / "fetch_agent.py").read_text()
        # The one-liner that runs the driver finds exactly these sections.
        (py_call,) = [line for line in lines if line.startswith('"%CRC_PY%" -I -c')]
        assert "t.index('#' + 'CRC-PYTHON-BELOW')" in py_call


def test_windows_cmd_refuses_what_cmd_could_misread() -> None:
    with pytest.raises(InvalidInput):
        render("windows", "cmd", params(url="https://a%PATH%b.example"))
    with pytest.raises(InvalidInput):  # would end the driver section early
        render("windows", "cmd", params(then_script="#CRC-FETCH-AGENT-PY\n"))


def test_os_and_format_must_match() -> None:
    with pytest.raises(InvalidInput):
        render("linux", "cmd", params())
    with pytest.raises(InvalidInput):
        render("windows", "cloud-init", params())
    with pytest.raises(InvalidInput):
        render("macos", None, params())


def test_fetch_helper_checks_pins_and_package_paths() -> None:
    helper = fetch_helper()
    assert helper.normalize_pin("SHA256:" + "AB:" * 31 + "AB") == FP
    with pytest.raises(helper.Fatal) as err:
        helper.normalize_pin("sha256:12")
    assert err.value.code == helper.USAGE
    assert helper.top_level(["__main__.py", "click/core.py", "cloudremotecontrol/x.py"]) == [
        "click",
        "cloudremotecontrol",
    ]
    for bad in ("/etc/passwd", "a/../../etc", "a\\b"):
        with pytest.raises(helper.Fatal):
            helper.top_level([bad])
    wheels = [
        "pywin32-311-cp312-cp312-win_amd64.whl",
        "pywin32-312-cp312-cp312-win_amd64.whl",
        "pywin32-312-cp311-cp311-win_amd64.whl",
        "pywin32-312-cp312-cp312-win_arm64.whl",
        "other-9-py3-none-any.whl",
    ]
    assert helper.pick_wheel(wheels, "pywin32", "cp312", "win_amd64") == wheels[1]
    assert helper.pick_wheel(wheels, "pywin32", "cp313", "win_amd64") is None
    assert helper.choose_layout("auto") == ("venv" if helper.has_venv() else "site")


# -- the agent package --------------------------------------------------------------------
def test_agent_package_is_deterministic_and_pure_python() -> None:
    pkg = build_agent_package()
    again = build_agent_package()
    assert pkg.sha256 == again.sha256 and pkg.data == again.data
    assert pkg.filename == f"crc-agent-{__version__}.pyz"
    assert pkg.data.startswith(b"#!/usr/bin/env python3\n")
    names = zipfile.ZipFile(io.BytesIO(pkg.data)).namelist()
    assert "__main__.py" in names
    for needed in (
        "cloudremotecontrol/agent/core.py",
        "cloudremotecontrol/cli/main.py",
        "click/core.py",
        "websockets/asyncio/client.py",
        "websockets/utils.py",
    ):
        assert needed in names
    assert any(n.startswith("websockets-") and "LICENSE" in n for n in names)
    assert any(n.startswith("click-") and "LICENSE" in n for n in names)
    for name in names:
        assert not name.startswith(
            (
                "cloudremotecontrol/server/",
                "cloudremotecontrol/master/",
                "cloudremotecontrol/providers/",
                "cloudremotecontrol/bootstrap/",
            )
        )
        assert "__pycache__" not in name and not name.endswith((".so", ".pyd", ".c", ".pyc"))
        assert "fake_systemctl" not in name and "speedups" not in name


# -- systemd ------------------------------------------------------------------------------
class FakeSystemctl:
    """Answers like systemctl for the calls the Systemd manager makes."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.enabled = False
        self.active = False

    def __call__(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        assert argv[0] == "systemctl" and kw["capture_output"] and not kw["check"]
        args = [a for a in argv[1:] if not a.startswith("--")]
        self.calls.append(argv[1:])
        rc = 0
        if args[0] == "is-enabled":
            rc = 0 if self.enabled else 1
        elif args[0] == "is-active":
            rc = 0 if self.active else 3
        elif args[0] == "enable":
            self.enabled = True
        elif args[0] in ("start", "restart"):
            self.active = True
        elif args[0] == "disable":
            self.enabled = False
            self.active = self.active and "--now" not in argv
        return subprocess.CompletedProcess(argv, rc, "", "")

    def verbs(self) -> list[str]:
        return [c[0] for c in self.calls if c[0] not in ("is-enabled", "is-active")]


SPEC = ServiceSpec(
    python="/opt/crc-agent/venv/bin/python",
    entry=("-m", "cloudremotecontrol"),
    run_args=("--state-dir", "/var/lib/crc-agent", "--gate-ready"),
    description="CloudRemoteControl agent (lab/web at https://x)",
)


def test_systemd_install_is_idempotent_and_restarts_only_when_asked(tmp_path: Path) -> None:
    fake = FakeSystemctl()
    mgr = Systemd(unit_dir=tmp_path, systemctl="systemctl", run=fake)

    first = mgr.install(SPEC)
    unit = tmp_path / "crc-agent.service"
    text = unit.read_text()
    assert (first.definition_changed, first.action) == (True, "started")
    assert fake.verbs() == ["daemon-reload", "enable", "start"]
    assert "Type=notify\n" in text and "Restart=always\n" in text
    assert (
        "ExecStart=/opt/crc-agent/venv/bin/python -m cloudremotecontrol.agent run "
        "--state-dir /var/lib/crc-agent --gate-ready\n"
    ) in text
    assert oct(unit.stat().st_mode & 0o777) == "0o644"

    mtime = unit.stat().st_mtime_ns
    fake.calls.clear()
    second = mgr.install(SPEC)
    assert (second.definition_changed, second.action) == (False, "running")
    assert fake.verbs() == [] and unit.stat().st_mtime_ns == mtime

    assert mgr.install(SPEC, restart=True).action == "restarted"
    fake.calls.clear()
    changed = ServiceSpec(SPEC.python, SPEC.entry, ("--state-dir", "/srv/agent"))
    assert mgr.install(changed).action == "restarted"
    assert fake.verbs() == ["daemon-reload", "restart"]

    fake.calls.clear()
    assert mgr.uninstall() is True
    assert not unit.exists() and not fake.active and not fake.enabled
    assert fake.verbs() == ["disable", "daemon-reload", "reset-failed"]
    assert mgr.uninstall() is False


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` checks the unit offline (this container runs no systemd);
    the ExecStart binary must exist, so the unit names this interpreter."""
    analyze = subprocess.run(["which", "systemd-analyze"], capture_output=True, text=True)
    if analyze.returncode != 0:
        pytest.skip("systemd-analyze is not installed (package systemd)")
    mgr = Systemd(unit_dir=tmp_path, systemctl="systemctl", run=FakeSystemctl())
    spec = ServiceSpec(
        python="/usr/bin/env",
        entry=("python3", "-m", "cloudremotecontrol"),
        run_args=("--state-dir", "/var/lib/my agent%1"),
    )
    path = tmp_path / "crc-agent.service"
    path.write_text(mgr.definition(spec))
    res = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_systemd_quoting() -> None:
    assert systemd_quote("/opt/x/python") == "/opt/x/python"
    assert systemd_quote("/var/lib/my agent") == '"/var/lib/my agent"'
    assert systemd_quote('a"b%c$d\\') == '"a\\"b%%c$$d\\\\"'
    with pytest.raises(InvalidInput):
        systemd_quote("a\nb")


def test_systemd_refuses_clearly_without_systemd(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("CRC_SYSTEMCTL", raising=False)
    monkeypatch.setattr(os.path, "isdir", lambda p: False)
    with pytest.raises(CrcError) as err:
        Systemd(unit_dir=tmp_path, run=FakeSystemctl()).install(SPEC)
    assert err.value.code == "unsupported" and "crc agent run" in err.value.message

    def missing(argv: list[str], **kw: Any) -> Any:
        raise FileNotFoundError(argv[0])

    with pytest.raises(CrcError) as err:
        Systemd(unit_dir=tmp_path, systemctl="nosuch-systemctl", run=missing).install(SPEC)
    assert err.value.code == "unsupported"


def test_linux_platform_gives_systemd_with_the_overrides(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CRC_SYSTEMD_DIR", str(tmp_path))
    monkeypatch.setenv("CRC_SYSTEMCTL", "/usr/bin/python3 /x/fake_systemctl.py")
    mgr = LinuxPlatform().service_manager()
    assert isinstance(mgr, Systemd)
    assert mgr.unit_dir == tmp_path
    assert mgr.systemctl == ["/usr/bin/python3", "/x/fake_systemctl.py"]


# -- Windows, through the Platform interface ------------------------------------------------
QC = """[SC] QueryServiceConfig SUCCESS

SERVICE_NAME: crc-agent
        TYPE               : 10  WIN32_OWN_PROCESS
        START_TYPE         : 2   AUTO_START
        ERROR_CONTROL      : 1   NORMAL
        BINARY_PATH_NAME   : {bin}
        LOAD_ORDER_GROUP   :
        TAG                : 0
        DISPLAY_NAME       : CloudRemoteControl agent
        DEPENDENCIES       :
        SERVICE_START_NAME : LocalSystem
"""
QUERY = """
SERVICE_NAME: crc-agent
        TYPE               : 10  WIN32_OWN_PROCESS
        STATE              : {code}  {state}
        WIN32_EXIT_CODE    : 0  (0x0)
"""
NOT_FOUND = (
    "[SC] OpenService FAILED 1060:\n\n"
    "The specified service does not exist as an installed service.\n"
)


class FakeScm:
    """A Service Control Manager behind sc.exe, answering with sc.exe's own output."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.service: dict[str, str] | None = None
        self.state = "STOPPED"

    def __call__(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv)
        exe, verb, rest = argv[0], argv[1], argv[2:]
        if exe in ("icacls", "taskkill"):
            return subprocess.CompletedProcess(argv, 0, "", "")
        assert exe == "sc.exe"
        out, rc = "", 0
        if verb in ("create", "config"):
            opts = dict(zip(rest[1::2], rest[2::2], strict=True))
            if verb == "create" and self.service is not None:
                return subprocess.CompletedProcess(argv, 1073, "[SC] CreateService FAILED 1073", "")
            self.service = {**(self.service or {}), **opts}
        elif self.service is None and verb != "create":
            return subprocess.CompletedProcess(argv, 1060, NOT_FOUND, "")
        elif verb == "qc":
            out = QC.format(bin=self.service["binPath="])
        elif verb == "query":
            out = QUERY.format(code={"RUNNING": 4, "STOPPED": 1}[self.state], state=self.state)
        elif verb == "start":
            rc, self.state = (1056, self.state) if self.state == "RUNNING" else (0, "RUNNING")
        elif verb == "stop":
            rc, self.state = (1062, self.state) if self.state == "STOPPED" else (0, "STOPPED")
        elif verb == "delete":
            self.service = None
        return subprocess.CompletedProcess(argv, rc, out, "")

    def verbs(self) -> list[str]:
        return [c[1] for c in self.calls if c[0] == "sc.exe" and c[1] not in ("qc", "query")]


WIN_SPEC = ServiceSpec(
    python=r"C:\Program Files\CloudRemoteControl\venv\Scripts\python.exe",
    entry=("-m", "cloudremotecontrol"),
    run_args=("--state-dir", r"C:\ProgramData\CloudRemoteControl\agent", "--gate-ready"),
)


def windows(fake: FakeScm) -> WindowsServices:
    mgr = WindowsPlatform(run=fake).service_manager()
    assert isinstance(mgr, WindowsServices)
    mgr.host_available = lambda: True
    mgr.sleep = lambda s: None
    return mgr


def test_windows_service_is_localsystem_automatic_and_restarts_on_failure() -> None:
    fake = FakeScm()
    mgr = windows(fake)

    first = mgr.install(WIN_SPEC)

    assert (first.definition_changed, first.action) == (True, "started")
    assert fake.verbs() == ["create", "description", "failure", "failureflag", "start"]
    create = fake.calls[[c[1] for c in fake.calls].index("create")]
    assert create[2:] == [
        "crc-agent",
        "binPath=",
        '"C:\\Program Files\\CloudRemoteControl\\venv\\Scripts\\python.exe" -m '
        f"{HOST_MODULE} --state-dir C:\\ProgramData\\CloudRemoteControl\\agent --gate-ready",
        "start=",
        "auto",
        "obj=",
        "LocalSystem",
        "DisplayName=",
        "CloudRemoteControl agent",
    ]
    failure = next(c for c in fake.calls if c[1] == "failure")
    assert failure[3:] == ["reset=", "86400", "actions=", "restart/5000/restart/5000/restart/30000"]
    assert ["sc.exe", "failureflag", "crc-agent", "1"] in fake.calls
    assert fake.state == "RUNNING"

    fake.calls.clear()
    second = mgr.install(WIN_SPEC)
    assert (second.definition_changed, second.action) == (False, "running")
    assert fake.verbs() == []

    fake.calls.clear()
    moved = ServiceSpec(WIN_SPEC.python, WIN_SPEC.entry, ("--state-dir", r"D:\agent"))
    assert mgr.install(moved).action == "restarted"
    assert fake.verbs() == ["config", "description", "failure", "failureflag", "stop", "start"]

    assert mgr.uninstall() is True
    assert fake.service is None and mgr.uninstall() is False


def test_windows_service_refuses_what_it_cannot_run_yet() -> None:
    fake = FakeScm()
    mgr = windows(fake)
    mgr.host_available = lambda: False
    with pytest.raises(CrcError) as err:
        mgr.install(WIN_SPEC)
    assert err.value.code == "unsupported" and HOST_MODULE in err.value.message
    assert fake.calls == []  # nothing registered that could not start
    mgr.host_available = lambda: True
    with pytest.raises(CrcError):
        mgr.install(ServiceSpec(WIN_SPEC.python, ("C:\\crc-agent.pyz",), ()))


def test_windows_service_runs_python_with_the_service_options_before_the_host() -> None:
    cache = r"C:\Program Files\CloudRemoteControl\pycache"
    options = ("-OO", "-X", "no_debug_ranges", "-X", f"pycache_prefix={cache}")
    spec = ServiceSpec(WIN_SPEC.python, WIN_SPEC.entry, WIN_SPEC.run_args, options)
    assert WindowsServices().bin_path(spec) == (
        '"C:\\Program Files\\CloudRemoteControl\\venv\\Scripts\\python.exe" -OO -X '
        f'no_debug_ranges -X "pycache_prefix={cache}" -m {HOST_MODULE} '
        "--state-dir C:\\ProgramData\\CloudRemoteControl\\agent --gate-ready"
    )


def test_windows_bytecode_cache_is_beside_the_directory_of_the_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import cloudremotecontrol

    monkeypatch.setattr(sys, "base_prefix", sys.prefix)  # not a venv: PREFIX\lib
    assert bytecode_cache("win32") == Path(cloudremotecontrol.__file__).parents[2] / "pycache"
    assert bytecode_cache("linux") is None
    monkeypatch.setattr(sys, "base_prefix", sys.prefix + "-base")  # a venv
    assert bytecode_cache("win32") == bytecode_cache("linux") == Path(sys.prefix) / "pycache"


def test_windows_platform_paths_protection_and_process_trees(monkeypatch) -> None:
    fake = FakeScm()
    plat = WindowsPlatform(run=fake)
    monkeypatch.setenv("SystemRoot", r"D:\Win")
    monkeypatch.setenv("ProgramData", r"E:\Data")
    assert plat.hosts_path() == r"D:\Win\System32\drivers\etc\hosts"
    assert plat.default_state_dir() == r"E:\Data\CloudRemoteControl\agent"
    plat.protect_file(r"E:\Data\CloudRemoteControl\key")
    # Only LocalSystem (S-1-5-18) and BUILTIN\Administrators (S-1-5-32-544), no inheritance.
    assert fake.calls[-1] == [
        "icacls",
        r"E:\Data\CloudRemoteControl\key",
        "/inheritance:r",
        "/grant:r",
        "*S-1-5-18:F",
        "/grant:r",
        "*S-1-5-32-544:F",
    ]

    class Proc:
        pid = 4242

    plat.kill_tree(Proc(), force=True)
    assert fake.calls[-1] == ["taskkill", "/PID", "4242", "/T", "/F"]
    assert plat.popen_options() == {"creationflags": 0x200}  # CREATE_NEW_PROCESS_GROUP
    monkeypatch.setattr(plat, "which", lambda p: {"cmd.exe": r"C:\Windows\cmd.exe"}.get(p))
    assert plat.shell_argv(None, "dir") == [r"C:\Windows\cmd.exe", "/d", "/s", "/c", "dir"]


# -- install / uninstall ------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _bytecode_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The service's -OO bytecode goes to the test's own directory, not this checkout's
    venv (agent/install.py, ``bytecode_cache``)."""
    cache = tmp_path / "venv" / "pycache"
    monkeypatch.setattr(install_mod, "bytecode_cache", lambda: cache)
    return cache


class RecordingManager(Systemd):
    def __init__(self, tmp: Path) -> None:
        super().__init__(unit_dir=tmp / "units", systemctl="systemctl", run=FakeSystemctl())
        self.specs: list[ServiceSpec] = []

    def install(self, spec: ServiceSpec, restart: bool = False) -> Any:
        self.specs.append(spec)
        return super().install(spec, restart)


def test_install_of_an_enrolled_machine_ignores_and_deletes_the_key(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "credential.json").write_text(
        json.dumps(
            {"url": "https://x:1", "credential": "crca_a_b", "machine": "web", "group": "lab"}
        )
    )
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    mgr = RecordingManager(tmp_path)

    report = install_agent(
        LinuxPlatform(),
        state,
        url="https://x:1",
        key_file=str(key_file),
        gate_ready=True,
        manager=mgr,
    )

    assert not key_file.exists()
    assert report["enrolled_now"] is False and report["machine"] == "web"
    assert stat.S_IMODE(os.stat(state / "service.json").st_mode) == 0o600
    (spec,) = mgr.specs
    assert spec.argv[-4:] == ["run", "--state-dir", str(state), "--gate-ready"]
    assert KEY not in " ".join(spec.argv) and "lab/web" in spec.description
    assert uninstall_agent(LinuxPlatform(), state, manager=mgr)["removed"] is True
    with pytest.raises(InvalidInput):
        uninstall_agent(LinuxPlatform(), tmp_path / "units", purge=True, manager=mgr)
    assert uninstall_agent(LinuxPlatform(), state, purge=True, manager=mgr)["purged"] is True
    assert not state.exists()


def test_installed_service_runs_optimized_from_the_bytecode_the_install_compiled(
    tmp_path: Path, _bytecode_cache: Path
) -> None:
    cache = _bytecode_cache
    state = tmp_path / "state"
    state.mkdir()
    (state / "credential.json").write_text(
        json.dumps(
            {"url": "https://x:1", "credential": "crca_a_b", "machine": "web", "group": "lab"}
        )
    )
    mgr = RecordingManager(tmp_path)

    install_agent(LinuxPlatform(), state, manager=mgr)

    (spec,) = mgr.specs
    python = spec.argv[0]
    # No column positions (PEP 657) where the interpreter has them: 3.11 and later.
    ranges = ["-X", "no_debug_ranges"] if sys.version_info >= (3, 11) else []
    options = ["-OO", *ranges, "-X", f"pycache_prefix={cache}"]
    assert spec.argv[1:] == [*options, "-m", "cloudremotecontrol.agent", "run", *spec.run_args]
    unit = (tmp_path / "units" / "crc-agent.service").read_text()
    assert f"ExecStart={python} {' '.join(options)} -m cloudremotecontrol.agent " in unit
    compiled = sorted(cache.rglob("*.pyc"))
    assert compiled and all(p.name.endswith(".opt-2.pyc") for p in compiled)
    names = {p.name.split(".")[0] for p in compiled}
    assert {"core", "runner", "base_events", "client"} <= names  # agent, asyncio, websockets
    assert {"argparse", "gettext"} <= names  # the entry point's options (agent/main.py)
    # The service, started as the unit says, finds all its bytecode there: it compiles
    # nothing, and runs without asserts and docstrings.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    out = subprocess.run(
        [
            python,
            *options,
            "-c",
            "import sys\n"
            "from cloudremotecontrol.agent.deferred import defer\n"
            "defer()\n"
            "import cloudremotecontrol.agent.main, cloudremotecontrol.agent.core\n"
            "code = cloudremotecontrol.agent.core.Agent.send.__code__\n"
            "columns = {c for _, _, c, _ in getattr(code, 'co_positions', lambda: [])()}\n"
            "print(sys.flags.optimize, cloudremotecontrol.agent.core.__doc__, columns or None)",
        ],
        env=clean,
        capture_output=True,
        text=True,
        check=True,
    )
    # Its code, compiled at install, has no docstrings and no column positions.
    columns = "{None}" if sys.version_info >= (3, 11) else "None"
    assert out.stdout.split() == ["2", "None", columns]
    assert sorted(cache.rglob("*.pyc")) == compiled


def _enrolled_state(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    (state / "credential.json").write_text(
        json.dumps(
            {"url": "https://x:1", "credential": "crca_a_b", "machine": "web", "group": "lab"}
        )
    )
    return state


def test_uninstall_removes_the_bytecode_cache_install_created(
    tmp_path: Path, _bytecode_cache: Path
) -> None:
    cache = _bytecode_cache
    state = _enrolled_state(tmp_path)
    mgr = RecordingManager(tmp_path)
    report = install_agent(LinuxPlatform(), state, manager=mgr)
    assert report["command"] == mgr.specs[0].argv  # systemd registers spec.argv as is
    assert any(cache.rglob("*.opt-2.pyc"))
    # Installing again (an upgrade, a re-run startup script) keeps it install's own.
    install_agent(LinuxPlatform(), state, manager=mgr, restart=True)

    out = uninstall_agent(LinuxPlatform(), state, manager=mgr)

    assert out["removed"] is True and out["bytecode_cache_removed"] == str(cache)
    assert not cache.exists() and cache.parent.is_dir()  # the venv itself stays
    assert (state / "credential.json").exists()  # no --purge: the credential stays
    assert uninstall_agent(LinuxPlatform(), state, manager=mgr)["bytecode_cache_removed"] is None


def test_uninstall_keeps_a_bytecode_cache_install_did_not_create(
    tmp_path: Path, _bytecode_cache: Path
) -> None:
    cache = _bytecode_cache
    cache.mkdir(parents=True)
    (cache / "theirs.pyc").write_bytes(b"")
    state = _enrolled_state(tmp_path)
    mgr = RecordingManager(tmp_path)
    install_agent(LinuxPlatform(), state, manager=mgr)
    assert any(cache.rglob("*.opt-2.pyc"))

    out = uninstall_agent(LinuxPlatform(), state, purge=True, manager=mgr)

    assert out["purged"] is True and out["bytecode_cache_removed"] is None
    assert (cache / "theirs.pyc").exists() and not state.exists()


def test_install_without_enrollment_or_key_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(KeyRejected) as err:
        install_agent(LinuxPlatform(), tmp_path / "state", manager=RecordingManager(tmp_path))
    assert "--key" in err.value.message


# -- sd_notify ----------------------------------------------------------------------------
@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch) -> Any:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(10)
    monkeypatch.setattr(sdnotify, "_env", None)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield sock
    sock.close()


def test_sd_notify_ready_watchdog_and_stopping(notify_socket: Any, monkeypatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "20000")  # pings every 10 ms
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))

    async def run() -> None:
        task = asyncio.get_running_loop().create_task(sdnotify.supervise())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    messages = []
    notify_socket.settimeout(0.5)
    while True:
        try:
            messages.append(notify_socket.recv(100))
        except TimeoutError:
            break
    assert messages[0] == b"READY=1" and messages[-1] == b"STOPPING=1"
    assert b"WATCHDOG=1" in messages
    # Jobs started by the agent do not inherit the right to speak for it.
    assert "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ


def test_sd_notify_does_nothing_without_systemd(monkeypatch) -> None:
    monkeypatch.setattr(sdnotify, "_env", None)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.watchdog_interval() is None


def test_sd_notify_abstract_socket(monkeypatch) -> None:
    name = f"crc-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        monkeypatch.setattr(sdnotify, "_env", None)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("READY=1") is True
        assert sock.recv(100) == b"READY=1"


# -- re-issuing keys (the store seam, on SQLite) --------------------------------------------
def test_reissue_burns_the_old_key_and_is_refused_after_enrollment(tmp_path: Path) -> None:
    from cloudremotecontrol.server.ops import groups, keys, users
    from cloudremotecontrol.server.ops.enrollment import enroll
    from cloudremotecontrol.server.store.base import open_store

    store = open_store(f"sqlite:///{tmp_path / 'crc.db'}")
    try:
        token = store.write_sync(users.create_user, "alice")
        uid = store.write_sync(users.authenticate_master, token)["user_id"]
        old = store.write_sync(groups.create_group, uid, "lab", [{"name": "web"}])
        new = store.write_sync(keys.reissue_key, uid, "lab", "web", 60.0)
        assert new["key"] != old["machines"][0]["key"] and new["key"].startswith("crck_")
        with pytest.raises(KeyRejected):
            store.write_sync(enroll, old["machines"][0]["key"], None)
        with pytest.raises(NotFound):
            store.write_sync(keys.reissue_key, uid, "lab", "db")
        with pytest.raises(NotFound):
            store.write_sync(keys.reissue_key, uid, "nolab", "web")
        assert store.write_sync(enroll, new["key"], None)["machine"] == "web"
        with pytest.raises(Conflict):
            store.write_sync(keys.reissue_key, uid, "lab", "web")
        with pytest.raises(InvalidInput):
            store.write_sync(keys.reissue_key, uid, "lab", "web", 0.0)
    finally:
        store.close_sync()  # type: ignore[attr-defined]
