"""agent/deferred.py: the modules the agent's libraries import but an idle agent never
uses are imported without running, and are whole modules from their first use; the
agent skips websockets' proxy lookup only where it would find no proxy."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest

from cloudremotecontrol.agent import deferred
from cloudremotecontrol.agent.deferred import proxy_option, windows_proxy_enabled


def _run(code: str, env: dict[str, str] | None = None) -> dict[str, object]:
    full = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**full, **(env or {})},
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_deferred_modules_are_imported_without_running_until_first_used() -> None:
    got = _run(
        "import json, sys\n"
        "from cloudremotecontrol.agent.deferred import defer\n"
        "defer()\n"
        "import websockets.asyncio.client, websockets.exceptions, shutil\n"
        "import cloudremotecontrol.agent.main, cloudremotecontrol.agent.service\n"
        "import cloudremotecontrol.agent.core, logging.handlers\n"
        "before = sorted(m for m in ('email', 'http.client', 'zipfile', 'csv', '_bz2', "
        "'_lzma', '_pickle') if m in sys.modules)\n"
        "import urllib.request, importlib.metadata, bz2, lzma\n"
        "proxies = urllib.request.getproxies()\n"
        "from urllib.request import Request\n"
        "version = importlib.metadata.version('websockets')\n"
        "data = lzma.decompress(bz2.decompress(bz2.compress(lzma.compress(b'x'))))\n"
        "import pickle\n"
        "data = pickle.loads(pickle.dumps(data))\n"
        "after = sorted(m for m in ('email', 'http.client', '_bz2', '_lzma', '_pickle') "
        "if m in sys.modules)\n"
        "print(json.dumps({'before': before, 'after': after, 'proxies': proxies, "
        "'version': version == websockets.version.version, 'data': data.decode(), "
        "'request': Request.__module__, 'shutil': [shutil._BZ2_SUPPORTED, "
        "shutil._LZMA_SUPPORTED]}))\n",
        env={"HTTPS_PROXY": "http://proxy.example:3128"},
    )
    assert got == {
        "before": [],
        "after": ["_bz2", "_lzma", "_pickle", "email", "http.client"],
        "proxies": {"https": "http://proxy.example:3128"},
        "version": True,
        "data": "x",
        "request": "urllib.request",
        "shutil": [True, True],
    }


def test_a_deferred_module_that_fails_to_load_is_not_left_half_loaded() -> None:
    got = _run(
        "import json, sys, types\n"
        "from cloudremotecontrol.agent import deferred\n"
        "sys.modules.pop('json.tool', None)\n"
        "deferred.defer((('json.tool', None),))\n"
        "import json.tool\n"
        "m = sys.modules['json.tool']\n"
        "m.__spec__.loader.exec_module = lambda module: 1 / 0\n"
        "try:\n"
        "    json.tool.main\n"
        "except ZeroDivisionError:\n"
        "    pass\n"
        "print(json.dumps({'left': 'json.tool' in sys.modules, "
        "'attr': 'tool' in vars(json)}))\n"
    )
    assert got == {"left": False, "attr": False}


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="proxies from the environment")
@pytest.mark.parametrize(
    ("environ", "option"),
    [
        ({}, {"proxy": None}),
        ({"HTTPS_PROXY": ""}, {"proxy": None}),
        ({"HTTPS_PROXY": "http://p:3128"}, {}),
        ({"https_proxy": "http://p:3128"}, {}),
        ({"wss_proxy": "http://p:3128"}, {}),
        ({"ALL_PROXY": "socks5h://p:1080"}, {}),
        ({"http_proxy": "http://p:3128"}, {}),
        ({"no_proxy": "*"}, {}),
    ],
)
def test_proxy_lookup_is_skipped_only_where_it_finds_no_proxy(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], option: dict[str, object]
) -> None:
    from websockets.uri import parse_uri

    try:
        get_proxy = importlib.import_module("websockets.proxy").get_proxy
    except ModuleNotFoundError:  # websockets 15 has it in websockets.uri
        get_proxy = importlib.import_module("websockets.uri").get_proxy

    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert proxy_option() == option
    if option:  # skipped: websockets' own lookup finds no proxy either
        assert get_proxy(parse_uri("wss://127.0.0.1:8443/agent/ws")) is None


def test_threads_using_a_deferred_module_at_once_all_get_the_whole_module() -> None:
    got = _run(
        "import json, sys, threading\n"
        "from cloudremotecontrol.agent.deferred import defer\n"
        "defer()\n"
        "import urllib.request\n"
        "barrier = threading.Barrier(8)\n"
        "results = []\n"
        "def use():\n"
        "    barrier.wait()\n"
        "    try:\n"
        "        results.append(urllib.request.Request('https://x/').full_url)\n"
        "    except Exception as exc:\n"
        "        results.append(repr(exc))\n"
        "threads = [threading.Thread(target=use) for _ in range(8)]\n"
        "[t.start() for t in threads]\n"
        "[t.join() for t in threads]\n"
        "print(json.dumps({'results': results}))\n"
    )
    assert got == {"results": ["https://x/"] * 8}


class FakeWinreg:
    """``winreg`` as ``windows_proxy_enabled`` uses it: one user hive."""

    HKEY_CURRENT_USER = "HKCU"

    def __init__(self, values: dict[str, object] | None, error: OSError | None = None) -> None:
        self.values = values  # None: no Internet Settings key
        self.error = error
        self.closed = 0

    def OpenKey(self, hive: str, path: str) -> FakeWinreg:
        assert (hive, path) == ("HKCU", deferred.INTERNET_SETTINGS)
        if self.error is not None:
            raise self.error
        if self.values is None:
            raise FileNotFoundError(2, "The system cannot find the file specified")
        return self

    def QueryValueEx(self, key: FakeWinreg, name: str) -> tuple[object, int]:
        assert self.values is not None
        if name not in self.values:
            raise FileNotFoundError(2, "The system cannot find the file specified")
        return self.values[name], 4

    def Close(self) -> None:
        self.closed += 1


@pytest.mark.parametrize(
    ("values", "error", "enabled"),
    [
        (None, None, False),  # no Internet Settings key
        ({}, None, False),  # no ProxyEnable
        ({"ProxyEnable": 0, "ProxyServer": "p:3128"}, None, False),  # set up, turned off
        ({"ProxyEnable": 1, "ProxyServer": "p:3128"}, None, True),
        ({"ProxyEnable": 1}, None, True),  # the lookup decides (it finds none)
        ({"ProxyEnable": "1"}, None, True),  # not a DWORD: the lookup decides
        (None, PermissionError(5, "Access is denied"), True),
    ],
)
def test_windows_proxy_in_the_registry_keeps_the_lookup(
    values: dict[str, object] | None, error: OSError | None, enabled: bool
) -> None:
    reg = FakeWinreg(values, error)
    assert windows_proxy_enabled(reg) is enabled
    assert reg.closed == (1 if values is not None and error is None else 0)


def test_on_windows_the_lookup_is_skipped_only_without_environment_or_registry_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import types

    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(sys, "platform", "win32")
    reg = FakeWinreg({"ProxyEnable": 0})
    fake = types.ModuleType("winreg")
    for attr in ("HKEY_CURRENT_USER", "OpenKey", "QueryValueEx"):
        setattr(fake, attr, getattr(reg, attr))
    monkeypatch.setitem(sys.modules, "winreg", fake)
    assert proxy_option() == {"proxy": None}
    reg.values = {"ProxyEnable": 1, "ProxyServer": "p:3128"}
    assert proxy_option() == {}
    reg.values = {}
    monkeypatch.setenv("HTTPS_PROXY", "http://p:3128")
    assert proxy_option() == {}
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.delenv("HTTPS_PROXY")
    assert proxy_option() == {}
