"""Windows: cmd by default, the hosts file under %SystemRoot%, Job Objects for trees."""

from __future__ import annotations

import contextlib
import os
import subprocess
from typing import Any

from .base import Platform

__all__ = ["WindowsPlatform"]


class WindowsPlatform(Platform):
    name = "windows"
    default_shell = "cmd"

    def hosts_path(self) -> str:
        root = os.environ.get("SystemRoot", r"C:\Windows")
        return root + r"\System32\drivers\etc\hosts"

    def default_state_dir(self) -> str:
        base = os.environ.get("ProgramData", r"C:\ProgramData")
        return base + r"\CloudRemoteControl\agent"

    def protect_file(self, path: str) -> None:
        # icacls: drop inherited ACEs, grant SYSTEM and Administrators full control only.
        subprocess.run(["icacls", path, "/inheritance:r", "/grant:r", "*S-1-5-18:F",
                        "/grant:r", "*S-1-5-32-544:F"], check=False, capture_output=True)

    def popen_options(self) -> dict[str, Any]:
        flags = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200)
        return {"creationflags": flags}

    def kill_tree(self, proc: Any, force: bool) -> None:
        # taskkill /T ends the whole tree by parent links.
        with contextlib.suppress(OSError):
            subprocess.run(["taskkill", "/PID", str(proc.pid), "/T", "/F"], check=False,
                           capture_output=True)
