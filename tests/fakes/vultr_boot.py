"""Linux "VMs" for the fake Vultr API: the boot and halt hooks of ``vultr_api.FakeVultr``.

A test double, not a provider: ``LinuxBoot`` boots a fake instance by running the
``user_data`` it was created with (the real bootstrap script ``crc up`` rendered) as root
in a machine of its own on this computer, and powers it off when the instance is deleted::

    boot = LinuxBoot(tmp / "vms", network="netns")
    fake = FakeVultr(boot=boot, halt=boot.halt).start()
    ...
    boot.close(); fake.stop()

A machine is a holder process started by ``unshare --mount --uts --pid --fork
--kill-child --mount-proc --propagation private`` (root only), PID 1 of its own PID
namespace, which mounts before anything runs:

* ``/opt`` and ``/run``: empty tmpfs; ``/etc``, ``/var``, ``/usr/local`` and ``/root``: overlays
  over this computer's (its files are visible, every write stays in the machine's
  directory), so the agent's venv, unit file, credential, hosts file and whatever the
  steps write are private to the machine;
* a fresh ``/etc/hosts`` and the instance's ``hostname`` (own UTS namespace).

Then the script runs, as cloud-init would: copied to
``/var/lib/cloud/instance/scripts/part-001``, executed directly (its ``#!`` line) as root
with a clean environment, output to ``console.log``. systemd does not run here:
``CRC_SYSTEMCTL`` points at ``agent/platform/fake_systemctl.py`` (under the distribution's
``/usr/bin/python3``), which starts the unit's real ``ExecStart=`` as a background
process of the machine and waits for its ``READY=1``; its journal and call log are in the
machine's ``systemd/`` directory (``/run/fake-systemd`` inside).

The network (``network``): ``netns`` gives each machine a network namespace of its own,
``crc-vultr-<id>``, with a veth into the local provider's bridge ``crc0`` and its own
address in 10.213.0.0/16 (``localnet.attach``, the local provider's plan and lock), so
machines reach each other and this computer's 10.213.0.1, nothing else: run the server
with ``--listen 10.213.0.1:PORT``. ``host`` shares this computer's network (a server on
loopback works; every machine then reports the same addresses).

Shared with this computer in any case: ``/tmp``, ``/srv``, ``/usr`` (not overlaid: steps
must not write there), the kernel.

``halt`` SIGKILLs the holder's PID 1, which takes every process of the PID namespace with
it (the agent, its jobs, a script still running); the mount namespace and its mounts go
with the last process. It returns once no process is left in either namespace, deletes
the network namespace and veth, and the machine's disk (the overlays), but keeps
``console.log`` and ``systemd/``. ``leftovers()`` lists processes still in any machine's
namespaces, ``mounts()`` its mounts visible from here, ``networks()`` its network
namespaces and veths still present: all must be empty after a teardown. The bridge is
the caller's to release (``localnet.release_bridge``) once its server stopped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudremotecontrol.agent.platform import fake_systemctl
from cloudremotecontrol.providers import localnet as net

__all__ = ["SYSTEM_PATH", "LinuxBoot", "LinuxMachine", "namespace_members"]

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
USER_DATA_PATH = "/var/lib/cloud/instance/scripts/part-001"  # where cloud-init keeps it
_PRIVATE = ("etc", "var", "usr/local", "root")
# PID 1 of the machine: $0 is the machine's directory, $1 its hostname.
_INIT = r"""
set -e
D=$0
mount -t tmpfs -o mode=0755 tmpfs /opt
mount -t tmpfs -o mode=0755 tmpfs /run
ln -s "$D/systemd" /run/fake-systemd  # short enough for the notify socket's AF_UNIX path
for d in etc var usr/local root; do
    n=$(printf %s "$d" | tr / _)
    mkdir -p "$D/disk/$n/upper" "$D/disk/$n/work"
    mount -t overlay overlay \
        -o "lowerdir=/$d,upperdir=$D/disk/$n/upper,workdir=$D/disk/$n/work" "/$d"
done
hostname "$1"
printf '%s\n' "$1" >/etc/hostname
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n127.0.1.1 %s\n' \
    "$1" >/etc/hosts
