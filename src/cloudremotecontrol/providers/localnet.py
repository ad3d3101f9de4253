"""The local provider's network: one bridge, one namespace and veth per machine.

    crc0 10.213.0.1/16 ─┬─ veth crc<hash> ── netns crc-<scope>-lab.web    eth0 10.213.x.y
    (this computer)     └─ veth crc<hash> ── netns crc-<scope>-lab.mysql  eth0 10.213.z.w

Namespaces get no default route: they reach each other and this computer's bridge
address (plus, if the server listens on another local address, a /32 route to it) and
nothing else. ``ip_forward`` and NAT are never touched. Changes to the bridge and the
address plan happen under one lock file, so concurrent ``crc up`` runs do not collide.
Everything here needs root and ``ip(8)``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

from ..errors import ProviderError

__all__ = [
    "BRIDGE",
    "GATEWAY",
    "NETWORK",
    "NS_PREFIX",
    "attach",
    "detach",
    "ensure_bridge",
    "lock",
    "netns_names",
    "release_bridge",
    "run",
    "server_route",
    "veth_name",
]

NETWORK = ipaddress.ip_network("10.213.0.0/16")
GATEWAY = "10.213.0.1"
BRIDGE = "crc0"
NS_PREFIX = "crc-"
_LOCK = "/run/crc-local-net.lock"


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and out.returncode != 0:
        raise ProviderError(
            f"`{' '.join(argv)}` failed: {out.stderr.strip() or out.returncode}", provider="local"
        )
    return out


def veth_name(key: str) -> str:
    """The host side of a machine's veth (interface names are at most 15 bytes)."""
    return "crc" + hashlib.sha1(key.encode()).hexdigest()[:10]  # noqa: S324 -- a name


def netns_names() -> set[str]:
    try:
        return {n for n in os.listdir("/run/netns") if n.startswith(NS_PREFIX)}
    except OSError:
        return set()


@contextlib.contextmanager
def lock() -> Iterator[None]:
    with open(_LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def server_route(url: str | None) -> tuple[str, str | None]:
    """``(why a namespace cannot reach url, or '', the /32 route it needs or None)``."""
    if not url:
        return "", None
    host = urlsplit(url).hostname or ""
    try:
        addr = ipaddress.ip_address(socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0])
    except (OSError, IndexError, ValueError):
        return f"cannot resolve the server address {host!r}", None
    if addr in NETWORK:
        return "", None
    if addr.is_loopback:
        return (
            f"the server listens on loopback ({addr}), which a namespace cannot reach: "
            f"run it with --listen {GATEWAY}:PORT"
        ), None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((str(addr), 0))  # succeeds only for an address of this computer
        except OSError:
            return f"the server ({addr}) is not on this computer", None
    return "", str(addr)


def ensure_bridge() -> None:
    """Create ``crc0`` with the gateway address if needed (call under ``lock()``)."""
    if run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        run("ip", "link", "add", BRIDGE, "type", "bridge")
    addrs = run("ip", "-o", "-4", "addr", "show", "dev", BRIDGE).stdout
    if f" {GATEWAY}/" not in addrs:
        run("ip", "addr", "add", f"{GATEWAY}/{NETWORK.prefixlen}", "dev", BRIDGE)
    run("ip", "link", "set", BRIDGE, "up")


def _allocate(key: str, wanted: str | None) -> str:
    used = {GATEWAY}
    for ns in netns_names():
        out = run("ip", "-n", ns, "-o", "-4", "addr", "show", check=False).stdout
        used |= {w.split("/")[0] for w in out.split() if w.startswith("10.213.")}
    if wanted and wanted not in used:
        return wanted
    hosts = NETWORK.num_addresses - 2
    start = int(hashlib.sha1(key.encode()).hexdigest(), 16) % hosts  # noqa: S324
    for i in range(hosts):
        ip = str(NETWORK.network_address + 1 + (start + i) % hosts)
        if ip not in used:
            return ip
    raise ProviderError(f"no free address left in {NETWORK}", provider="local")


def attach(
    ns: str,
    key: str,
    wanted_ip: str | None,
    route: str | None,
    created: Callable[[str, str, str], None] | None = None,
) -> tuple[str, str, str]:
    """Make namespace ``ns`` with a veth (named from ``key``) into the bridge; return
    (netns, veth, ip).

    ``created(netns, veth, ip)`` is called as soon as the namespace exists, so the caller
    can record it before anything else can fail.
    """
    veth = veth_name(key)
    peer = "crp" + veth[3:]
    with lock():
        ensure_bridge()
        ip = _allocate(key, wanted_ip)
        run("ip", "netns", "add", ns)
        if created is not None:
            created(ns, veth, ip)
        run("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
        run("ip", "link", "set", peer, "netns", ns)
        run("ip", "link", "set", veth, "master", BRIDGE, "up")
        run("ip", "-n", ns, "link", "set", peer, "name", "eth0")
        run("ip", "-n", ns, "addr", "add", f"{ip}/{NETWORK.prefixlen}", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        if route:
            run("ip", "-n", ns, "route", "add", f"{route}/32", "via", GATEWAY)
    return ns, veth, ip


def detach(ns: str, key: str) -> None:
    """Delete a machine's veth and namespace (its processes must be gone)."""
    run("ip", "link", "del", veth_name(key), check=False)
    if ns in netns_names():
        run("ip", "netns", "del", ns)


def release_bridge() -> bool:
    """Delete the bridge if no machine uses it and nothing listens on its address."""
    with lock():
        if run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
            return False
        ports = run("ip", "-o", "link", "show", "master", BRIDGE, check=False).stdout
        if ports.strip() or _listening_on(GATEWAY):
            return False
        run("ip", "link", "del", BRIDGE, check=False)
        return True


def _listening_on(ip: str) -> bool:
    """Whether a TCP socket listens on ``ip`` (from /proc/net/tcp, state 0A)."""
    want = "".join(f"{int(b):02X}" for b in reversed(ip.split(".")))
    try:
        with open("/proc/net/tcp") as fh:
            next(fh)
            return any(
                line.split()[1].startswith(want + ":") and line.split()[3] == "0A" for line in fh
            )
    except (OSError, StopIteration, IndexError):
        return False
