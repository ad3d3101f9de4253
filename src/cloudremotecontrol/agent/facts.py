"""What a machine reports about itself: host name, OS, architecture, addresses, boot id.

Standard library only, on every OS the agent runs on. Every probe is best effort: a
missing command, an unreadable ``/proc`` file or a resolver error gives fewer facts,
never an exception, because facts are informative and the agent must keep running.

Where the addresses come from, in order of preference:

* Linux: ``ip -j addr`` (iproute2 >= 4.13), else ``/proc/net/fib_trie`` (IPv4) plus
  ``/proc/net/if_inet6`` (IPv6) for minimal images without iproute2 or with busybox.
* Everywhere, when those gave nothing (Windows, macOS, a Linux without ``/proc``):
  ``getaddrinfo(gethostname())``, which Windows answers with every interface address.
  ``ipconfig`` output is localised and shifts between versions, so it is not parsed.
* Everywhere: the source address the kernel picks for the default route (a UDP
  ``connect`` sends no packet), listed first so the primary address leads the list.

Loopback, link-local, multicast and unspecified addresses are left out: a peer can do
nothing with them (a link-local IPv6 address needs a zone only the owner knows).

``platform.platform()``, ``platform.uname()`` and the helpers built on them
(``platform.machine()``, ``platform.release()``, ``platform.system()``) are not used: on
Windows they query WMI, which crashes or hangs under Wine and is slow on real Windows.
"""

from __future__ import annotations

import contextlib
import importlib
import ipaddress
import json
import logging
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ..protocol.limits import MAX_FACT_ADDRESSES

__all__ = [
    "classify",
    "collect_facts",
    "facts_changed",
    "interface_addresses",
    "normalise_arch",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Sizes are bounded (docs/reference.md, "Limits"): a host with hundreds of addresses
# reports the first ones (as many as the server takes: protocol/messages.py, Facts).
MAX_IPS = MAX_FACT_ADDRESSES
# `ip` answers in milliseconds; a hung one (a broken netlink) must not stall the agent.
IP_COMMAND_TIMEOUT = 2.0

_BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
_FIB_TRIE_PATH = "/proc/net/fib_trie"
_IF_INET6_PATH = "/proc/net/if_inet6"

# RFC 1918, RFC 6598 (carrier-grade NAT, also used by some clouds' VPCs), RFC 4193.
_PRIVATE_NETS = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)

# Bridges and veths of container and VM runtimes: real addresses, but only reachable from
# this host, so they go to the end of the list (peers take the first usable address).
_LOCAL_ONLY_IFACE = re.compile(
    r"docker\d|br-[0-9a-f]{12}$|veth|virbr|cni|podman|lxcbr|lxdbr|flannel|cali|vxlan"
)

# /proc/net/if_inet6 flags (linux/if_addr.h): temporary (privacy) addresses rotate and
# would make the facts change every day; deprecated and DAD-failed ones are unusable.
_IFA_F_TEMPORARY, _IFA_F_DADFAILED, _IFA_F_DEPRECATED = 0x01, 0x08, 0x20
_SKIPPED_V6_FLAGS = ("temporary", "deprecated", "dadfailed")  # same, as `ip -j` names them

_ARCH = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "x64": "x86_64",
    "em64t": "x86_64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv8": "arm64",
    "armv8l": "arm64",
    "i386": "x86",
    "i486": "x86",
    "i586": "x86",
    "i686": "x86",
    "x86": "x86",
}

# Addresses used only to ask the routing table which source address it would pick:
# documentation ranges (RFC 5737, RFC 3849), and a UDP connect sends nothing anyway.
_ROUTE_PROBES = ((socket.AF_INET, "203.0.113.1"), (socket.AF_INET6, "2001:db8::1"))