install -D -m 0700 "$D/user-data" /var/lib/cloud/instance/scripts/part-001
rm -f "$D/user-data"
echo booted
# PID 1 stays, reaping the orphans (the agent, once fake systemctl has exited).
while :; do sleep 3600 & wait $! || true; done
"""


def _ns(pid: int | str, kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def namespace_members(namespaces: set[str]) -> dict[int, str]:
    """Every live process in one of ``namespaces`` (``pid:[N]`` / ``mnt:[N]`` links),
    with its command line."""
    out: dict[int, str] = {}
    if not namespaces:
        return out
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        if _ns(entry.name, "pid") in namespaces or _ns(entry.name, "mnt") in namespaces:
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                    cmd = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
                with open(f"/proc/{entry.name}/stat") as fh:
                    state = fh.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                out[int(entry.name)] = cmd
    return out


@dataclass
class LinuxMachine:
    """One booted instance (see the module docstring)."""

    instance_id: str
    hostname: str
    dir: Path
    holder: subprocess.Popen[str] | None = None
    init_pid: int | None = None
    namespaces: set[str] = field(default_factory=set)
    exit_code: int | None = None  # of the startup script, once it ended
    netns: str | None = None  # network namespace and veth (network="netns")
    veth: str | None = None
    ip: str | None = None
    halted: bool = False

    @property
    def console(self) -> Path:
        return self.dir / "console.log"

    @property
    def systemd_dir(self) -> Path:
        return self.dir / "systemd"

    def console_tail(self, chars: int = 3000) -> str:
        try:
            return self.console.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no console output)"

    def journal(self) -> str:
        """What the agent service printed (fake systemd's journal of crc-agent)."""
        try:
            return (self.systemd_dir / "crc-agent.journal").read_text(errors="replace")
        except OSError:
            return ""

    def path(self, inside: str) -> Path:
        """A path inside the running machine, reached through PID 1's root."""
        if self.init_pid is None:
            raise RuntimeError(f"machine {self.instance_id} is not running")
        return Path(f"/proc/{self.init_pid}/root") / inside.lstrip("/")

    @property
    def net_key(self) -> str:
        return f"vultr/{self.instance_id}"

    def start(self, script: bytes, network: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.systemd_dir.mkdir(exist_ok=True)
        user_data = self.dir / "user-data"
        fd = os.open(user_data, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
        with os.fdopen(fd, "wb") as fh:
            fh.write(script)
        prefix: list[str] = []
        if network == "netns":

            def created(ns: str, veth: str, ip: str) -> None:
                self.netns, self.veth, self.ip = ns, veth, ip

            ns = f"{net.NS_PREFIX}vultr-{self.instance_id}"
            net.attach(ns, self.net_key, None, None, created)
            prefix = ["ip", "netns", "exec", ns]
        self.holder = subprocess.Popen(
            [
                *prefix,
                "unshare",
                "--mount",
                "--uts",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "--propagation",
                "private",
                "bash",
                "-c",
                _INIT,
                str(self.dir),
                self.hostname,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"},
        )
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline()
        if line.strip() != "booted":
            self.holder.kill()
            _, err = self.holder.communicate()
            raise RuntimeError(f"machine {self.instance_id} did not start: {err.strip()}")
        self.init_pid = self._child_of(self.holder.pid)
        for kind in ("pid", "mnt"):
            ns = _ns(self.init_pid, kind)
            if ns is None or ns == _ns("self", kind):
                raise RuntimeError(f"machine {self.instance_id} has no {kind} namespace")
            self.namespaces.add(ns)

    @staticmethod
    def _child_of(pid: int) -> int:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            children = fh.read().split()
        if len(children) != 1:
            raise RuntimeError(f"unshare {pid} has children {children}, expected PID 1")
        return int(children[0])

    def run_user_data(self, systemctl: str, timeout: float) -> int:
        """Run the startup script as root with a clean environment; its exit code."""
        assert self.init_pid is not None
        argv = [
            "nsenter",
            "--target",
            str(self.init_pid),
            "--mount",
            "--uts",
            "--pid",
            "--net",
            "--",
            "env",
            "-i",
            f"PATH={SYSTEM_PATH}",
            "LANG=C.UTF-8",
            "HOME=/root",
            f"CRC_SYSTEMCTL={systemctl}",
            "CRC_FAKE_SYSTEMD_STATE=/run/fake-systemd",
            USER_DATA_PATH,
        ]
        with open(self.console, "ab") as console:
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        self.exit_code = proc.returncode
        return proc.returncode

    def stop(self, timeout: float = 15.0) -> None:
        """Power off: kill every process of the machine, wait, delete its disk."""
        for pid in (self.init_pid, self.holder.pid if self.holder else None):
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.holder is not None:
            self.holder.communicate(timeout=timeout)
        deadline = time.monotonic() + timeout
        while left := namespace_members(self.namespaces):
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes of machine {self.instance_id} survive: {left}")
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
        self.init_pid = None
        self.halted = True
        if self.netns is not None:
            net.detach(self.netns, self.net_key)
        shutil.rmtree(self.dir / "disk", ignore_errors=True)


class LinuxBoot:
    """The boot hook (``__call__``) and halt hook (``halt``) of ``FakeVultr``.

    ``machines`` maps instance ids to their ``LinuxMachine`` (kept after halt, for the
    console). A startup script that fails or does not start with ``#!`` raises, which
    the fake records in ``boot_errors``. ``python`` runs fake systemctl (the VM's own
    interpreter, no dependencies needed); ``timeout`` bounds each startup script;
    ``network``: ``host`` or ``netns`` (see the module docstring).
    """

    def __init__(
        self,
        root: Path | str,
        *,
        network: str = "host",
        python: str = "/usr/bin/python3",
        timeout: float = 180.0,
    ) -> None:
        if network not in ("host", "netns"):
            raise ValueError(f"network must be host or netns, not {network!r}")
        self.root = Path(root)
        self.network = network
        self.systemctl = f"{python} {fake_systemctl.__file__}"
        self.timeout = timeout
        self.machines: dict[str, LinuxMachine] = {}
        self._halted: set[str] = set()
        self._closed = False
        self._lock = threading.Lock()

    def __call__(self, instance: dict[str, Any], script: bytes) -> None:
        iid = str(instance["id"])
        if not script.startswith(b"#!"):
            raise RuntimeError(
                f"instance {iid}: cannot boot this user data here (not a "
                "Linux script starting with #!)"
            )
        with self._lock:  # halt waits until the machine is fully started, or boot sees it
            if self._closed or iid in self._halted:
                return
            m = LinuxMachine(
                iid,
                str(instance.get("hostname") or instance.get("label") or "localhost"),
                self.root / iid,
            )
            self.machines[iid] = m
            try:
                m.start(script, self.network)
            except BaseException:
                m.stop()
                raise
        try:
            code = m.run_user_data(self.systemctl, self.timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"instance {iid}: the startup script ran longer than "
                f"{self.timeout:g}s; console:\n{m.console_tail()}"
            ) from None
        with self._lock:
            halted = iid in self._halted or self._closed
        if code != 0 and not halted:
            raise RuntimeError(
                f"instance {iid}: the startup script failed (exit {code}); "
                f"console:\n{m.console_tail()}\njournal:\n{m.journal()[-2000:]}"
            )

    def halt(self, instance_id: str) -> None:
        with self._lock:
            self._halted.add(instance_id)
            m = self.machines.get(instance_id)
        if m is not None:
            m.stop()

    def close(self) -> None:
        """Halt every machine still running (test teardown)."""
        with self._lock:
            self._closed = True
            running = [m for m in self.machines.values() if not m.halted]
        for m in running:
            m.stop()

    def running(self) -> list[str]:
        """Instance ids of machines not halted."""
        with self._lock:
            return [i for i, m in self.machines.items() if not m.halted]

    def leftovers(self) -> dict[int, str]:
        """Processes still in the namespaces of any machine ever booted."""
        with self._lock:
            namespaces = set().union(*(m.namespaces for m in self.machines.values()))
        return namespace_members(namespaces)

    def networks(self) -> list[str]:
        """Network namespaces and veths of machines that are still there."""
        with self._lock:
            made = [(m.netns, m.veth) for m in self.machines.values() if m.netns]
        names = net.netns_names()
        links = net.run("ip", "-o", "link", check=False).stdout if made else ""
        return [
            n
            for ns, veth in made
            for n in (ns, veth)
            if n in names or (n == veth and f" {veth}@" in links)
        ]

    def mounts(self) -> list[str]:
        """Lines of this computer's mount table that involve a machine's directory."""
        with open("/proc/self/mountinfo") as fh:
            return [line.strip() for line in fh if str(self.root) in line]
