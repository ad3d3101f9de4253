"""The platform seam used by the agent."""

from __future__ import annotations

import abc
import codecs
import shutil
from typing import TYPE_CHECKING, Any

from ...errors import InvalidInput

if TYPE_CHECKING:
    from .services import ServiceManager

__all__ = ["Platform", "ShellMissing"]


class ShellMissing(InvalidInput):
    code = "shell_missing"


class Platform(abc.ABC):
    name: str = ""
    default_shell: str = "sh"
    #: ``crc agent run --hosts-file``: hosts syncs write this file instead of the system's
    #: (to try or test them without root).
    hosts_file: str | None = None

    def hosts_path(self) -> str:
        """Path of the hosts file that hosts syncs write."""
        return self.hosts_file or self.system_hosts_path()

    @abc.abstractmethod
    def system_hosts_path(self) -> str:
        """Path of the system hosts file."""

    @abc.abstractmethod
    def default_state_dir(self) -> str:
        """Where the agent keeps its credential and queue when installed as a service."""

    @abc.abstractmethod
    def protect_file(self, path: str) -> None:
        """Make ``path`` readable only by the agent's account and administrators."""

    @abc.abstractmethod
    def popen_options(self) -> dict[str, Any]:
        """Extra arguments for starting a job's process so its whole tree can be killed."""

    @abc.abstractmethod
    def kill_tree(self, proc: Any, force: bool) -> None:
        """End ``proc`` and every process it started (politely unless ``force``)."""

    def process_started(self, proc: Any) -> None:
        """Called right after a job's process was created with ``popen_options()``
        (Windows: put it in its Job Object, then resume it)."""
        return

    def process_ended(self, proc: Any) -> None:
        """Called once a job's process has ended and been reaped."""
        return

    def process_identity(self, pid: int) -> str | None:
        """What the agent records of a running job's process so that, if the agent dies,
        the next agent can end what is left of the job (None: nothing to record)."""
        return None

    def kill_leftovers(self, identity: str, force: bool = True) -> int:
        """End the processes left of a job (``identity`` from ``process_identity``),
        politely unless ``force``: those of a job whose agent died, or that left the
        job's process tree; return how many were signalled."""
        return 0

    def leftovers(self, identity: str) -> int:
        """How many processes of the job ``identity`` names still run."""
        return 0

    def output_decoder(self) -> codecs.IncrementalDecoder:
        """How a job's output bytes become text (the wire is UTF-8)."""
        return codecs.getincrementaldecoder("utf-8")(errors="replace")

    @abc.abstractmethod
    def service_manager(self) -> ServiceManager:
        """The OS's service manager (systemd, Windows SCM), for `crc agent install`."""

    def shell_argv(self, shell: str | None, command: str) -> list[str]:
        """The argv that runs ``command`` in ``shell`` (default: this OS's shell)."""
        shell = shell or self.default_shell
        table = {
            "bash": ["bash", "-c", command],
            "sh": ["sh", "-c", command],
            "powershell": ["powershell", "-NoProfile", "-NonInteractive", "-Command", command],
            "cmd": ["cmd.exe", "/d", "/s", "/c", command],
        }
        argv = table[shell]
        found = self.which(argv[0])
        if shell == "powershell" and found is None:
            found = self.which("pwsh")
        if found is None:
            raise ShellMissing(
                f"{shell} is not installed on this machine: choose another "
                "--shell or pass the command as argv"
            )
        return [found, *argv[1:]]

    def verbatim_shell(self, shell: str | None) -> str | None:
        """Where ``shell`` must get the command line exactly as written (an argv's
        quoting would change it), that shell's path; ``None`` where an argv carries
        the command unchanged (every POSIX shell, PowerShell)."""
        return None

    def which(self, program: str) -> str | None:
        return shutil.which(program)
