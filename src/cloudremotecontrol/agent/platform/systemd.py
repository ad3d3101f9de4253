"""systemd: the agent as ``crc-agent.service``.

The unit is ``Type=notify``: the agent says ``READY=1`` (agent/sdnotify.py) once its
control socket is open, so ``systemctl start`` returns only when `crc agent progress`
can already reach it - a startup script needs no polling loop. ``WatchdogSec`` restarts
an agent whose event loop hangs. ``Restart=always`` brings it back after any crash;
exit status 0 is the one exception (``RestartPreventExitStatus=0``): the agent exits 0
only when its machine was revoked or it was stopped on purpose, and restarting a
revoked agent would only loop. Logs go to the journal (``journalctl -u crc-agent``).

``CRC_SYSTEMD_DIR`` and ``CRC_SYSTEMCTL`` replace the unit directory and the
``systemctl`` command: tests (and chroots without a running systemd) use them.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from ...errors import CrcError, InvalidInput
from .services import SERVICE_NAME, ServiceChange, ServiceManager, ServiceSpec

__all__ = ["Systemd", "systemd_quote"]

Runner = Callable[..., "subprocess.CompletedProcess[str]"]
_SAFE = re.compile(r"[A-Za-z0-9_./:@+=,-]+")


def systemd_quote(arg: str) -> str:
    """One ExecStart= argument (systemd.service(5) "Command lines"; specifiers, $)."""
    if "\n" in arg or "\0" in arg:
        raise InvalidInput(f"cannot put {arg!r} on a systemd command line")
    if _SAFE.fullmatch(arg):
        return arg
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("%", "%%").replace("$", "$$") + '"'


class Systemd(ServiceManager):
    kind = "systemd"

    def __init__(
        self,
        unit_dir: str | Path | None = None,
        systemctl: str | None = None,
        run: Runner | None = None,
    ) -> None:
        self.unit_dir = Path(unit_dir or os.environ.get("CRC_SYSTEMD_DIR") or "/etc/systemd/system")
        custom = systemctl or os.environ.get("CRC_SYSTEMCTL")
        self.systemctl = shlex.split(custom) if custom else ["systemctl"]
        self._custom = bool(custom)
        self._run: Runner = run or subprocess.run

    def unit_path(self, name: str = SERVICE_NAME) -> Path:
        return self.unit_dir / f"{name}.service"

    def definition(self, spec: ServiceSpec) -> str:
        exec_start = " ".join(systemd_quote(a) for a in spec.argv)
        return (
            "# Written by `crc agent install`; `crc agent uninstall` removes it.\n"
            "[Unit]\n"
            f"Description={spec.description}\n"
            "Wants=network-online.target\n"
            "After=network-online.target\n"
            "\n"
            "[Service]\n"
            "Type=notify\n"
            f"ExecStart={exec_start}\n"
            "Environment=PYTHONUNBUFFERED=1\n"
            "Restart=always\n"
            "RestartSec=5\n"
            "RestartPreventExitStatus=0\n"
            "TimeoutStartSec=120\n"
            "WatchdogSec=120\n"
            "SyslogIdentifier=crc-agent\n"
            "\n"
            "[Install]\n"
            "WantedBy=multi-user.target\n"
        )

    def _systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        try:
            out = self._run([*self.systemctl, *args], capture_output=True, text=True, check=False)
        except FileNotFoundError:
            raise CrcError(
                f"{self.systemctl[0]} not found: this machine has no systemd; "
                "run `crc agent run` under your own supervisor instead",
                code="unsupported",
            ) from None
        if check and out.returncode != 0:
            detail = (out.stderr or out.stdout).strip().splitlines()
            raise CrcError(
                f"systemctl {' '.join(args)} failed (exit {out.returncode}): "
                f"{detail[-1] if detail else 'no message'}; see "
                "`journalctl -u crc-agent`",
                code="service_failed",
            )
        return out

    def _check_running_systemd(self) -> None:
        if self._custom:
            return
        if os.geteuid() != 0:
            raise CrcError(
                "installing a system service needs root: run it with sudo", code="forbidden"
            )
        # Without a running systemd (containers, chroots) systemctl would fail obscurely.
        if not os.path.isdir("/run/systemd/system"):
            raise CrcError(
                "systemd is not running on this machine (no /run/systemd/system): "
                "run `crc agent run` under your own supervisor instead",
                code="unsupported",
            )

    def install(self, spec: ServiceSpec, restart: bool = False) -> ServiceChange:
        self._check_running_systemd()
        path = self.unit_path(spec.name)
        text = self.definition(spec)
        try:
            changed = path.read_text() != text
        except FileNotFoundError:
            changed = True
        if changed:
            self.unit_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.unit_dir, prefix=f".{spec.name}.")
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
            self._systemctl("daemon-reload")
        if self._systemctl("is-enabled", "--quiet", spec.name, check=False).returncode != 0:
            self._systemctl("enable", "--quiet", spec.name)
        active = self.is_active(spec.name)
        if active and (changed or restart):
            self._systemctl("restart", spec.name)
            action = "restarted"
        elif active:
            action = "running"
        else:
            self._systemctl("start", spec.name)
            action = "started"
        return ServiceChange(str(path), changed, action)

    def uninstall(self, name: str = SERVICE_NAME, stop: bool = True) -> bool:
        path = self.unit_path(name)
        if not path.exists():
            return False
        self._check_running_systemd()
        self._systemctl("disable", *(["--now"] if stop else []), "--quiet", name, check=False)
        path.unlink()
        self._systemctl("daemon-reload")
        if stop:
            self._systemctl("reset-failed", name, check=False)
        return True

    def is_active(self, name: str = SERVICE_NAME) -> bool:
        return self._systemctl("is-active", "--quiet", name, check=False).returncode == 0
