"""Windows: the agent as the ``crc-agent`` service, through the Win32 service API.

What `crc agent install` registers (pywin32's ``win32service``, the same calls ``sc.exe``
makes, without parsing its localised output):

* ``CreateService``: own process, LocalSystem, ``SERVICE_AUTO_START``; the command line
  is ``python.exe -OO -X no_debug_ranges -X pycache_prefix=... -m
  cloudremotecontrol.agent.winservice --state-dir ...`` (the pywin32 ``ServiceFramework``
  host in agent/winservice.py, which runs the agent loop; the options and the bytecode
  they use: agent/install.py, ``optimized_options``);
* ``ChangeServiceConfig2``: a description; recovery actions restart after 5 s, 5 s, then
  30 s, the failure count reset after a day (``SERVICE_CONFIG_FAILURE_ACTIONS``, as
  ``sc failure``); and ``SERVICE_CONFIG_FAILURE_ACTIONS_FLAG`` so that a stop with an
  error code counts as a failure, not only a crash (as ``sc failureflag 1``).

Idempotent like the systemd path: an unchanged service is left alone (and left running),
a changed one is reconfigured and restarted. ``uninstall`` stops the service, waits until
it is STOPPED, and deletes it.

Wine (the test tier, tests/windows) accepts the failure actions but does not store or
apply them, and refuses the flag with ERROR_INVALID_LEVEL: that is logged, not fatal.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from ...errors import CrcError
from .services import SERVICE_NAME, ServiceChange, ServiceManager, ServiceSpec

__all__ = ["RECOVERY_ACTIONS_MS", "Win32Services", "available"]

log = logging.getLogger("crc.agent")

RECOVERY_ACTIONS_MS = (5000, 5000, 30000)
RESET_PERIOD_S = 86400
ERROR_INVALID_LEVEL = 124
ERROR_SERVICE_ALREADY_RUNNING = 1056
ERROR_SERVICE_DOES_NOT_EXIST = 1060
ERROR_SERVICE_NOT_ACTIVE = 1062
ERROR_SERVICE_MARKED_FOR_DELETE = 1072
STATES = {
    1: "STOPPED",
    2: "START_PENDING",
    3: "STOP_PENDING",
    4: "RUNNING",
    5: "CONTINUE_PENDING",
    6: "PAUSE_PENDING",
    7: "PAUSED",
}


def available() -> bool:
    """Whether pywin32's service API can be used here (Windows with pywin32)."""
    return sys.platform == "win32" and importlib.util.find_spec("win32service") is not None


