"""A program under a Windows pseudo console (ConPTY, Windows 10 1809 and later).

The same interface as agent/terminal.py's ``Terminal``, through ``ctypes`` (no extra
dependency): ``CreatePseudoConsole`` on two pipes, the program started with the
``PROC_THREAD_ATTRIBUTE_PSEUDOCONSOLE`` attribute, ``ResizePseudoConsole`` for a
resize. Reads and writes are blocking pipe calls, made in threads. The output pipe
stays open after the program exits (the console host holds it): the program's end is
learned from its process handle, then the pseudo console is closed, which ends the
output once it is drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["ConPtyTerminal", "conpty_available", "windows_login_argv"]

READ_BYTES = 64 << 10
EXTENDED_STARTUPINFO_PRESENT = 0x00080000
CREATE_UNICODE_ENVIRONMENT = 0x00000400
PROC_THREAD_ATTRIBUTE_PSEUDOCONSOLE = 0x00020016
INFINITE = 0xFFFFFFFF


def conpty_available() -> bool:
    if sys.platform != "win32":
        return False
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    return hasattr(kernel32, "CreatePseudoConsole")


def windows_login_argv(shell: str | None) -> tuple[str, list[str]]:
    """``shell`` (a path, or cmd / powershell), else %COMSPEC% (cmd.exe)."""
    import os

    program = shell or os.environ.get("COMSPEC") or "cmd.exe"
    return program, [program]


def _api() -> Any:
    from ctypes import wintypes

    if sys.platform != "win32":
        raise OSError("ConPTY is a Windows API")
    k: Any = ctypes.WinDLL("kernel32", use_last_error=True)

    class COORD(ctypes.Structure):
        _fields_ = [("X", wintypes.SHORT), ("Y", wintypes.SHORT)]

    class STARTUPINFOW(ctypes.Structure):
        _fields_ = [
            ("cb", wintypes.DWORD),
            ("lpReserved", wintypes.LPWSTR),
            ("lpDesktop", wintypes.LPWSTR),
            ("lpTitle", wintypes.LPWSTR),
            ("dwX", wintypes.DWORD),
            ("dwY", wintypes.DWORD),
            ("dwXSize", wintypes.DWORD),
            ("dwYSize", wintypes.DWORD),
            ("dwXCountChars", wintypes.DWORD),
            ("dwYCountChars", wintypes.DWORD),
            ("dwFillAttribute", wintypes.DWORD),
            ("dwFlags", wintypes.DWORD),
            ("wShowWindow", wintypes.WORD),
            ("cbReserved2", wintypes.WORD),
            ("lpReserved2", ctypes.c_void_p),
            ("hStdInput", wintypes.HANDLE),
            ("hStdOutput", wintypes.HANDLE),
            ("hStdError", wintypes.HANDLE),
        ]

    class STARTUPINFOEXW(ctypes.Structure):
        _fields_ = [("StartupInfo", STARTUPINFOW), ("lpAttributeList", ctypes.c_void_p)]

    class PROCESS_INFORMATION(ctypes.Structure):
        _fields_ = [
            ("hProcess", wintypes.HANDLE),
            ("hThread", wintypes.HANDLE),
            ("dwProcessId", wintypes.DWORD),
            ("dwThreadId", wintypes.DWORD),
        ]

    k.CreatePseudoConsole.argtypes = [
        COORD,
        wintypes.HANDLE,
        wintypes.HANDLE,
        wintypes.DWORD,
        ctypes.POINTER(ctypes.c_void_p),
    ]
    k.CreatePseudoConsole.restype = ctypes.c_long
    k.ResizePseudoConsole.argtypes = [ctypes.c_void_p, COORD]
    k.ResizePseudoConsole.restype = ctypes.c_long
    k.ClosePseudoConsole.argtypes = [ctypes.c_void_p]
    k.ClosePseudoConsole.restype = None
    k.CreatePipe.argtypes = [
        ctypes.POINTER(wintypes.HANDLE),
        ctypes.POINTER(wintypes.HANDLE),
        ctypes.c_void_p,
        wintypes.DWORD,
    ]
    k.InitializeProcThreadAttributeList.argtypes = [
        ctypes.c_void_p,
        wintypes.DWORD,
        wintypes.DWORD,
        ctypes.POINTER(ctypes.c_size_t),
    ]
    k.UpdateProcThreadAttribute.argtypes = [
        ctypes.c_void_p,
        wintypes.DWORD,
        ctypes.c_size_t,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    k.DeleteProcThreadAttributeList.argtypes = [ctypes.c_void_p]
    k.CreateProcessW.argtypes = [
        wintypes.LPCWSTR,
        wintypes.LPWSTR,
        ctypes.c_void_p,
        ctypes.c_void_p,
        wintypes.BOOL,
        wintypes.DWORD,
        ctypes.c_void_p,
        wintypes.LPCWSTR,
        ctypes.c_void_p,
        ctypes.POINTER(PROCESS_INFORMATION),
    ]
    k.ReadFile.argtypes = [
        wintypes.HANDLE,
        ctypes.c_void_p,
        wintypes.DWORD,
        ctypes.POINTER(wintypes.DWORD),
        ctypes.c_void_p,
    ]
    k.WriteFile.argtypes = k.ReadFile.argtypes
    k.WaitForSingleObject.argtypes = [wintypes.HANDLE, wintypes.DWORD]
    k.WaitForSingleObject.restype = wintypes.DWORD
    k.GetExitCodeProcess.argtypes = [wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD)]
    k.TerminateProcess.argtypes = [wintypes.HANDLE, wintypes.UINT]
    k.CloseHandle.argtypes = [wintypes.HANDLE]
    k.types = (COORD, STARTUPINFOEXW, PROCESS_INFORMATION, wintypes)
    return k


def _env_block(env: Mapping[str, str]) -> ctypes.Array[ctypes.c_wchar]:
    text = "".join(f"{k}={v}\0" for k, v in sorted(env.items(), key=lambda i: i[0].upper()))
    return ctypes.create_unicode_buffer(text + "\0")


class ConPtyTerminal:
    """One program on one pseudo console (see agent/terminal.py's ``Terminal``)."""

    def __init__(self) -> None:
        self.k: Any = None
        self.hpc: Any = None
        self.out_read: Any = None
        self.in_write: Any = None
        self.process: Any = None
        self.code: int | None = None

    def _check(self, ok: object, what: str) -> None:
        if not ok:
            if sys.platform == "win32":
                raise OSError(ctypes.get_last_error(), f"{what} failed")
            raise OSError(f"{what} failed")

    async def start(
        self,
        program: str,
        argv: Sequence[str],
        cols: int,
        rows: int,
        env: Mapping[str, str],
        cwd: str | None,
    ) -> None:
        await asyncio.to_thread(self._start, program, list(argv), cols, rows, dict(env), cwd)

    def _start(
        self,
        program: str,
        argv: list[str],
        cols: int,
        rows: int,
        env: dict[str, str],
        cwd: str | None,
    ) -> None:
        k = self.k = _api()
        coord_t, siex_t, pi_t, wintypes = k.types
        in_read, in_write = wintypes.HANDLE(), wintypes.HANDLE()
        out_read, out_write = wintypes.HANDLE(), wintypes.HANDLE()
        self._check(
            k.CreatePipe(ctypes.byref(in_read), ctypes.byref(in_write), None, 0), "CreatePipe"
        )
        self._check(
            k.CreatePipe(ctypes.byref(out_read), ctypes.byref(out_write), None, 0), "CreatePipe"
        )
        self.in_write, self.out_read = in_write, out_read
        hpc = ctypes.c_void_p()
        hr = k.CreatePseudoConsole(coord_t(cols, rows), in_read, out_write, 0, ctypes.byref(hpc))
        k.CloseHandle(in_read)
        k.CloseHandle(out_write)
        if hr != 0:
            raise OSError(f"CreatePseudoConsole failed (HRESULT {hr & 0xFFFFFFFF:#010x})")
        self.hpc = hpc
        size = ctypes.c_size_t()
        k.InitializeProcThreadAttributeList(None, 1, 0, ctypes.byref(size))
        attrs = ctypes.create_string_buffer(size.value)
        self._check(
            k.InitializeProcThreadAttributeList(attrs, 1, 0, ctypes.byref(size)),
            "InitializeProcThreadAttributeList",
        )
        try:
            self._check(
                k.UpdateProcThreadAttribute(
                    attrs,
                    0,
                    PROC_THREAD_ATTRIBUTE_PSEUDOCONSOLE,
                    hpc,
                    ctypes.sizeof(ctypes.c_void_p),
                    None,
                    None,
                ),
                "UpdateProcThreadAttribute",
            )
            siex = siex_t()
            siex.StartupInfo.cb = ctypes.sizeof(siex_t)
            siex.lpAttributeList = ctypes.cast(attrs, ctypes.c_void_p)
            pi = pi_t()
            cmdline = ctypes.create_unicode_buffer(subprocess.list2cmdline(argv))
            self._check(
                k.CreateProcessW(
                    None,  # the command line's first word, searched in PATH like Windows does
                    cmdline,
                    None,
                    None,
                    False,
                    EXTENDED_STARTUPINFO_PRESENT | CREATE_UNICODE_ENVIRONMENT,
                    ctypes.cast(_env_block(env), ctypes.c_void_p),
                    cwd,
                    ctypes.byref(siex),
                    ctypes.byref(pi),
                ),
                f"CreateProcess {program}",
            )
        finally:
            k.DeleteProcThreadAttributeList(attrs)
        k.CloseHandle(pi.hThread)
        self.process = pi.hProcess

    def _read(self) -> bytes:
        _, _, _, wintypes = self.k.types
        buf = ctypes.create_string_buffer(READ_BYTES)
        got = wintypes.DWORD()
        if not self.k.ReadFile(self.out_read, buf, READ_BYTES, ctypes.byref(got), None):
            return b""  # broken pipe: the pseudo console is closed
        return buf.raw[: got.value]

    async def read(self) -> bytes:
        return await asyncio.to_thread(self._read)

    def _write(self, data: bytes) -> None:
        _, _, _, wintypes = self.k.types
        view = memoryview(data)
        while view:
            done = wintypes.DWORD()
            chunk = bytes(view)
            self._check(
                self.k.WriteFile(self.in_write, chunk, len(chunk), ctypes.byref(done), None),
                "WriteFile",
            )
            view = view[done.value :]

    async def write(self, data: bytes) -> None:
        await asyncio.to_thread(self._write, data)

    def resize(self, cols: int, rows: int) -> None:
        coord_t = self.k.types[0]
        self.k.ResizePseudoConsole(self.hpc, coord_t(cols, rows))

    def _wait(self) -> int:
        _, _, _, wintypes = self.k.types
        self.k.WaitForSingleObject(self.process, INFINITE)
        code = wintypes.DWORD()
        self.k.GetExitCodeProcess(self.process, ctypes.byref(code))
        # The program ended: close the console, so its output ends once drained.
        self._close_console()
        return int(code.value)

    async def wait(self) -> int:
        if self.code is None:
            self.code = await asyncio.to_thread(self._wait)
        return self.code

    def _close_console(self) -> None:
        if self.hpc is not None:
            hpc, self.hpc = self.hpc, None
            self.k.ClosePseudoConsole(hpc)

    async def close(self) -> None:
        k = self.k
        if k is None:
            return
        if self.process is not None and self.code is None:
            with contextlib.suppress(OSError):
                k.TerminateProcess(self.process, 1)
        await asyncio.to_thread(self._close_console)
        for name in ("process", "in_write", "out_read"):
            handle = getattr(self, name)
            if handle is not None:
                k.CloseHandle(handle)
                setattr(self, name, None)
