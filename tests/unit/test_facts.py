"""Facts a machine reports: real values on this Linux machine, every fallback, no raising."""

from __future__ import annotations

import ctypes
import ipaddress
import json
import platform
import socket
import subprocess
import sys
import types

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloudremotecontrol.agent import facts
from cloudremotecontrol.agent.facts import (
    classify,
    collect_facts,
    facts_changed,
    interface_addresses,
    normalise_arch,
)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux facts")

IP_JSON = json.dumps(
    [
        {
            "ifindex": 1,
            "ifname": "lo",
            "addr_info": [
                {"family": "inet", "local": "127.0.0.1", "scope": "host"},
                {"family": "inet6", "local": "::1", "scope": "host"},
            ],
        },
        {
            "ifindex": 3,
            "ifname": "docker0",
            "addr_info": [{"family": "inet", "local": "172.17.0.1", "scope": "global"}],
        },
        {
            "ifindex": 2,
            "ifname": "eth0",
            "addr_info": [
                {"family": "inet", "local": "203.0.113.7", "scope": "global"},
                {"family": "inet6", "local": "2001:db8::7", "scope": "global", "temporary": True},
                {"family": "inet6", "local": "2a01:4f8::7", "scope": "global", "mngtmpaddr": True},
                {"family": "inet6", "local": "fe80::1", "scope": "link"},
            ],
        },
        {
            "ifindex": 4,
            "ifname": "wg0",
            "addr_info": [
                {"family": "inet", "local": "10.8.0.2", "address": "10.8.0.1", "scope": "global"}
            ],
        },
        {"ifindex": 5, "ifname": "eth1", "addr_info": []},
    ]
).encode()

FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 10.0.0.0/24 2 0 2
           |-- 10.0.0.0
              /24 link UNICAST
           |-- 10.0.0.5
              /32 host LOCAL
        |-- 10.0.0.255
           /32 link BROADCAST
Local:
     +-- 10.0.0.0/24 2 0 2
           |-- 10.0.0.5
              /32 host LOCAL