def collect_facts(agent_version: str, boot_id: str | None = None) -> dict[str, Any]:
    """Return this machine's facts as a JSON-ready dict (strings, lists, None).

    Keys: ``hostname``, ``os`` (``linux``, ``windows``, ``macos``, ...), ``os_release``,
    ``arch`` (``x86_64``, ``arm64``, ...), ``ips`` (primary first), ``private_ips``,
    ``public_ips``, ``agent_version``, ``boot_id``, ``python``. A fact that cannot be
    found is None (or an empty list); this function does not raise.

    Pass ``boot_id`` to report a known value instead of detecting it. This blocks for up
    to a few seconds (a subprocess, maybe a name lookup): call it from a worker thread
    (``asyncio.to_thread``) in async code, and send the result only if
    :func:`facts_changed` says so.
    """
    ips: list[str] = _best_effort("addresses", interface_addresses, [])
    private_ips, public_ips = classify(ips)
    return {
        "hostname": _best_effort("hostname", socket.gethostname, None),
        "os": _os_name(),
        "os_release": _best_effort("os release", _os_release, None),
        "arch": _best_effort("architecture", _arch, None),
        "ips": ips,
        "private_ips": private_ips,
        "public_ips": public_ips,
        "agent_version": agent_version,
        "boot_id": boot_id if boot_id is not None else _best_effort("boot id", _boot_id, None),
        "python": "{}.{}.{}".format(*sys.version_info[:3]),
    }


def facts_changed(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether ``new`` differs from the facts last sent (``old``; None if never sent).

    ``old`` usually comes back from JSON, so ``new`` is compared in its JSON form: a
    tuple and a list with the same items are the same fact.
    """
    if old is None:
        return True
    return bool(json.loads(json.dumps(new)) != old)


def classify(ips: Iterable[str]) -> tuple[list[str], list[str]]:
    """Split addresses into ``(private, public)``, keeping their order.

    Private: RFC 1918, RFC 6598 (100.64/10) and RFC 4193 (fc00::/7) ranges. Public:
    globally routable (``ipaddress``'s ``is_global``). Anything else (loopback,
    link-local, documentation ranges) and anything that is not an address is in neither.
    """
    private: list[str] = []
    public: list[str] = []
    for text in ips:
        addr = _parse(text)
        if addr is None:
            continue
        if any(addr in net for net in _PRIVATE_NETS):
            private.append(text)
        elif addr.is_global:
            public.append(text)
    return private, public


def interface_addresses() -> list[str]:
    """Usable IPv4 and IPv6 addresses of this machine's interfaces, primary first.

    Loopback, link-local, multicast and unspecified addresses are left out; addresses of
    container and VM bridges come last; at most :data:`MAX_IPS`. Returns ``[]`` rather
    than raising when nothing can be found.
    """
    found: list[tuple[str, str]] = []
    if sys.platform.startswith("linux"):
        found = _best_effort("ip command", _from_ip_command, []) or _best_effort(
            "/proc/net", _from_proc, []
        )
    if not found:
        found = _best_effort("getaddrinfo", _from_getaddrinfo, [])
    primary: list[str] = _best_effort("default route", _primary_addresses, [])
    return _ordered(primary, found)


def normalise_arch(machine: str) -> str:
    """``AMD64``/``x64`` -> ``x86_64``, ``aarch64`` -> ``arm64``, ``i686`` -> ``x86``;
    anything else lowercased as it is (``armv7l``, ``riscv64``, ``s390x``)."""
    key = machine.strip().lower()
    return _ARCH.get(key, key)


# -- address sources ----------------------------------------------------------------------


def _from_ip_command() -> list[tuple[str, str]]:
    ip = shutil.which("ip")
    if ip is None:
        return []
    proc = subprocess.run(
        [ip, "-j", "addr", "show"],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=IP_COMMAND_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:  # busybox and iproute2 < 4.13 have no -j
        return []
    return _parse_ip_json(proc.stdout)


def _parse_ip_json(data: bytes | str) -> list[tuple[str, str]]:
    """``(interface, address)`` pairs from ``ip -j addr`` output; [] if it is not that."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return []
    out: list[tuple[str, str]] = []
    for iface in doc if isinstance(doc, list) else []:
        if not isinstance(iface, dict) or not isinstance(iface.get("addr_info"), list):
            continue
        name = iface.get("ifname")
        for info in iface["addr_info"]:
            if not isinstance(info, dict) or not isinstance(info.get("local"), str):
                continue  # "local", not "address": on point-to-point links that is the peer
            if info.get("family") == "inet6" and any(info.get(f) for f in _SKIPPED_V6_FLAGS):
                continue
            out.append((name if isinstance(name, str) else "", info["local"]))
    return out


def _from_proc() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for path, parse in ((_FIB_TRIE_PATH, _parse_fib_trie), (_IF_INET6_PATH, _parse_if_inet6)):
        try:
            with open(path, encoding="ascii", errors="replace") as fh:
                out.extend(parse(fh.read()))
        except OSError:
            continue  # no IPv6 in this kernel, or /proc not mounted: the other still counts
    return out


def _parse_fib_trie(text: str) -> list[tuple[str, str]]:
    """Local IPv4 addresses from ``/proc/net/fib_trie``: the ``|-- ADDR`` leaves followed
    by a ``/32 host LOCAL`` line. The file has no interface names."""
    out: list[tuple[str, str]] = []
    leaf: str | None = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("|-- "):
            leaf = line[4:].strip()
        elif line.startswith("+--"):
            leaf = None
        elif leaf is not None and line == "/32 host LOCAL":
            if ("", leaf) not in out:  # the Main and Local tables list each address
                out.append(("", leaf))
    return out


def _parse_if_inet6(text: str) -> list[tuple[str, str]]:
    """``(interface, address)`` from ``/proc/net/if_inet6`` (hex address, index, prefix
    length, scope, flags, name per line)."""
    out: list[tuple[str, str]] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6 or len(fields[0]) != 32:
            continue
        try:
            raw = bytes.fromhex(fields[0])
            flags = int(fields[4], 16)
        except ValueError:
            continue
        if flags & (_IFA_F_TEMPORARY | _IFA_F_DADFAILED | _IFA_F_DEPRECATED):
            continue
        out.append((fields[5], str(ipaddress.IPv6Address(raw))))
    return out


def _from_getaddrinfo() -> list[tuple[str, str]]:
    infos = socket.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_STREAM)
    return [("", str(info[4][0])) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]


