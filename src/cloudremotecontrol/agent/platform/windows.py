"""Windows: cmd by default, the hosts file under %SystemRoot%, Job Objects for trees.

* **Process trees.** Each job starts suspended (``CREATE_SUSPENDED``), is put in a Job
  Object of its own and only then resumed, so every process it starts - children,
  grandchildren, ``start /b`` - is in the job from its first instruction. A timeout or a
  cancel ends the whole job at once with ``TerminateJobObject`` (Windows has no polite
  "SIGTERM" for console-less processes, so polite and forced are the same here). The job
  is not ``KILL_ON_JOB_CLOSE``: what a command deliberately leaves running after it ended
  normally (a server started with ``start``) keeps running, as on Linux.
* **Output encoding.** The wire is UTF-8. Windows programs write to a pipe in one of
  three encodings: UTF-8, the console's code page (cmd and PowerShell), or the ANSI code
  page (most C and Python programs). The service gives its jobs a hidden console whose
  code page is UTF-8 (65001, ``use_utf8_console``), so cmd and PowerShell write UTF-8;
  the agent decodes UTF-8 and decodes any byte that is not valid UTF-8 with the ANSI code
  page (``GetACP``, e.g. cp1252) instead of replacing it with U+FFFD. ``crc agent run``
  in a terminal leaves that terminal's code page alone.
* **Secrets.** ``protect_file`` sets a protected DACL (no inheritance) granting full
  control to SYSTEM (S-1-5-18) and BUILTIN\\Administrators (S-1-5-32-544) only, through
  the security API (``SetFileSecurityW``); ``icacls`` is the fallback where that API is
  not at hand.
* **Service.** ``service_manager()`` registers the ``crc-agent`` service through the
  Win32 service API (platform/winsvc.py, pywin32, which the service host needs anyway);
  on Windows without pywin32 it refuses with the pip command to run. The ``sc.exe``
  implementation (platform/scm.py) is what other systems get, e.g. to show the
  definition.

Everything external goes through one runner (``run``) or ``ctypes`` calls made only on
Windows, so the fallbacks are tested on Linux with a fake runner.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import subprocess
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...errors import CrcError
from .base import Platform
from .services import ServiceManager

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["WindowsPlatform", "legacy_decoder"]

CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_SUSPENDED = 0x00000004
SDDL_FILE = "D:P(A;;FA;;;SY)(A;;FA;;;BA)"
SDDL_DIR = "D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)"
CP_UTF8 = 65001
_CTRL_HANDLER: Any = None  # kept alive: Windows calls it for as long as the process lives


# ctypes' Windows-only names (WinDLL, get_last_error, WinError, ...) are used behind
# sys.platform checks: the type checker sees them on Windows, OSError stands for them
# elsewhere (this module is imported and tested on Linux too).


def _dll(name: str, use_last_error: bool = True) -> Any:
    if sys.platform != "win32":
        raise OSError(f"{name}.dll is a Windows library")
    import ctypes

    return ctypes.WinDLL(name, use_last_error=use_last_error)


def _last_error() -> int:
    """The thread's GetLastError() as ctypes saved it after the last foreign call."""
    if sys.platform != "win32":
        return 0
    import ctypes

    return ctypes.get_last_error()


def _kernel32() -> Any:
    return _dll("kernel32")


def _ansi_codec() -> str:
    """Python's name for the Windows ANSI code page (``cp1252`` on a Western system)."""
    try:
        cp = int(_kernel32().GetACP())
    except (AttributeError, OSError):
        return "cp1252"
    name = f"cp{cp}"
    try:
        codecs.lookup(name)
    except LookupError:
        return "cp1252"
    return name


class _LegacyFallbackDecoder(codecs.IncrementalDecoder):
    """UTF-8, where bytes that are not UTF-8 are read in a legacy code page instead."""

    def __init__(self, fallback: str, errors: str = "replace") -> None:
        super().__init__(errors)
        self.fallback = fallback
        self._pending = b""

    def decode(self, input: Buffer, final: bool = False) -> str:
        data = self._pending + bytes(input)
        self._pending = b""
        out: list[str] = []
        while data:
            try:
                out.append(data.decode("utf-8"))
                break
            except UnicodeDecodeError as exc:
                out.append(data[: exc.start].decode("utf-8"))
                if exc.reason == "unexpected end of data" and not final:
                    self._pending = data[exc.start :]  # a character split across reads
                    break
                out.append(data[exc.start : exc.end].decode(self.fallback, "replace"))
                data = data[exc.end :]
        return "".join(out)

    def reset(self) -> None:
        self._pending = b""