"""

IF_INET6 = """\
00000000000000000000000000000001 01 80 10 80       lo
fd000000000000000000000000000002 04 40 00 80     eth0
2a0104f8000000000000000000000007 04 40 00 01     eth0
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
garbage line
"""


def _no_ip_command(monkeypatch):
    monkeypatch.setattr(facts.shutil, "which", lambda *a, **k: None)


def _fake_ip_command(monkeypatch, stdout=IP_JSON, returncode=0):
    monkeypatch.setattr(facts.shutil, "which", lambda name, *a, **k: f"/usr/sbin/{name}")

    def run(argv, **kwargs):
        assert argv[1:] == ["-j", "addr", "show"] and kwargs["timeout"] > 0
        return subprocess.CompletedProcess(argv, returncode, stdout, b"")

    monkeypatch.setattr(facts.subprocess, "run", run)


# -- this machine -----------------------------------------------------------------------


def test_facts_are_json_and_have_every_key():
    got = collect_facts("1.2.3")
    assert set(got) == {
        "hostname",
        "os",
        "os_release",
        "arch",
        "ips",
        "private_ips",
        "public_ips",
        "agent_version",
        "boot_id",
        "python",
    }
    assert json.loads(json.dumps(got)) == got
    assert got["agent_version"] == "1.2.3"
    assert got["python"] == platform.python_version()


def test_hostname_is_the_one_the_os_reports():
    assert collect_facts("1")["hostname"] == socket.gethostname()


@linux_only
def test_linux_os_release_arch_and_boot_id():
    got = collect_facts("1")
    assert got["os"] == "linux"
    assert got["os_release"]
    assert got["arch"] == normalise_arch(platform.machine())
    with open("/proc/sys/kernel/random/boot_id") as fh:
        assert got["boot_id"] == fh.read().strip()


def test_boot_id_given_by_the_caller_is_reported():
    assert collect_facts("1", boot_id="given")["boot_id"] == "given"


def test_loopback_and_link_local_are_never_listed():
    got = collect_facts("1")
    for text in got["ips"]:
        addr = ipaddress.ip_address(text)
        assert not (addr.is_loopback or addr.is_link_local or addr.is_multicast)
    assert set(got["private_ips"]) | set(got["public_ips"]) <= set(got["ips"])


def test_platform_uname_family_is_never_called(monkeypatch):
    """platform.platform() and friends query WMI on Windows, which crashes under Wine."""

    def boom(*args, **kwargs):
        raise AssertionError("platform.uname family called")

    for name in (
        "platform",
        "uname",
        "machine",
        "release",
        "system",
        "version",
        "win32_ver",
        "processor",
        "node",
    ):
        monkeypatch.setattr(platform, name, boom)
    got = collect_facts("1")
    assert got["hostname"] and got["arch"] and got["os_release"]


# -- address sources and fallbacks -----------------------------------------------------


@linux_only
def test_without_ip_command_proc_gives_the_same_addresses(monkeypatch):
    with_ip = set(interface_addresses())
    _no_ip_command(monkeypatch)
    assert set(interface_addresses()) == with_ip


@linux_only
def test_ip_command_timeout_or_failure_falls_back_to_proc(monkeypatch):
    _no_ip_command(monkeypatch)
    from_proc = interface_addresses()
    monkeypatch.setattr(facts.shutil, "which", lambda *a, **k: "/usr/sbin/ip")

    def hang(argv, **kwargs):
        raise subprocess.TimeoutExpired(argv, kwargs["timeout"])

    monkeypatch.setattr(facts.subprocess, "run", hang)
    assert interface_addresses() == from_proc
    _fake_ip_command(monkeypatch, stdout=b'Option "-j" is unknown', returncode=255)
    assert interface_addresses() == from_proc


@linux_only
def test_ip_command_output_primary_first_bridges_last(monkeypatch):
    _fake_ip_command(monkeypatch)
    monkeypatch.setattr(facts, "_primary_addresses", lambda: ["10.8.0.2"])
    assert interface_addresses() == ["10.8.0.2", "203.0.113.7", "2a01:4f8::7", "172.17.0.1"]


@linux_only
def test_proc_files_are_used_without_ip_command(monkeypatch, tmp_path):
    (tmp_path / "fib_trie").write_text(FIB_TRIE)
    (tmp_path / "if_inet6").write_text(IF_INET6)
    _no_ip_command(monkeypatch)
    monkeypatch.setattr(facts, "_FIB_TRIE_PATH", str(tmp_path / "fib_trie"))
    monkeypatch.setattr(facts, "_IF_INET6_PATH", str(tmp_path / "if_inet6"))
    monkeypatch.setattr(facts, "_primary_addresses", lambda: [])
    assert interface_addresses() == ["10.0.0.5", "fd00::2"]  # temporary 2a01:... skipped


def test_getaddrinfo_is_the_last_resort(monkeypatch, tmp_path):
    _no_ip_command(monkeypatch)
    monkeypatch.setattr(facts, "_FIB_TRIE_PATH", str(tmp_path / "missing"))
    monkeypatch.setattr(facts, "_IF_INET6_PATH", str(tmp_path / "missing"))
    monkeypatch.setattr(facts, "_primary_addresses", lambda: [])
    tcp = socket.SOCK_STREAM
    monkeypatch.setattr(
        facts.socket,
        "getaddrinfo",
        lambda host, *a, **k: [
            (socket.AF_INET, tcp, 6, "", ("127.0.1.1", 0)),
            (socket.AF_INET, tcp, 6, "", ("10.1.2.3", 0)),
            (socket.AF_INET6, tcp, 6, "", ("fe80::1%eth0", 0, 0, 2)),
            (socket.AF_INET6, tcp, 6, "", ("2a01:4f8::9", 0, 0, 0)),
        ],
    )
    assert interface_addresses() == ["10.1.2.3", "2a01:4f8::9"]


def test_every_probe_failing_gives_fewer_facts_not_an_exception(monkeypatch, tmp_path):
    def fail(*args, **kwargs):
        raise OSError("no")

    _no_ip_command(monkeypatch)
    for name in ("_FIB_TRIE_PATH", "_IF_INET6_PATH", "_BOOT_ID_PATH"):
        monkeypatch.setattr(facts, name, str(tmp_path / "missing"))
    monkeypatch.setattr(facts.socket, "gethostname", fail)
    monkeypatch.setattr(facts.socket, "getaddrinfo", fail)
    monkeypatch.setattr(facts.socket, "socket", fail)
    monkeypatch.setattr(facts.platform, "freedesktop_os_release", fail)
    monkeypatch.setattr(facts.os, "uname", fail)
    got = collect_facts("1")
    assert got["ips"] == got["private_ips"] == got["public_ips"] == []
    assert got["hostname"] is None and got["arch"] is None
    assert got["agent_version"] == "1" and got["os"]
    if sys.platform.startswith("linux"):
        assert got["boot_id"] is None and got["os_release"] is None


def test_more_addresses_than_the_cap_are_cut(monkeypatch):
    many = [("eth0", f"10.0.{i // 250}.{i % 250 + 1}") for i in range(facts.MAX_IPS + 10)]
    assert facts._ordered([], many) == [ip for _, ip in many[: facts.MAX_IPS]]


# -- Windows, simulated --------------------------------------------------------------------


class _FakeNtdll:
    def __init__(self, boot_time: int, bias: int) -> None:
        self.boot_time, self.bias = boot_time, bias

    def NtQuerySystemInformation(self, cls, info_ref, size, returned_ref):
        assert cls == 3 and size == 48  # SystemTimeOfDayInformation
        info_ref._obj.boot_time = self.boot_time
        info_ref._obj.boot_time_bias = self.bias
        returned_ref._obj.value = 48
        return 0


def _fake_windows(monkeypatch, boot_time=133_000_000_000_000_000, bias=0):
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(
        sys,
        "getwindowsversion",
        lambda: types.SimpleNamespace(major=10, minor=0, build=20348),
        raising=False,
    )

    class Key:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    winreg = types.ModuleType("winreg")
    winreg.HKEY_LOCAL_MACHINE = 0x80000002
    winreg.OpenKey = lambda root, path: Key()
    winreg.QueryValueEx = lambda key, name: ("Windows Server 2022 Datacenter", 1)
    monkeypatch.setitem(sys.modules, "winreg", winreg)
    monkeypatch.setattr(ctypes, "WinDLL", lambda name: _FakeNtdll(boot_time, bias), raising=False)
    monkeypatch.setenv("PROCESSOR_ARCHITECTURE", "x86")  # a 32-bit Python ...
    monkeypatch.setenv("PROCESSOR_ARCHITEW6432", "AMD64")  # ... on 64-bit Windows
    monkeypatch.setattr(
        facts.socket,
        "getaddrinfo",
        lambda host, *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.96.3", 0))],
    )
    monkeypatch.setattr(facts, "_primary_addresses", lambda: ["45.76.1.2"])


def test_windows_facts_without_wmi(monkeypatch):
    """The Windows code path, run here with fakes for the registry, ntdll and resolver."""
    _fake_windows(monkeypatch)
    got = collect_facts("1")
    assert got["os"] == "windows"
    assert got["os_release"] == "Windows Server 2022 Datacenter (build 20348)"
    assert got["arch"] == "x86_64"
    assert got["ips"] == ["45.76.1.2", "10.1.96.3"]
    assert got["private_ips"] == ["10.1.96.3"] and got["public_ips"] == ["45.76.1.2"]
    assert got["boot_id"] and len(got["boot_id"]) == 36


def test_windows_boot_id_survives_clock_changes_and_changes_on_reboot(monkeypatch):
    boot = 133_000_000_000_000_000
    _fake_windows(monkeypatch, boot, 0)
    first = collect_facts("1")["boot_id"]
    # The clock was set forward by 5 minutes: Windows moves KeBootTime and its bias.
    shift = 5 * 60 * 10_000_000
    _fake_windows(monkeypatch, boot + shift, shift)
    assert collect_facts("1")["boot_id"] == first
    _fake_windows(monkeypatch, boot - shift, -shift)  # and back: the bias is signed
    assert collect_facts("1")["boot_id"] == first
    _fake_windows(monkeypatch, boot + 10**10, 0)  # a later boot
    assert collect_facts("1")["boot_id"] != first


def test_windows_failures_degrade(monkeypatch):
    _fake_windows(monkeypatch)
    monkeypatch.setitem(sys.modules, "winreg", None)  # makes the import fail
    monkeypatch.delattr(ctypes, "WinDLL")
    monkeypatch.delenv("PROCESSOR_ARCHITEW6432")
    monkeypatch.delenv("PROCESSOR_ARCHITECTURE")
    got = collect_facts("1")
    assert got["os"] == "windows"
    assert got["os_release"] == "Windows 10.0.20348"
    assert got["boot_id"] is None and got["arch"] is None


# -- pure helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ip, kind",
    [
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.254", "private"),
        ("192.168.1.10", "private"),
        ("100.64.0.1", "private"),
        ("100.127.255.254", "private"),
        ("fd12:3456::1", "private"),
        ("fc00::1", "private"),
        ("8.8.8.8", "public"),
        ("45.76.1.2", "public"),
        ("172.32.0.1", "public"),
        ("100.128.0.1", "public"),
        ("2a01:4f8::1", "public"),
        ("127.0.0.1", None),
        ("::1", None),
        ("169.254.1.1", None),
        ("fe80::1", None),
        ("192.0.2.2", None),
        ("2001:db8::1", None),
        ("0.0.0.0", None),
        ("not-an-ip", None),
    ],
)
def test_classify_fixed_examples(ip, kind):
    private, public = classify([ip])
    assert (private, public) == ({"private": ([ip], []), "public": ([], [ip])}.get(kind, ([], [])))


def test_classify_keeps_order():
    ips = ["8.8.8.8", "10.0.0.1", "1.1.1.1", "192.168.0.1"]
    assert classify(ips) == (["10.0.0.1", "192.168.0.1"], ["8.8.8.8", "1.1.1.1"])


@pytest.mark.parametrize(
    "machine, arch",
    [
        ("x86_64", "x86_64"),
        ("AMD64", "x86_64"),
        ("amd64", "x86_64"),
        ("aarch64", "arm64"),
        ("ARM64", "arm64"),
        ("i686", "x86"),
        ("x86", "x86"),
        ("armv7l", "armv7l"),
        ("riscv64", "riscv64"),
        ("", ""),
    ],
)
def test_normalise_arch(machine, arch):
    assert normalise_arch(machine) == arch


def test_ip_json_parsing():
    assert facts._parse_ip_json(IP_JSON) == [
        ("lo", "127.0.0.1"),
        ("lo", "::1"),
        ("docker0", "172.17.0.1"),
        ("eth0", "203.0.113.7"),
        ("eth0", "2a01:4f8::7"),
        ("eth0", "fe80::1"),
        ("wg0", "10.8.0.2"),
    ]


def test_proc_parsing():
    assert facts._parse_fib_trie(FIB_TRIE) == [("", "127.0.0.1"), ("", "10.0.0.5")]
    assert facts._parse_if_inet6(IF_INET6) == [
        ("lo", "::1"),
        ("eth0", "fd00::2"),
        ("eth0", "fe80::fc:ff:fe00:1"),
    ]


@given(st.one_of(st.text(), st.binary()))
def test_parsers_never_raise(data):
    facts._parse_ip_json(data)
    text = data if isinstance(data, str) else data.decode("latin-1")
    facts._parse_fib_trie(text)
    facts._parse_if_inet6(text)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda kids: st.lists(kids) | st.dictionaries(st.text(), kids),
    )
)
def test_ip_json_of_any_shape_never_raises(doc):
    facts._parse_ip_json(json.dumps(doc))


def test_facts_changed():
    now = collect_facts("1")
    assert facts_changed(None, now)
    assert not facts_changed(json.loads(json.dumps(now)), now)
    assert not facts_changed(json.loads(json.dumps(now)), {**now, "ips": tuple(now["ips"])})
    assert facts_changed(now, {**now, "ips": [*now["ips"], "10.9.9.9"]})
    assert facts_changed(now, {**now, "boot_id": "another"})
