"""The Windows service manager (platform/winsvc.py) against a fake Win32 service API, and
the Windows output decoder. The real thing runs in tests/windows (Wine); this pins what
Wine cannot show: the recovery actions registered for a real Windows SCM."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from cloudremotecontrol.agent.platform.services import ServiceSpec
from cloudremotecontrol.agent.platform.windows import legacy_decoder
from cloudremotecontrol.errors import CrcError


class WinError(Exception):
    def __init__(self, winerror: int, func: str, strerror: str) -> None:
        super().__init__(winerror, func, strerror)
        self.winerror, self.funcname, self.strerror = winerror, func, strerror


class FakeApi(types.ModuleType):
    """The subset of pywin32's win32service the manager uses, with an SCM behind it."""

    SC_MANAGER_ALL_ACCESS = 0xF003F
    SERVICE_ALL_ACCESS = 0xF01FF
    SERVICE_WIN32_OWN_PROCESS = 0x10
    SERVICE_AUTO_START = 2
    SERVICE_DEMAND_START = 3
    SERVICE_ERROR_NORMAL = 1
    SERVICE_CONFIG_DESCRIPTION = 1
    SERVICE_CONFIG_FAILURE_ACTIONS = 2
    SERVICE_CONFIG_FAILURE_ACTIONS_FLAG = 4
    SC_ACTION_RESTART = 1
    SERVICE_CONTROL_STOP = 1

    def __init__(self, flag_supported: bool = True) -> None:
        super().__init__("win32service")
        self.services: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.flag_supported = flag_supported

    def OpenSCManager(self, machine: Any, db: Any, access: int) -> str:
        return "scm"

    def OpenService(self, scm: str, name: str, access: int) -> str:
        if name not in self.services:
            raise WinError(1060, "OpenService", "The specified service does not exist")
        return name

    def CreateService(
        self,
        scm: str,
        name: str,
        display: str,
        access: int,
        kind: int,
        start: int,
        error: int,
        command: str,
        *rest: Any,
    ) -> str:
        self.calls.append("create")
        self.services[name] = {
            "kind": kind,
            "start": start,
            "command": command,
            "account": "LocalSystem",
            "display": display,
            "state": 1,
        }
        return name

    def QueryServiceConfig(self, h: str) -> tuple[Any, ...]:
        s = self.services[h]
        return (s["kind"], s["start"], 1, s["command"], "", 0, [], s["account"], s["display"])

    def ChangeServiceConfig(
        self,
        h: str,
        kind: int,
        start: int,
        error: int,
        command: str,
        group: Any,
        tag: Any,
        deps: Any,
        account: str,
        password: Any,
        display: str,
    ) -> None:
        self.calls.append("config")
        self.services[h].update(
            kind=kind, start=start, command=command, account=account, display=display
        )

    def ChangeServiceConfig2(self, h: str, level: int, value: Any) -> None:
        if level == self.SERVICE_CONFIG_FAILURE_ACTIONS_FLAG and not self.flag_supported:
            raise WinError(124, "ChangeServiceConfig2", "Invalid level.")
        self.services[h][f"config2-{level}"] = value

    def QueryServiceStatusEx(self, h: str) -> dict[str, int]:
        return {"CurrentState": self.services[h]["state"], "ProcessId": 0}

    def QueryServiceStatus(self, h: str) -> tuple[int, ...]:
        return (0x10, self.services[h]["state"], 0, 0, 0, 0, 0)

    def StartService(self, h: str, args: Any) -> None:
        self.calls.append("start")
        if self.services[h]["state"] == 4:
            raise WinError(1056, "StartService", "already running")
        self.services[h]["state"] = 4

    def ControlService(self, h: str, code: int) -> None:
        self.calls.append("stop")
        if self.services[h]["state"] != 4:
            raise WinError(1062, "ControlService", "not active")
        self.services[h]["state"] = 1

    def DeleteService(self, h: str) -> None:
        self.calls.append("delete")
        del self.services[h]

    def CloseServiceHandle(self, h: str) -> None:
        pass


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi()
    monkeypatch.setitem(sys.modules, "win32service", fake)
    monkeypatch.setitem(sys.modules, "pywintypes", types.SimpleNamespace(error=WinError))
    return fake


SPEC = ServiceSpec(
    python=r"C:\Python312\python.exe",
    entry=("-m", "cloudremotecontrol"),
    run_args=("--state-dir", r"C:\ProgramData\CloudRemoteControl\agent"),
    description="CloudRemoteControl agent (g/win at https://crc:8443)",
)


def manager() -> Any:
    from cloudremotecontrol.agent.platform.winsvc import Win32Services

    return Win32Services(sleep=lambda s: None)


