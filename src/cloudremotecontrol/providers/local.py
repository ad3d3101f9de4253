"""The ``local`` provider: a scenario's machines are agents started on this computer.

What a "machine" is here, from the most to the least isolated (``mode``):

``netns`` (root, ``ip`` and ``unshare`` available, the server reachable from the bridge)
    Each machine gets its own network namespace ``crc-<scope>-<scenario>.<machine>`` with
    one veth into the bridge ``crc0`` (10.213.0.1/16 on this computer's side) and an address
    of its own in 10.213.0.0/16. Machines reach each other and this computer's address
    on the bridge, nothing else: there is no default route, no forwarding and no NAT. A
    server whose URL names another local address of this computer gets a /32 route via
    the bridge; a server on 127.0.0.1 cannot be reached from a namespace, so ``auto``
    then falls back to ``isolated`` (run the server with ``--listen 10.213.0.1:PORT``,
    as ``crc demo`` does, to get the network).
``isolated`` (``unshare`` available; as non-root through a user namespace)
    This computer's network, but the rest as below.
``plain``
    Just processes (no ``unshare``). Hosts-file steps then edit this computer's own
    /etc/hosts if they may, so this mode is refused to root.

In ``netns`` and ``isolated`` mode a machine also runs in its own mount, UTS and PID
namespaces: /etc/hosts is a private file bind-mounted over the real one (the trick of
tests/system/test_hosts_sync.py), /srv is a private directory, the hostname is the
machine's name, and the machine's first process is PID 1 of its PID namespace, started
by ``unshare --kill-child``: killing that one process kills every process the machine
ever started (jobs run in sessions of their own and would escape a process group). The
rest of the file system is this computer's: write scenario files to /srv.

The startup script is run as the machine's boot (``sh boot.sh`` inside the sandbox). A
VM's bootstrap script installs the agent as a service; here the runner passes the
two-line script of ``startup_script()``, which execs ``crc agent run`` with the key —
the same first boot, minus the installation. Rebooting runs it again (the agent then
uses the credential in its state dir).

Every machine is found again without local state: by its namespace name, and by the
``CRC_LOCAL_INSTANCE=<scope>/<scenario>.<machine>`` variable every process of the machine
inherits (``scope``: a hash of the root directory, so two roots never meet), so
``crc down`` also cleans up after a crash (``list`` reports such leftovers with status
``leftover``). ``destroy`` kills, waits until no process is left, deletes the
veth and the namespace and removes the bridge once nothing uses it.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CrcError, InvalidInput, ProviderError
from ..protocol.names import check_name
from . import localnet as net
from .base import (
    Capabilities,
    Feature,
    Instance,
    MachineSpec,
    Provider,
    instance_label,
    machine_tag,
    scenario_tag,
)

if TYPE_CHECKING:
    from ..bootstrap import BootstrapParams

__all__ = ["ENV_MARK", "NETWORK_SETTINGS", "LocalProvider", "default_root", "startup_script"]

ENV_MARK = "CRC_LOCAL_INSTANCE"
#: ``provider: {name: local, network: ...}``: auto, a mode (netns, isolated, plain), or
#: host (the older name for "no network namespace": isolated if possible, else plain).
NETWORK_SETTINGS = ("auto", "netns", "isolated", "plain", "host")
# What a machine's processes inherit from the master's environment: nothing secret (no
# CRC_TOKEN, no VULTR_API_KEY), just what Python and shells need.
_ENV_KEEP = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "PYTHONPATH", "VIRTUAL_ENV", "TMPDIR")
_SANDBOX = (
    'set -e; mount --bind "$1" /etc/hosts; if [ -n "$2" ]; then mount --bind "$2" '
    '/srv; fi; hostname "$3"; shift 3; exec "$@"'
)


def default_root() -> Path:
    """Where machines keep their state dirs: ``$CRC_LOCAL_DIR``, else /run/crc-local as
    root (gone at reboot, like the machines), else the user's runtime dir."""
    env = os.environ.get("CRC_LOCAL_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/crc-local")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "crc-local" if runtime else Path(f"/tmp/crc-local-{os.getuid()}")