def _primary_addresses() -> list[str]:
    """The source addresses of the default IPv4 and IPv6 routes, if there are such."""
    out: list[str] = []
    for family, probe in _ROUTE_PROBES:
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((probe, 9))
            out.append(str(sock.getsockname()[0]))
    return out


def _ordered(primary: list[str], found: list[tuple[str, str]]) -> list[str]:
    """Usable, canonical, unique addresses: primary, then by interface, bridges last."""
    ranked = [(0, ip) for ip in primary]
    ranked += [(2 if _LOCAL_ONLY_IFACE.match(name) else 1, ip) for name, ip in found]
    out: list[str] = []
    for _, text in sorted(ranked, key=lambda r: r[0]):  # stable: keeps interface order
        addr = _parse(text)
        if (
            addr is None
            or addr.is_loopback
            or addr.is_link_local
            or addr.is_multicast
            or addr.is_unspecified
        ):
            continue
        if str(addr) not in out:
            out.append(str(addr))
    return out[:MAX_IPS]


def _parse(text: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not isinstance(text, str):
        return None
    try:
        # A scope ("fe80::1%eth0") only matters on this machine: drop it.
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return None  # ::ffff:a.b.c.d is a socket-API artefact, not an interface address
    return addr


# -- the OS ---------------------------------------------------------------------------------


def _is_windows() -> bool:
    return sys.platform in ("win32", "cygwin")


def _os_name() -> str:
    if sys.platform.startswith("linux"):
        return "linux"
    if _is_windows():
        return "windows"
    if sys.platform == "darwin":
        return "macos"
    return sys.platform.rstrip("0123456789") or sys.platform  # freebsd14 -> freebsd


def _os_release() -> str | None:
    if sys.platform.startswith("linux"):
        try:
            info = platform.freedesktop_os_release()  # /etc/os-release, /usr/lib/os-release
        except OSError:
            info = {}
        pretty = info.get("PRETTY_NAME") or " ".join(
            v for v in (info.get("NAME"), info.get("VERSION_ID")) if v
        )
        return pretty or f"Linux {os.uname().release}"
    if sys.platform == "win32":
        return _windows_release()
    if sys.platform == "darwin":
        release = platform.mac_ver()[0]  # reads a plist; no subprocess
        if release:
            return f"macOS {release}"
    uname = os.uname()
    return f"{uname.sysname} {uname.release}"


def _windows_release() -> str:
    """``Windows Server 2022 Datacenter (build 20348)``, from the registry.

    The build is added because Windows 11 still calls itself "Windows 10" there.
    """
    version = getattr(sys, "getwindowsversion")()  # noqa: B009 -- absent off Windows
    fallback = f"Windows {version.major}.{version.minor}.{version.build}"
    try:
        winreg = importlib.import_module("winreg")
        with winreg.OpenKey(
            winreg.HKEY_LOCAL_MACHINE, r"SOFTWARE\Microsoft\Windows NT\CurrentVersion"
        ) as key:
            product = winreg.QueryValueEx(key, "ProductName")[0]
    except (ImportError, OSError):
        return fallback
    return (
        f"{product} (build {version.build})" if isinstance(product, str) and product else fallback
    )


def _arch() -> str | None:
    if sys.platform == "win32":
        # The OS's architecture, not this Python's: a 32-bit Python on 64-bit Windows
        # sees PROCESSOR_ARCHITECTURE=x86 and the truth in PROCESSOR_ARCHITEW6432.
        machine = (
            os.environ.get("PROCESSOR_ARCHITEW6432")
            or os.environ.get("PROCESSOR_ARCHITECTURE")
            or ""
        )
    else:
        machine = os.uname().machine
    return normalise_arch(machine) or None


def _boot_id() -> str | None:
    if sys.platform.startswith("linux"):
        with open(_BOOT_ID_PATH, encoding="ascii") as fh:
            return fh.read().strip() or None
    if sys.platform == "win32":
        return _windows_boot_id()
    return None


def _windows_boot_id() -> str | None:
    """A UUID derived from the kernel's boot time, the same for the whole boot.

    ``now - uptime`` would drift by milliseconds between calls and jump when the clock
    is set (NTP right after a VM boots). NtQuerySystemInformation(SystemTimeOfDay)
    gives the kernel's own KeBootTime, which Windows shifts by every clock change, and
    KeBootTimeBias, the sum of those shifts: their difference never changes until the
    next boot. Wine implements the call too.
    """
    import ctypes

    class TimeOfDay(ctypes.Structure):
        _fields_ = [
            ("boot_time", ctypes.c_int64),
            ("current_time", ctypes.c_int64),
            ("time_zone_bias", ctypes.c_int64),
            ("time_zone_id", ctypes.c_uint32),
            ("reserved", ctypes.c_uint32),
            ("boot_time_bias", ctypes.c_int64),
            ("sleep_time_bias", ctypes.c_uint64),
        ]

    info = TimeOfDay()
    returned = ctypes.c_ulong(0)
    ntdll = getattr(ctypes, "WinDLL")("ntdll")  # noqa: B009 -- absent off Windows
    status = ntdll.NtQuerySystemInformation(
        3, ctypes.byref(info), ctypes.sizeof(info), ctypes.byref(returned)
    )
    if status != 0 or info.boot_time <= 0:
        return None
    # Older kernels return a shorter structure without the bias (then nothing to undo).
    # The bias is signed in effect (clocks are set back too), hence c_int64.
    bias = info.boot_time_bias if returned.value >= TimeOfDay.boot_time_bias.offset + 8 else 0
    boot = info.boot_time - bias
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"cloudremotecontrol.windows.boot.{boot}"))


def _best_effort(what: str, probe: Callable[[], T], default: T) -> T:
    """``probe()``, or ``default`` if it fails in any way (logged at debug level)."""
    try:
        return probe()
    except Exception as exc:  # noqa: BLE001 -- a fact is never worth stopping the agent
        log.debug("facts: %s unavailable: %r", what, exc)
        return default
