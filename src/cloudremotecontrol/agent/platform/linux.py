"""Linux (and other POSIX systems)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from typing import Any

from .base import Platform
from .services import ServiceManager

__all__ = ["LinuxPlatform"]


class LinuxPlatform(Platform):
    name = "linux"

    @property
    def default_shell(self) -> str:  # type: ignore[override]
        return "bash" if shutil.which("bash") else "sh"

    def hosts_path(self) -> str:
        return "/etc/hosts"

    def default_state_dir(self) -> str:
        if os.geteuid() == 0:
            return "/var/lib/crc-agent"
        base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
        return os.path.join(base, "crc-agent")

    def protect_file(self, path: str) -> None:
        os.chmod(path, 0o600)

    def popen_options(self) -> dict[str, Any]:
        # A new session makes the job the leader of its own process group, so the group
        # (children and grandchildren that did not leave it) can be signalled at once.
        return {"start_new_session": True}

    def kill_tree(self, proc: Any, force: bool) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL if force else signal.SIGTERM)

    def service_manager(self) -> ServiceManager:
        from .systemd import Systemd

        return Systemd()