def startup_script(
    url: str, key: str, fingerprint: str | None, python: str = sys.executable
) -> str:
    """The local machines' "startup script": exec the agent with its key."""
    fp = f" --fingerprint {shlex.quote(fingerprint)}" if fingerprint else ""
    return (
        "#!/bin/sh\n# crc local machine boot: what a VM's bootstrap does, minus installing\n"
        f"CRC_KEY={shlex.quote(key)} exec {shlex.quote(python)} -m cloudremotecontrol "
        f'agent run --url {shlex.quote(url)}{fp} --state-dir "$CRC_AGENT_STATE_DIR"\n'
    )


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in ticks) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _marked() -> dict[int, str]:
    """Every live process carrying ``CRC_LOCAL_INSTANCE``, with its value."""
    out: dict[int, str] = {}
    needle = ENV_MARK.encode() + b"="
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        for item in data.split(b"\0"):
            if item.startswith(needle):
                stat = _proc_stat(int(entry.name))
                if stat and stat[0] != "Z":
                    out[int(entry.name)] = item[len(needle) :].decode(errors="replace")
                break
    return out


class LocalProvider(Provider):
    """Machines on this computer (see the module docstring). ``server_url`` is where the
    agents will connect (it decides whether namespaces can reach it); ``network`` is
    ``auto`` (the most isolated mode possible), one of the modes ``netns``, ``isolated``
    or ``plain`` (that mode, or fail), or ``host`` (the older name for: no network
    namespace, isolated if possible)."""

    name = "local"
    capabilities = Capabilities(
        features=frozenset({Feature.START, Feature.REBOOT, Feature.CONSOLE}),
        oses=frozenset({"linux"}),
        settings={"network": NETWORK_SETTINGS},
        # An address of this computer (or of its bridge) is nobody's public address.
        public_addresses=False,
        # A machine here that dies says so at once (its process is gone): look often.
        liveness_interval=2.0,
        # A create here is a local call that answers or fails: never a second machine.
        twins=False,
    )

    def __init__(
        self,
        root: Path | str | None = None,
        *,
        server_url: str | None = None,
        network: str = "auto",
    ) -> None:
        if network not in NETWORK_SETTINGS:
            raise ProviderError(
                f"unknown local network mode {network!r}: {', '.join(NETWORK_SETTINGS)}",
                provider=self.name,
            )
        self.root = Path(root) if root is not None else default_root()
        self.server_url = server_url
        self.network = network
        self._mode: tuple[str, str] | None = None
        self._route: str | None = None
        # Names on this computer (namespaces, the process mark) carry the root's scope, so
        # providers with different roots (tests, demos) never see each other's machines.
        self.scope = hashlib.sha1(str(self.root.resolve()).encode()).hexdigest()[:6]  # noqa: S324

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], *, server_url: str | None) -> LocalProvider:
        """Machines under ``$CRC_LOCAL_DIR`` (``default_root``), network as the scenario's
        ``provider.network`` says (default ``auto``)."""
        return cls(server_url=server_url, network=str(settings.get("network") or "auto"))

    def startup_script(self, spec: MachineSpec, params: BootstrapParams) -> str:
        """Not the VM bootstrap: this computer has the agent already, so the machine's
        boot just runs it with its key (``startup_script()``)."""
        return startup_script(params.url, params.key, params.fingerprint)

    def describe(self) -> str:
        return self.mode_reason

    # -- mode --------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        """``netns``, ``isolated`` or ``plain`` (see ``mode_reason`` for why)."""
        if self._mode is None:
            self._mode = self._detect()
        return self._mode[0]

    @property
    def mode_reason(self) -> str:
        _ = self.mode
        assert self._mode is not None
        return self._mode[1]

    def _detect(self) -> tuple[str, str]:
        root = os.geteuid() == 0
        has_unshare = shutil.which("unshare") is not None
        sandbox = has_unshare and (root or self._userns_works())
        can_netns = root and has_unshare and shutil.which("ip") is not None
        why_not = (
            ("needs root" if not root else "needs ip(8) and unshare(1)")
            if not can_netns
            else self._unreachable()
        )
        if self.network == "netns" and why_not:
            raise ProviderError(
                f"network: netns is not possible here: {why_not}", provider=self.name
            )
        if self.network in ("auto", "netns") and not why_not:
            return "netns", f"own network namespaces on {net.BRIDGE} ({net.NETWORK})"
        if self.network == "plain":
            if root:  # as ``create`` would refuse each machine, after the group is made
                # The scenario's setting, not the provider failing: invalid input (exit 2).
                raise InvalidInput(
                    "network: plain is refused as root: local machines would share and "
                    "edit this computer's /etc/hosts (network: isolated gives each its own)",
                    provider=self.name,
                )
            return "plain", "network: plain; plain processes"
        if self.network in ("isolated", "host"):
            reason = f"network: {self.network}"
        else:
            reason = f"no network namespaces: {why_not}"
        if sandbox:
            return "isolated", reason + "; own /etc/hosts, hostname and PID namespace"
        if self.network == "isolated":
            raise ProviderError(
                "network: isolated is not possible here: needs unshare(1) (and, as "
                "non-root, user namespaces)",
                provider=self.name,
            )
        return "plain", reason + "; unshare(1) unavailable: plain processes"

    def _userns_works(self) -> bool:
        out = subprocess.run(
            [
                "unshare",
                "--user",
                "--map-root-user",
                "--mount",
                "--pid",
                "--fork",
                "--kill-child",
                "true",
            ],
            capture_output=True,
            check=False,
        )
        return out.returncode == 0

    def _unreachable(self) -> str:
        """Why a namespace could not reach the server ('' if it can)."""
        why, self._route = net.server_route(self.server_url)
        return why

    # -- the provider interface -----------------------------------------------------------
    def create(self, scenario: str, spec: MachineSpec, startup_script: str) -> Instance:
        check_name(scenario, "scenario")
        check_name(spec.name, "machine")
        if spec.os != "linux":
            raise ProviderError("the local provider runs Linux machines only", provider=self.name)
        if self.mode == "plain" and os.geteuid() == 0:
            raise ProviderError(
                "unshare(1) (util-linux) is missing: as root, local machines "
                "would share and edit this computer's /etc/hosts",
                provider=self.name,
            )
        iid = f"{scenario}.{spec.name}"
        if self._load(iid) is not None or self._leftover(iid):
            raise ProviderError(
                f"local machine {iid} exists already: `crc down` it first",
                provider=self.name,
                code="conflict",
            )
        d = self._dir(iid)
        rec: dict[str, Any] = {
            "id": iid,
            "scenario": scenario,
            "machine": spec.name,
            "mode": self.mode,
            "tags": [scenario_tag(scenario), machine_tag(spec.name), *spec.tags],
            "labels": spec.labels,
            "created": time.time(),
            "ip": None,
            "netns": None,
            "veth": None,
            "pid": None,
            "pid_start": None,
        }
        try:
            (d / "agent").mkdir(parents=True, exist_ok=True)
            (d / "srv").mkdir(exist_ok=True)
            (d / "hosts").write_text(
                f"127.0.0.1 localhost\n::1 localhost ip6-localhost\n127.0.1.1 {spec.name}\n"
            )
            boot = d / "boot.sh"
            boot.write_text(startup_script)
            boot.chmod(0o700)
            self._save(rec)  # first, so that a crash from here on leaves something to find
        except OSError as exc:
            # No process, no namespace, no record: nothing was made (CRC_LOCAL_DIR is a
            # file, not writable, full).
            raise ProviderError(
                f"cannot make local machine {iid} in {d}: {exc.strerror or exc}",
                provider=self.name,
            ) from None
        try:
            if rec["mode"] == "netns":
                self._net_up(rec)
            self._boot(rec)
        except BaseException as exc:
            with contextlib.suppress(CrcError, OSError):
                self.destroy(iid)
            if isinstance(exc, CrcError):
                raise
            if isinstance(exc, OSError):
                raise ProviderError(
                    f"cannot start local machine {iid}: {exc}", provider=self.name
                ) from None
            raise
        return self._instance(rec)

    def get(self, instance_id: str) -> Instance | None:
        rec = self._load(instance_id)
        if rec is not None:
            return self._instance(rec)
        if self._leftover(instance_id):
            return self._leftover_instance(instance_id)
        return None

    def list(self, scenario: str) -> builtins.list[Instance]:
        ids = set()
        base = self.root / scenario
        if base.is_dir():
            ids |= {f"{scenario}.{p.parent.name}" for p in base.glob("*/instance.json")}
        ns_prefix, mark_prefix = self._ns(f"{scenario}."), self._mark(f"{scenario}.")
        ids |= {n[len(self._ns("")) :] for n in net.netns_names() if n.startswith(ns_prefix)}
        ids |= {v.split("/", 1)[1] for v in _marked().values() if v.startswith(mark_prefix)}
        out = [self.get(i) for i in sorted(ids)]
        return [i for i in out if i is not None]

    def wait_running(self, instance_id: str, timeout: float) -> Instance:
        deadline = time.monotonic() + timeout
        while True:
            inst = self.get(instance_id)
            if inst is None:
                raise ProviderError(
                    f"local machine {instance_id} does not exist", provider=self.name
                )
            if inst.ready:
                return inst
            if inst.stopped or time.monotonic() > deadline:
                raise ProviderError(
                    f"local machine {instance_id} is {inst.status}: "
                    f"{self.console_tail(instance_id)}",
                    provider=self.name,
                )
            time.sleep(0.1)

    def destroy(self, instance_id: str) -> None:
        rec = self._load(instance_id)
        self._kill_all(instance_id, rec)
        ns = self._ns(instance_id)
        if shutil.which("ip"):
            net.detach(ns, self._mark(instance_id))
        d = self._dir(instance_id)
        shutil.rmtree(d, ignore_errors=True)
        with contextlib.suppress(OSError):
            d.parent.rmdir()  # the scenario's directory, once empty
        if ns in net.netns_names() or self._leftover(instance_id):
            raise ProviderError(
                f"local machine {instance_id} could not be removed", provider=self.name
            )
        if rec is None or rec.get("netns"):
            self.release_network()

    # -- beyond the interface: power on, reboot, logs, the network --------------------
    def start(self, instance_id: str) -> Instance:
        """Power a stopped machine on again (runs its startup script, like a boot)."""
        rec = self._load(instance_id)
        if rec is None:
            raise ProviderError(f"local machine {instance_id} does not exist", provider=self.name)
        if not self._alive(rec):
            self._kill_all(instance_id, rec)
            if rec.get("netns") and rec["netns"] not in net.netns_names():
                self._net_up(rec)
            self._boot(rec)
        return self._instance(rec)

    def reboot(self, instance_id: str) -> Instance:
        """Kill every process of the machine (a power cut) and boot it again."""
        rec = self._load(instance_id)
        if rec is None:
            raise ProviderError(f"local machine {instance_id} does not exist", provider=self.name)
        self._kill_all(instance_id, rec)
        return self.start(instance_id)

    def console_tail(self, instance_id: str, chars: int = 2000) -> str:
        """The end of the machine's console (what its boot and agent printed)."""
        try:
            return (self._dir(instance_id) / "console.log").read_text(errors="replace")[-chars:]
        except OSError:
            return "(no console output)"

    def prepare_network(self) -> str | None:
        """Create the bridge now (so a server can listen on its address before any
        machine exists) and return that address; None where namespaces are impossible."""
        if (
            os.geteuid() != 0
            or not shutil.which("ip")
            or not shutil.which("unshare")
            or self.network in ("host", "isolated", "plain")
        ):
            return None
        with net.lock():
            net.ensure_bridge()
        return net.GATEWAY

    def release_network(self) -> bool:
        """Delete the bridge if no machine uses it and nothing listens on its address."""
        if os.geteuid() != 0 or not shutil.which("ip"):
            return False
        return net.release_bridge()

    # -- records ---------------------------------------------------------------------------
    def _dir(self, iid: str) -> Path:
        scenario, _, machine = iid.partition(".")
        return self.root / scenario / machine

    def _load(self, iid: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads((self._dir(iid) / "instance.json").read_text()))
        except (OSError, ValueError):
            return None

    def _save(self, rec: dict[str, Any]) -> None:
        path = self._dir(rec["id"]) / "instance.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rec, indent=1))
        os.replace(tmp, path)

    def _alive(self, rec: dict[str, Any]) -> bool:
        pid = rec.get("pid")
        if not pid:
            return False
        _reap(pid)
        stat = _proc_stat(pid)
        return stat is not None and stat[0] != "Z" and stat[1] == rec.get("pid_start")

    def _instance(self, rec: dict[str, Any]) -> Instance:
        alive = self._alive(rec)
        ip = rec.get("ip") or "127.0.0.1"
        return Instance(
            id=rec["id"],
            name=rec["machine"],
            label=instance_label(rec["scenario"], rec["machine"]),
            status="running" if alive else "stopped",
            ready=alive,
            main_ip=ip,
            private_ip=rec.get("ip"),
            tags=tuple(rec.get("tags") or ()),
            stopped=not alive,
        )

    def _ns(self, iid: str) -> str:
        return f"{net.NS_PREFIX}{self.scope}-{iid}"

    def _mark(self, iid: str) -> str:
        return f"{self.scope}/{iid}"

    def _leftover(self, iid: str) -> bool:
        return self._ns(iid) in net.netns_names() or self._mark(iid) in _marked().values()

    def _leftover_instance(self, iid: str) -> Instance:
        scenario, _, machine = iid.partition(".")
        return Instance(
            id=iid,
            name=machine,
            label=instance_label(scenario, machine),
            status="leftover",
            ready=False,
            tags=(scenario_tag(scenario), machine_tag(machine)),
            stopped=True,
            leftover=True,
        )

    # -- processes -------------------------------------------------------------------------
    def _boot(self, rec: dict[str, Any]) -> None:
        d = self._dir(rec["id"])
        inner = ["sh", str(d / "boot.sh")]
        if rec["mode"] in ("netns", "isolated"):
            srv = (
                str(d / "srv")
                if Path("/srv").is_dir() and not str(self.root.resolve()).startswith("/srv/")
                else ""
            )
            sandbox = [
                "unshare",
                "--mount",
                "--uts",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "--propagation",
                "private",
            ]
            if os.geteuid() != 0:
                sandbox[1:1] = ["--user", "--map-root-user"]
            inner = [
                *sandbox,
                "sh",
                "-c",
                _SANDBOX,
                "crc-boot",
                str(d / "hosts"),
                srv,
                rec["machine"],
                *inner,
            ]
        if rec.get("netns"):
            inner = ["ip", "netns", "exec", rec["netns"], *inner]
        env = {k: v for k, v in os.environ.items() if k in _ENV_KEEP or k.startswith("LC_")}
        env.update(
            {
                ENV_MARK: self._mark(rec["id"]),
                "CRC_AGENT_STATE_DIR": str(d / "agent"),
                "CRC_MACHINE_DIR": str(d),
                "PATH": os.pathsep.join(
                    [os.path.dirname(sys.executable), env.get("PATH", "/usr/bin:/bin")]
                ),
            }
        )
        log = str(d / "console.log")
        pid = os.posix_spawnp(
            inner[0],
            inner,
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,
        )
        stat = _proc_stat(pid)
        rec.update(pid=pid, pid_start=stat[1] if stat else None, booted=time.time())
        self._save(rec)

    def _kill_all(self, iid: str, rec: dict[str, Any] | None, timeout: float = 15.0) -> None:
        """SIGKILL every process of the machine and wait until none is left."""
        ns = self._ns(iid)
        deadline = time.monotonic() + timeout
        while True:
            pids = set()
            if rec is not None and self._alive(rec):
                pids.add(int(rec["pid"]))
            if ns in net.netns_names():
                out = net.run("ip", "netns", "pids", ns, check=False).stdout.split()
                pids |= {int(p) for p in out if p.isdigit()}
            pids |= {p for p, v in _marked().items() if v == self._mark(iid)}
            pids.discard(os.getpid())
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                _reap(pid)
            if time.monotonic() > deadline:
                raise ProviderError(
                    f"processes of local machine {iid} survive SIGKILL: {sorted(pids)}",
                    provider=self.name,
                )
            time.sleep(0.05)

    def _net_up(self, rec: dict[str, Any]) -> None:
        def created(ns: str, veth: str, ip: str) -> None:
            rec.update(netns=ns, veth=veth, ip=ip)
            self._save(rec)

        net.attach(self._ns(rec["id"]), self._mark(rec["id"]), rec.get("ip"), self._route, created)
