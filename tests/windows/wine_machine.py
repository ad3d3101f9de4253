"""Helpers of the Windows tier (tests/windows): a Wine prefix, and one Windows machine
enrolled with a server on this machine. See conftest.py."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from importlib import resources
from pathlib import Path, PureWindowsPath
from typing import Any

from cloudremotecontrol.master.client import Client
from cloudremotecontrol.master.localrun import ServerProcess

PYTHON = r"C:\Python312\python.exe"
STATE_DIR = r"C:\ProgramData\CloudRemoteControl\agent"
SERVICE = "crc-agent"
# Files rewritten in place (not by rename) during a session: never shared with the cache.
PRIVATE_FILES = (
    "system.reg",
    "user.reg",
    "userdef.reg",
    "drive_c/windows/system32/drivers/etc/hosts",
)


class WinePrefix:
    """A private copy of the template prefix, kept alive by ``wineserver -p``."""

    def __init__(self, template: Path, root: Path) -> None:
        self.path = root / "prefix"
        subprocess.run(["cp", "-al", str(template), str(self.path)], check=True)
        for rel in PRIVATE_FILES:
            f = self.path / rel
            if f.exists():
                data = f.read_bytes()
                f.unlink()
                f.write_bytes(data)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        self.env.update(
            WINEPREFIX=str(self.path), WINEDEBUG="-all", WINEDLLOVERRIDES="mscoree=;mshtml="
        )

    def start(self) -> None:
        # -p: the server (and with it the SCM and our service) outlives every process;
        # Wine would otherwise shut the prefix down ~1 s after the last process exits.
        subprocess.run(["wineserver", "-p"], env=self.env, check=True, timeout=30)
        # The prefix's own services (services.exe, ...) keep wineboot's stdio: /dev/null,
        # so no pipe of ours stays open for ever and Python services get valid handles.
        subprocess.run(
            ["wine", "wineboot"],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
            timeout=120,
        )

    def close(self) -> None:
        subprocess.run(["wineserver", "-k"], env=self.env, check=False, timeout=60)
        subprocess.run(["wineserver", "-w"], env=self.env, check=False, timeout=60)

    def run(
        self, *argv: str, timeout: float = 120, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """A Windows program; stdout/stderr are pipes (Python under Wine cannot write to
        a regular file as stdio)."""
        out = subprocess.run(
            ["wine", *argv],
            env=self.env,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
            encoding="utf-8",
            errors="replace",
        )
        if check and out.returncode != 0:
            raise AssertionError(f"{argv} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
        return out

    def python(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run(PYTHON, *args, **kw)

    def crc(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """`crc` on the Windows side (the agent package installed in the Windows Python)."""
        return self.python("-m", "cloudremotecontrol", *args, **kw)

    def host_path(self, windows_path: str) -> Path:
        """The Linux path of ``C:\\...`` in this prefix (Wine's names are case-insensitive)."""
        p = PureWindowsPath(windows_path)
        assert p.drive.upper() == "C:", windows_path
        cur = self.path / "drive_c"
        for part in p.parts[1:]:
            names = {c.name.lower(): c.name for c in cur.iterdir()} if cur.is_dir() else {}
            cur = cur / names.get(part.lower(), part)
        return cur

    def sc_state(self, name: str = SERVICE) -> str | None:
        """The state `sc query` prints (RUNNING, STOPPED, ...); None if no such service."""
        out = self.run("sc", "query", name)
        m = re.search(r"STATE\s*:\s*\d+\s+(\w+)", out.stdout)
        return m.group(1) if m else None

    def wait_sc(self, want: str, timeout: float = 60, name: str = SERVICE) -> list[str]:
        """Poll `sc query` until the service is ``want``; every state seen, in order."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            state = self.sc_state(name) or "MISSING"
            if not seen or seen[-1] != state:
                seen.append(state)
            if state == want:
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"service {name} is not {want} after {timeout:g} s; "
                    f"states seen: {seen}\n{self.diagnose()}"
                )
            time.sleep(0.2)

    def pids(self, pattern: str) -> list[int]:
        """Processes of this prefix whose (Windows) command line contains ``pattern``."""
        mine = set(prefix_pids(self.path))
        return [pid for pid in linux_pids(pattern) if pid in mine]

    def diagnose(self) -> str:
        """What to print when the service misbehaves."""
        query = self.run("sc", "query", SERVICE).stdout.strip()
        pids = self.pids("cloudremotecontrol.agent.winservice")
        out = self.host_path(r"C:\ProgramData\CloudRemoteControl\logs\crc-agent.log.stdout")
        extra = out.read_text(errors="replace")[-2000:] if out.exists() else ""
        return (
            f"sc query: {query}\nservice processes: {pids}\nservice log:\n"
            f"{self.service_log()}\n{extra}"
        )

    def service_log(self) -> str:
        log = self.host_path(r"C:\ProgramData\CloudRemoteControl\logs\crc-agent.log")
        return log.read_text(errors="replace")[-4000:] if log.exists() else "(no service log)"


def linux_pids(pattern: str) -> list[int]:
    """Processes (Wine's are Linux processes, their command line the Windows one) whose
    command line contains ``pattern``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (
                (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            )
            status = (proc / "status").read_text()
        except OSError:
            continue
        if pattern in cmdline and "\nState:\tZ" not in status:
            pids.append(int(proc.name))
    return pids


def prefix_pids(prefix: Path) -> list[int]:
    """The Linux processes running in Wine prefix ``prefix`` (by their WINEPREFIX)."""
    want = f"WINEPREFIX={prefix}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if want in (proc / "environ").read_bytes().split(b"\0"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def tear_down(machine: WineMachine, prefix: WinePrefix, server: ServerProcess) -> None:
    """Stop a module's machine, its Wine prefix and server; nothing of the prefix may
    outlive the module (Wine's processes included)."""
    machine.client.close()
    prefix.close()
    server.stop()
    for pid in prefix_pids(prefix.path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(prefix.path, ignore_errors=True)


class WineMachine:
    """One Windows machine (the prefix) enrolled as ``win`` in group ``g`` of a server."""

    group = "g"
    name = "win"

    def __init__(self, server: ServerProcess, prefix: WinePrefix, tmp: Path) -> None:
        self.server = server
        self.prefix = prefix
        self.tmp = tmp
        self.token = server.add_user("alice")
        self.client = Client(server.url, self.token, server.fingerprint)
        self.cli_env = {
            **os.environ,
            "CRC_URL": server.url,
            "CRC_TOKEN": self.token,
            "CRC_FINGERPRINT": server.fingerprint,
            "CRC_CONFIG_DIR": str(tmp / "cfg"),
        }
        self.install_report: dict[str, Any] = {}
        self.package: dict[str, str] = {}

    def install_args(self) -> list[str]:
        """`crc agent install` of this machine in the server's group (a new key)."""
        key = self.client.create_group(self.group, [self.name])["machines"][0]["key"]
        url, fingerprint = self.server.url, self.server.fingerprint
        return ["agent", "install", "--url", url, "--key", key, "--fingerprint", fingerprint,
                "--state-dir", STATE_DIR, "--json"]  # fmt: skip

    def crc(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The master's `crc` (Linux) with alice's credentials."""
        import sys

        return subprocess.run(
            [sys.executable, "-m", "cloudremotecontrol", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.cli_env,
            check=False,
        )

    def machine(self) -> dict[str, Any]:
        g = self.client.group(self.group)
        return next(m for m in g["machines"] if m["name"] == self.name)

    def wait_state(self, state: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            m = self.machine()
            if m["state"] == state:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"machine {self.name} is {m['state']}, not {state}, "
                    f"after {timeout:g} s\n{self.prefix.diagnose()}"
                )
            time.sleep(0.2)

    def install_agent_package(self) -> dict[str, str]:
        """Fetch /v1/agent/package into the Windows Python, with the Windows bootstrap's
        own fetch helper (certificate pin, published SHA-256), as a VM would."""
        helper = resources.files("cloudremotecontrol.bootstrap") / "templates" / "fetch_agent.py"
        work = self.prefix.host_path(r"C:\crc-test")
        work.mkdir(parents=True, exist_ok=True)
        (work / "fetch_agent.py").write_text(helper.read_text(encoding="utf-8"), encoding="utf-8")
        (work / "install_package.py").write_text(INSTALL_PACKAGE, encoding="utf-8")
        out = self.prefix.python(
            r"C:\crc-test\install_package.py",
            self.server.url,
            self.server.fingerprint,
            timeout=180,
            check=True,
        )
        digest, filename, site = out.stdout.strip().splitlines()[-1].split("|")
        return {"sha256": digest, "filename": filename, "site": site}


# Run by the Windows Python: the same pinned download and checksum as the bootstrap
# (templates/fetch_agent.py), then the package's modules into this Python's
# site-packages (the bootstrap uses PREFIX\lib plus a .pth instead: test_wine_bootstrap.py).
INSTALL_PACKAGE = r"""
import hashlib, io, os, shutil, sys, sysconfig, zipfile
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fetch_agent as fa
url, pin = sys.argv[1].rstrip("/"), sys.argv[2]
ctx = fa.pinned_context(url, fa.normalize_pin(pin), 30)
body, _ = fa.get(url + "/v1/agent/package.sha256", ctx, 30)
digest, filename = body.decode("ascii").split()
data, _ = fa.get(url + "/v1/agent/package", ctx, 120)
seen = hashlib.sha256(data).hexdigest()
if seen != digest:
    sys.exit(f"package sha256 {seen} != published {digest}")
site = sysconfig.get_paths()["purelib"]
zf = zipfile.ZipFile(io.BytesIO(data))
for top in fa.top_level(zf.namelist()):
    path = os.path.join(site, top)
    if os.path.isdir(path):
        shutil.rmtree(path)
for info in zf.infolist():
    if info.filename != "__main__.py":
        zf.extract(info, site)
print(f"{digest}|{filename}|{site}")
"""