def legacy_decoder(fallback: str | None = None) -> codecs.IncrementalDecoder:
    return _LegacyFallbackDecoder(fallback or _ansi_codec())


class _Jobs:
    """Job Objects of the running jobs, by process id (ctypes, Windows only)."""

    def __init__(self) -> None:
        from ctypes import wintypes

        self.k32 = _kernel32()
        self.ntdll = _dll("ntdll", use_last_error=False)
        self.k32.CreateJobObjectW.restype = wintypes.HANDLE
        self.k32.CreateJobObjectW.argtypes = [wintypes.LPVOID, wintypes.LPCWSTR]
        self.k32.OpenProcess.restype = wintypes.HANDLE
        self.k32.OpenProcess.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]
        self.k32.AssignProcessToJobObject.argtypes = [wintypes.HANDLE, wintypes.HANDLE]
        self.k32.TerminateJobObject.argtypes = [wintypes.HANDLE, wintypes.UINT]
        self.k32.CloseHandle.argtypes = [wintypes.HANDLE]
        self.ntdll.NtResumeProcess.argtypes = [wintypes.HANDLE]
        self.ntdll.NtResumeProcess.restype = wintypes.LONG
        self.jobs: dict[int, int] = {}

    def adopt(self, pid: int) -> bool:
        """Put the (suspended) process ``pid`` in a new job, then let it run. Always
        resumes it; False if it could not be put in a job."""
        access = 0x0001 | 0x0100 | 0x0800  # TERMINATE | SET_QUOTA | SUSPEND_RESUME
        proc = self.k32.OpenProcess(access, False, pid)
        if not proc:
            return False  # it is gone already: nothing to resume
        try:
            job = self.k32.CreateJobObjectW(None, None)
            ok = bool(job) and bool(self.k32.AssignProcessToJobObject(job, proc))
            if ok:
                self.jobs[pid] = job
            elif job:
                self.k32.CloseHandle(job)
            status = self.ntdll.NtResumeProcess(proc)
            if status != 0:
                raise OSError(
                    f"cannot resume process {pid}: NTSTATUS {status & 0xFFFFFFFF:#x}, "
                    f"error {_last_error()}"
                )
            return ok
        finally:
            self.k32.CloseHandle(proc)

    def terminate(self, pid: int) -> bool:
        job = self.jobs.get(pid)
        return job is not None and bool(self.k32.TerminateJobObject(job, 1))

    def release(self, pid: int) -> None:
        job = self.jobs.pop(pid, None)
        if job is not None:
            self.k32.CloseHandle(job)