def test_install_registers_localsystem_auto_start_with_recovery_actions(api: FakeApi) -> None:
    mgr = manager()
    change = mgr.install(SPEC)
    assert (change.definition_changed, change.action) == (True, "started")
    svc = api.services["crc-agent"]
    assert svc["command"] == (
        r"C:\Python312\python.exe -m cloudremotecontrol.agent.winservice "
        r"--state-dir C:\ProgramData\CloudRemoteControl\agent"
    )
    assert (svc["kind"], svc["start"], svc["account"]) == (0x10, 2, "LocalSystem")
    assert svc["config2-1"] == SPEC.description
    # Restart after 5 s, 5 s, then 30 s; the failure count resets after a day; a stop
    # with an error counts as a failure (sc failure ... / sc failureflag 1).
    assert svc["config2-2"] == {
        "ResetPeriod": 86400,
        "RebootMsg": None,
        "Command": None,
        "Actions": [(1, 5000), (1, 5000), (1, 30000)],
    }
    assert svc["config2-4"] is True
    assert svc["state"] == 4 and api.calls == ["create", "start"]
    assert "restart after 5 s" in mgr.definition(SPEC)


def test_install_again_changes_nothing_and_a_change_restarts(api: FakeApi) -> None:
    mgr = manager()
    mgr.install(SPEC)
    api.calls.clear()
    again = mgr.install(SPEC)
    assert (again.definition_changed, again.action) == (False, "running")
    assert api.calls == []
    assert mgr.install(SPEC, restart=True).action == "restarted"
    api.calls.clear()
    moved = ServiceSpec(SPEC.python, SPEC.entry, ("--state-dir", r"D:\agent"))
    assert mgr.install(moved).action == "restarted"
    assert api.calls == ["config", "stop", "start"]
    assert api.services["crc-agent"]["command"].endswith(r"--state-dir D:\agent")


def test_a_scm_without_the_failure_flag_is_not_fatal(api: FakeApi) -> None:
    api.flag_supported = False  # Wine: ERROR_INVALID_LEVEL
    assert manager().install(SPEC).action == "started"


def test_uninstall_stops_and_deletes(api: FakeApi) -> None:
    mgr = manager()
    assert mgr.uninstall() is False
    mgr.install(SPEC)
    assert mgr.is_active() is True
    api.calls.clear()
    assert mgr.uninstall() is True
    assert api.calls == ["stop", "delete"] and "crc-agent" not in api.services
    assert mgr.state() is None


def test_a_service_that_dies_while_starting_is_an_error(api: FakeApi) -> None:
    mgr = manager()
    api.StartService = lambda h, a: None  # type: ignore[method-assign]  # starts, then dies
    with pytest.raises(CrcError) as err:
        mgr.install(SPEC)
    assert err.value.code == "service_failed" and "crc-agent.log" in err.value.message


def test_a_zipapp_cannot_be_a_windows_service(api: FakeApi) -> None:
    with pytest.raises(CrcError):
        manager().install(ServiceSpec(SPEC.python, (r"C:\crc-agent.pyz",), ()))


@pytest.mark.parametrize(
    "chunks, text",
    [
        ([b"plain ascii\r\n"], "plain ascii\r\n"),
        (["Grüße 日本 €".encode()], "Grüße 日本 €"),
        (["Grüße €".encode("cp1252")], "Grüße €"),  # not UTF-8: the ANSI code page
        (["é".encode()[:1], "é".encode()[1:]], "é"),  # split across reads
        (["a€".encode()[:2], "a€".encode()[2:] + "ü".encode("cp1252")], "a€ü"),
        ([b"\xc3"], "Ã"),  # a truncated sequence at the very end
    ],
)
def test_output_is_utf8_with_an_ansi_fallback(chunks: list[bytes], text: str) -> None:
    dec = legacy_decoder("cp1252")
    out = "".join(dec.decode(c) for c in chunks) + dec.decode(b"", final=True)
    assert out == text


def test_install_reports_the_command_line_it_registered(
    api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloudremotecontrol.agent import install as install_mod
    from cloudremotecontrol.agent.platform.linux import LinuxPlatform

    monkeypatch.setattr(install_mod, "bytecode_cache", lambda: tmp_path / "pycache")
    state = tmp_path / "state"
    state.mkdir()
    (state / "credential.json").write_text(
        json.dumps({"url": "https://x:1", "credential": "crca_a_b", "machine": "w", "group": "g"})
    )
    report = install_mod.install_agent(LinuxPlatform(), state, manager=manager())
    registered = api.services["crc-agent"]["command"]
    # The service host's command line, as the SCM holds it: not the Linux one.
    assert subprocess.list2cmdline(report["command"]) == registered
    assert report["command"][-4:] == [
        "-m",
        "cloudremotecontrol.agent.winservice",
        "--state-dir",
        str(state),
    ]
    assert "run" not in report["command"]
