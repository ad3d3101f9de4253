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

    # A property where the base has a class attribute: bash only where it is installed.
    @property
    def default_shell(self) -> str:  # type: ignore[override]
        return "bash" if shutil.which("bash") else "sh"

    def system_hosts_path(self) -> str:
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

    def process_identity(self, pid: int) -> str | None:
        start = _proc_stat(pid)
        return f"{pid}:{start[1]}" if start else None

    def kill_leftovers(self, identity: str, force: bool = True) -> int:
        """Signal every process of the job's session (its setsid leader's pid) that
        started no earlier than the leader: a reused pid never matches. SIGKILL, or
        SIGTERM unless ``force``."""
        sig = signal.SIGKILL if force else signal.SIGTERM
        killed = 0
        for pid, _ in _session(identity):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
                killed += 1
        return killed

    def leftovers(self, identity: str) -> int:
        return sum(1 for _, state in _session(identity) if state != "Z")

    def service_manager(self) -> ServiceManager:
        from .systemd import Systemd

        return Systemd()


def _session(identity: str) -> list[tuple[int, str]]:
    """(pid, state) of each process of the session ``identity`` names (``sid:start``)
    that started no earlier than its leader, but this process; none when the leader's
    pid is another process's now."""
    try:
        sid_text, start_text = identity.split(":")
        sid, start = int(sid_text), int(start_text)
    except ValueError:
        return []
    leader = _proc_stat(sid)
    if leader is not None and leader[1] != start:
        # The leader's pid now names a later process: the session by that id is
        # another's (a new leader that reused the pid), whatever is left of the job.
        return []
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        stat = _proc_stat(int(entry.name))
        if stat is not None and stat[0] == sid and stat[1] >= start:
            found.append((int(entry.name), stat[2]))
    return found


def _proc_stat(pid: int) -> tuple[int, int, str] | None:
    """(session id, start time in clock ticks since boot, state) of ``pid``, from
    /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            text = fh.read().decode(errors="replace")
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # after "pid (comm) "
    try:
        return int(fields[3]), int(fields[19]), fields[0]  # session, starttime, state
    except (IndexError, ValueError):
        return None