class WindowsPlatform(Platform):
    name = "windows"
    default_shell = "cmd"

    def verbatim_shell(self, shell: str | None) -> str | None:
        """cmd parses its own command line, so it gets the command as written
        (``cmd.exe /c "COMMAND"``, Python's shell=True): an argv would be quoted the C
        runtime's way, every ``"`` written as ``\\"``, which cmd does not undo."""
        if (shell or self.default_shell) != "cmd":
            return None
        return self.shell_argv("cmd", "")[0]  # its path, or ShellMissing

    def __init__(self, run: Callable[..., Any] | None = None) -> None:
        # One runner for every external program, so tests on Linux see the exact calls.
        self._run = run or subprocess.run
        self._native = sys.platform == "win32"
        self._jobs: _Jobs | None = None
        if self._native:
            with contextlib.suppress(OSError, AttributeError):
                self._jobs = _Jobs()

    def system_hosts_path(self) -> str:
        root = os.environ.get("SystemRoot", r"C:\Windows")
        return root + r"\System32\drivers\etc\hosts"

    def default_state_dir(self) -> str:
        base = os.environ.get("ProgramData", r"C:\ProgramData")
        return base + r"\CloudRemoteControl\agent"

    # -- secrets ------------------------------------------------------------------------
    def protect_file(self, path: str) -> None:
        if self._native:
            self._set_dacl(path, SDDL_DIR if os.path.isdir(path) else SDDL_FILE)
            return
        # icacls: drop inherited ACEs, grant SYSTEM and Administrators full control only.
        out = self._run(
            [
                "icacls",
                path,
                "/inheritance:r",
                "/grant:r",
                "*S-1-5-18:F",
                "/grant:r",
                "*S-1-5-32-544:F",
            ],
            check=False,
            capture_output=True,
        )
        if getattr(out, "returncode", 0) != 0:
            raise CrcError(
                f"cannot restrict access to {path} (icacls exit {out.returncode})",
                code="permission_denied",
            )

    @staticmethod
    def _set_dacl(path: str, sddl: str) -> None:
        if sys.platform != "win32":
            raise OSError("security descriptors are set through the Windows API")
        import ctypes
        from ctypes import wintypes

        advapi = ctypes.WinDLL("advapi32", use_last_error=True)
        conv = advapi.ConvertStringSecurityDescriptorToSecurityDescriptorW
        conv.argtypes = [
            wintypes.LPCWSTR,
            wintypes.DWORD,
            ctypes.POINTER(wintypes.LPVOID),
            wintypes.LPVOID,
        ]
        setsec = advapi.SetFileSecurityW
        setsec.argtypes = [wintypes.LPCWSTR, wintypes.DWORD, wintypes.LPVOID]
        sd = wintypes.LPVOID()
        if not conv(sddl, 1, ctypes.byref(sd), None):
            raise ctypes.WinError(ctypes.get_last_error())
        try:
            # DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION
            if not setsec(path, 0x4 | 0x80000000, sd):
                err = ctypes.get_last_error()
                raise CrcError(
                    f"cannot restrict access to {path} to SYSTEM and "
                    f"Administrators: {ctypes.FormatError(err)} ({err})",
                    code="permission_denied",
                )
        finally:
            ctypes.windll.kernel32.LocalFree(sd)

    # -- processes ----------------------------------------------------------------------
    def popen_options(self) -> dict[str, Any]:
        flags = CREATE_NEW_PROCESS_GROUP
        if self._jobs is not None:
            flags |= CREATE_SUSPENDED  # adopted into its Job Object, then resumed
        return {"creationflags": flags}

    def process_started(self, proc: Any) -> None:
        if self._jobs is not None:
            self._jobs.adopt(proc.pid)

    def process_ended(self, proc: Any) -> None:
        if self._jobs is not None:
            self._jobs.release(proc.pid)

    def kill_tree(self, proc: Any, force: bool) -> None:
        if self._jobs is not None and self._jobs.terminate(proc.pid):
            return
        # Not in a job (it could not be adopted): taskkill /T ends the tree by parent links.
        with contextlib.suppress(OSError):
            self._run(
                ["taskkill", "/PID", str(proc.pid), "/T", "/F"], check=False, capture_output=True
            )

    def output_decoder(self) -> codecs.IncrementalDecoder:
        return legacy_decoder()

    @staticmethod
    def use_utf8_console() -> bool:
        """Give this process (a service: no console) a hidden console with the UTF-8 code
        page, which the jobs inherit. False if it has a console already, or failed."""
        if sys.platform != "win32":
            return False
        import ctypes
        from ctypes import wintypes

        global _CTRL_HANDLER
        k32 = _kernel32()
        if k32.GetConsoleWindow() or not k32.AllocConsole():
            return False
        # A process with a console gets console events, and the default handler ends it
        # (ExitProcess) - on a user's logoff, too, or when a job sends Ctrl+C to the
        # console it shares. The service ignores them all: the SCM alone stops it.
        _CTRL_HANDLER = ctypes.WINFUNCTYPE(wintypes.BOOL, wintypes.DWORD)(lambda event: True)
        k32.SetConsoleCtrlHandler(_CTRL_HANDLER, True)
        window = k32.GetConsoleWindow()
        if window:
            with contextlib.suppress(OSError, AttributeError):
                ctypes.windll.user32.ShowWindow(window, 0)
        return bool(k32.SetConsoleOutputCP(CP_UTF8)) and bool(k32.SetConsoleCP(CP_UTF8))

    def service_manager(self) -> ServiceManager:
        from . import winsvc

        if winsvc.available():
            return winsvc.Win32Services()
        if self._native:
            # The service host (agent/winservice.py) is a pywin32 ServiceFramework: a
            # service registered without it could only fail to start.
            raise CrcError(
                "the Windows service needs pywin32 in this Python: "
                f"{sys.executable} -m pip install pywin32",
                code="unsupported",
            )
        from .scm import WindowsServices

        return WindowsServices(run=self._run)
