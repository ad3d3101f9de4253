"""Windows: the agent as the ``crc-agent`` service of the Service Control Manager.

Registered with ``sc.exe`` (present on every Windows since XP, nothing to install):
LocalSystem, automatic start, and recovery actions that restart it after a failure
(``sc failure`` + ``sc failureflag 1``, so an exit with an error counts, not only a
crash). The service process is ``python.exe [OPTIONS] -m
cloudremotecontrol.agent.winservice --state-dir ...`` (``ServiceSpec.python_options``):
a pywin32 ``ServiceFramework`` host that speaks the SCM protocol and
runs the same agent loop (``HOST_MODULE``, a later issue - until it ships, ``install``
refuses clearly instead of registering a service that cannot start).

Everything goes through one runner (``subprocess.run`` by default), so the whole
sequence is unit-tested on Linux with a fake SCM (tests/unit/test_bootstrap.py).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import time
from collections.abc import Callable

from ...errors import CrcError
from .services import SERVICE_NAME, ServiceChange, ServiceManager, ServiceSpec

__all__ = ["HOST_MODULE", "WindowsServices"]

HOST_MODULE = "cloudremotecontrol.agent.winservice"
Runner = Callable[..., "subprocess.CompletedProcess[str]"]
# sc.exe exit codes (Win32 error numbers).
ERROR_SERVICE_ALREADY_RUNNING = 1056
ERROR_SERVICE_DOES_NOT_EXIST = 1060
ERROR_SERVICE_NOT_ACTIVE = 1062
RECOVERY_ACTIONS = "restart/5000/restart/5000/restart/30000"  # ms; reset count after a day


def _host_available() -> bool:
    return importlib.util.find_spec(HOST_MODULE) is not None


class WindowsServices(ServiceManager):
    kind = "windows-scm"

    def __init__(
        self,
        run: Runner | None = None,
        sc: str = "sc.exe",
        host_available: Callable[[], bool] = _host_available,
        sleep: Callable[[float], None] = time.sleep,
        start_timeout: float = 60.0,
    ) -> None:
        self._run: Runner = run or subprocess.run
        self.sc = sc
        self.host_available = host_available
        self.sleep = sleep
        self.start_timeout = start_timeout

    def command(self, spec: ServiceSpec) -> list[str]:
        """The service's command line as arguments: ``bin_path`` is it, quoted."""
        if tuple(spec.entry) != ("-m", "cloudremotecontrol"):
            raise CrcError(
                "the Windows service runs the agent from an installed package "
                "(python -m cloudremotecontrol), not from a zipapp: install it "
                "into a venv first (the bootstrap script does)",
                code="unsupported",
            )
        return [spec.python, *spec.python_options, "-m", HOST_MODULE, *spec.run_args]

    def bin_path(self, spec: ServiceSpec) -> str:
        return subprocess.list2cmdline(self.command(spec))

    def definition(self, spec: ServiceSpec) -> str:
        return "\n".join(" ".join(_show(a) for a in cmd) for cmd in self.commands(spec)) + "\n"

    def commands(self, spec: ServiceSpec, exists: bool = False) -> list[list[str]]:
        """The sc.exe calls that (re)configure the service."""
        return [
            [
                self.sc,
                "config" if exists else "create",
                spec.name,
                "binPath=",
                self.bin_path(spec),
                "start=",
                "auto",
                "obj=",
                "LocalSystem",
                "DisplayName=",
                spec.display_name,
            ],
            [self.sc, "description", spec.name, spec.description],
            [self.sc, "failure", spec.name, "reset=", "86400", "actions=", RECOVERY_ACTIONS],
            [self.sc, "failureflag", spec.name, "1"],
        ]

    def _sc(self, *args: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
        try:
            out = self._run([self.sc, *args], capture_output=True, text=True, check=False)
        except FileNotFoundError:
            raise CrcError("sc.exe not found: is this Windows?", code="unsupported") from None
        if out.returncode not in ok:
            text = " ".join((out.stdout or out.stderr or "").split())
            raise CrcError(
                f"sc.exe {' '.join(args[:2])} failed (error {out.returncode}): "
                f"{text or 'no message'}",
                code="service_failed",
            )
        return out

    def _config(self, name: str) -> dict[str, str] | None:
        out = self._sc("qc", name, ok=(0, ERROR_SERVICE_DOES_NOT_EXIST))
        if out.returncode == ERROR_SERVICE_DOES_NOT_EXIST:
            return None
        return _fields(out.stdout)

    def state(self, name: str = SERVICE_NAME) -> str | None:
        """RUNNING, STOPPED, START_PENDING, ...; None when not installed."""
        out = self._sc("query", name, ok=(0, ERROR_SERVICE_DOES_NOT_EXIST))
        if out.returncode == ERROR_SERVICE_DOES_NOT_EXIST:
            return None
        words = _fields(out.stdout).get("STATE", "").split()
        return words[1] if len(words) > 1 else None

    def is_active(self, name: str = SERVICE_NAME) -> bool:
        return self.state(name) == "RUNNING"

    def _wait_state(self, name: str, want: str) -> None:
        waited = 0.0
        while (state := self.state(name)) != want:
            if waited >= self.start_timeout:
                raise CrcError(
                    f"service {name} is {state}, not {want}, after "
                    f"{self.start_timeout:g} s: see the Application event log",
                    code="service_failed",
                )
            self.sleep(0.5)
            waited += 0.5

    def install(self, spec: ServiceSpec, restart: bool = False) -> ServiceChange:
        if not self.host_available():
            raise CrcError(
                f"the Windows service host ({HOST_MODULE}) is not part of this "
                "version yet: run `crc agent run` from a scheduled task meanwhile",
                code="unsupported",
            )
        current = self._config(spec.name)
        wanted = {
            "BINARY_PATH_NAME": self.bin_path(spec),
            "START_TYPE": "AUTO_START",
            "SERVICE_START_NAME": "LocalSystem",
            "DISPLAY_NAME": spec.display_name,
        }
        changed = current is None or any(
            _norm(current.get(k, "")) != _norm(v) for k, v in wanted.items()
        )
        if changed:
            for cmd in self.commands(spec, exists=current is not None):
                self._sc(*cmd[1:])
        running = self.is_active(spec.name)
        if running and (changed or restart):
            self._sc("stop", spec.name, ok=(0, ERROR_SERVICE_NOT_ACTIVE))
            self._wait_state(spec.name, "STOPPED")
            running = False
            action = "restarted"
        else:
            action = "running" if running else "started"
        if not running:
            self._sc("start", spec.name, ok=(0, ERROR_SERVICE_ALREADY_RUNNING))
            self._wait_state(spec.name, "RUNNING")
        return ServiceChange(spec.name, changed, action)

    def uninstall(self, name: str = SERVICE_NAME, stop: bool = True) -> bool:
        if self.state(name) is None:
            return False
        if stop:
            self._sc("stop", name, ok=(0, ERROR_SERVICE_NOT_ACTIVE))
            self._wait_state(name, "STOPPED")
        self._sc("delete", name)  # a running service goes once it has stopped
        return True


def _fields(text: str) -> dict[str, str]:
    """``KEY : value`` lines of sc.exe output."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and re.fullmatch(r"[A-Z_]+", key.strip()):
            out[key.strip()] = value.strip()
    return out


def _norm(value: str) -> str:
    # sc qc prints "2   AUTO_START" for the start type: compare the name only.
    parts = value.split()
    if len(parts) == 2 and parts[0].isdigit():
        return parts[1].lower()
    return value.strip().lower()


def _show(arg: str) -> str:
    return subprocess.list2cmdline([arg]) if arg else '""'