class Win32Services(ServiceManager):
    kind = "windows-scm"

    def __init__(self, timeout: float = 60.0, sleep: Callable[[float], None] = time.sleep) -> None:
        import pywintypes
        import win32service

        self.ws: Any = win32service
        self.error: Any = pywintypes.error
        self.timeout = timeout
        self.sleep = sleep

    # -- what is registered -------------------------------------------------------------
    def command(self, spec: ServiceSpec) -> list[str]:
        from .scm import WindowsServices

        return WindowsServices().command(spec)

    def bin_path(self, spec: ServiceSpec) -> str:
        from .scm import WindowsServices

        return WindowsServices().bin_path(spec)

    def definition(self, spec: ServiceSpec) -> str:
        actions = ", ".join(f"restart after {ms // 1000} s" for ms in RECOVERY_ACTIONS_MS)
        return (
            f"service {spec.name} ({spec.display_name}): {spec.description}\n"
            f"command: {self.bin_path(spec)}\n"
            "account: LocalSystem\nstart: automatic\n"
            f"recovery: {actions}; failure count reset after {RESET_PERIOD_S} s; "
            "a stop with an error counts as a failure\n"
        )

    # -- helpers ------------------------------------------------------------------------
    def _fail(self, what: str, exc: Any) -> CrcError:
        return CrcError(
            f"{what} failed: {exc.strerror} (error {exc.winerror})", code="service_failed"
        )

    def _scm(self) -> Any:
        try:
            return self.ws.OpenSCManager(None, None, self.ws.SC_MANAGER_ALL_ACCESS)
        except self.error as exc:
            raise CrcError(
                f"cannot open the Service Control Manager: {exc.strerror} (run as Administrator)",
                code="permission_denied",
            ) from None

    def _open(self, scm: Any, name: str) -> Any | None:
        try:
            return self.ws.OpenService(scm, name, self.ws.SERVICE_ALL_ACCESS)
        except self.error as exc:
            if exc.winerror == ERROR_SERVICE_DOES_NOT_EXIST:
                return None
            raise self._fail(f"OpenService {name}", exc) from None

    def _state(self, handle: Any) -> str:
        code = self.ws.QueryServiceStatus(handle)[1]
        return STATES.get(code, str(code))

    def _wait(self, handle: Any, name: str, want: str) -> None:
        deadline = time.monotonic() + self.timeout
        while (state := self._state(handle)) != want:
            if want == "RUNNING" and state == "STOPPED":
                status = self.ws.QueryServiceStatus(handle)
                raise CrcError(
                    f"service {name} stopped while starting (exit code "
                    f"{status[3]}, service code {status[4]}): see "
                    "%ProgramData%\\CloudRemoteControl\\logs\\crc-agent.log",
                    code="service_failed",
                )
            if time.monotonic() > deadline:
                raise CrcError(
                    f"service {name} is {state}, not {want}, after {self.timeout:g} s",
                    code="service_failed",
                )
            self.sleep(0.2)

    def _configure_extras(self, handle: Any, spec: ServiceSpec) -> None:
        ws = self.ws
        ws.ChangeServiceConfig2(handle, ws.SERVICE_CONFIG_DESCRIPTION, spec.description)
        ws.ChangeServiceConfig2(
            handle,
            ws.SERVICE_CONFIG_FAILURE_ACTIONS,
            {
                "ResetPeriod": RESET_PERIOD_S,
                "RebootMsg": None,
                "Command": None,
                "Actions": [(ws.SC_ACTION_RESTART, ms) for ms in RECOVERY_ACTIONS_MS],
            },
        )
        try:
            ws.ChangeServiceConfig2(handle, ws.SERVICE_CONFIG_FAILURE_ACTIONS_FLAG, True)
        except self.error as exc:
            if exc.winerror != ERROR_INVALID_LEVEL:
                raise
            log.warning(
                "this Service Control Manager does not support "
                "FailureActionsOnNonCrashFailures: only crashes trigger a restart"
            )

    # -- the ServiceManager interface ---------------------------------------------------
    def install(self, spec: ServiceSpec, restart: bool = False) -> ServiceChange:
        ws = self.ws
        command = self.bin_path(spec)
        scm = self._scm()
        try:
            handle = self._open(scm, spec.name)
            changed = False
            try:
                if handle is None:
                    handle = ws.CreateService(
                        scm,
                        spec.name,
                        spec.display_name,
                        ws.SERVICE_ALL_ACCESS,
                        ws.SERVICE_WIN32_OWN_PROCESS,
                        ws.SERVICE_AUTO_START,
                        ws.SERVICE_ERROR_NORMAL,
                        command,
                        None,
                        0,
                        None,
                        None,
                        None,
                    )
                    changed = True
                else:
                    cfg = ws.QueryServiceConfig(handle)
                    if (
                        cfg[1] != ws.SERVICE_AUTO_START
                        or cfg[3] != command
                        or (cfg[7] or "").lower() != "localsystem"
                        or cfg[8] != spec.display_name
                    ):
                        ws.ChangeServiceConfig(
                            handle,
                            ws.SERVICE_WIN32_OWN_PROCESS,
                            ws.SERVICE_AUTO_START,
                            ws.SERVICE_ERROR_NORMAL,
                            command,
                            None,
                            0,
                            None,
                            "LocalSystem",
                            None,
                            spec.display_name,
                        )
                        changed = True
                self._configure_extras(handle, spec)
            except self.error as exc:
                raise self._fail(f"registering service {spec.name}", exc) from None
            running = self._state(handle) == "RUNNING"
            if running and (changed or restart):
                self._stop(handle, spec.name)
                running = False
                action = "restarted"
            else:
                action = "running" if running else "started"
            if not running:
                try:
                    ws.StartService(handle, None)
                except self.error as exc:
                    if exc.winerror != ERROR_SERVICE_ALREADY_RUNNING:
                        raise self._fail(f"starting service {spec.name}", exc) from None
                self._wait(handle, spec.name, "RUNNING")
            ws.CloseServiceHandle(handle)
        finally:
            ws.CloseServiceHandle(scm)
        return ServiceChange(spec.name, changed, action)

    def _stop(self, handle: Any, name: str) -> None:
        pid = int(self.ws.QueryServiceStatusEx(handle).get("ProcessId") or 0)
        try:
            self.ws.ControlService(handle, self.ws.SERVICE_CONTROL_STOP)
        except self.error as exc:
            if exc.winerror != ERROR_SERVICE_NOT_ACTIVE:
                raise self._fail(f"stopping service {name}", exc) from None
        self._wait(handle, name, "STOPPED")
        if pid:
            self._wait_exit(pid, name)

    def _wait_exit(self, pid: int, name: str) -> None:
        """The process reports STOPPED just before it exits: wait for the exit, so that
        nothing of the old service runs (or holds its files) when this returns."""
        import win32api
        import win32event

        try:
            process = win32api.OpenProcess(0x00100000, False, pid)  # SYNCHRONIZE
        except self.error:
            return  # gone already
        try:
            if win32event.WaitForSingleObject(process, int(self.timeout * 1000)) != 0:
                raise CrcError(
                    f"service {name} is STOPPED but its process {pid} is still "
                    f"running after {self.timeout:g} s",
                    code="service_failed",
                )
        finally:
            win32api.CloseHandle(process)

    def uninstall(self, name: str = SERVICE_NAME, stop: bool = True) -> bool:
        scm = self._scm()
        try:
            handle = self._open(scm, name)
            if handle is None:
                return False
            try:
                if stop:  # else: marked for deletion, gone once it has stopped
                    self._stop(handle, name)
                try:
                    self.ws.DeleteService(handle)
                except self.error as exc:
                    if exc.winerror != ERROR_SERVICE_MARKED_FOR_DELETE:
                        raise self._fail(f"deleting service {name}", exc) from None
            finally:
                self.ws.CloseServiceHandle(handle)
            return True
        finally:
            self.ws.CloseServiceHandle(scm)

    def state(self, name: str = SERVICE_NAME) -> str | None:
        """RUNNING, STOPPED, START_PENDING, ...; None when not installed."""
        scm = self._scm()
        try:
            handle = self._open(scm, name)
            if handle is None:
                return None
            try:
                return self._state(handle)
            finally:
                self.ws.CloseServiceHandle(handle)
        finally:
            self.ws.CloseServiceHandle(scm)

    def is_active(self, name: str = SERVICE_NAME) -> bool:
        return self.state(name) == "RUNNING"
