"""The Windows test tier: the agent as a real Windows service, under Wine.

``tests/windows/setup.sh`` (idempotent, cached) provides Wine and a template prefix with a
Windows CPython 3.12 + pywin32. Each test module gets its own copy of that prefix (hard
links; the few files Wine or the tests rewrite in place are real copies), a server on
this machine (Linux, loopback: Wine processes share the host's network), and the agent
installed into the Windows Python from the package that server serves
(``/v1/agent/package``, checked against ``/v1/agent/package.sha256``, fetched with the
Windows bootstrap's own helper over the pinned TLS connection) - then `crc agent install`
registers the Windows service.

When this tier runs: always in CI (``CI=true``) and with ``CRC_WINE_TESTS=1``; there a
set-up failure fails the tests, it never skips them. On a developer's machine where
setup.sh never ran, the tier is skipped with that reason (``pytest -ra`` lists it);
``CRC_WINE_TESTS=0`` turns it off explicitly.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from wine_machine import WineMachine, WinePrefix, tear_down

from cloudremotecontrol.master.localrun import ServerProcess

HERE = Path(__file__).parent
SETUP = HERE / "setup.sh"
CACHE = Path(os.environ.get("CRC_WINE_CACHE", "/var/cache/crc-wine"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "wine: the Windows tier (Wine; tests/windows/setup.sh)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.wine)


def _mode() -> str | None:
    """None: run (setting up if needed); else the reason to skip."""
    flag = os.environ.get("CRC_WINE_TESTS", "")
    if flag == "0":
        return "the Windows tier is turned off (CRC_WINE_TESTS=0)"
    if flag == "1" or os.environ.get("CI", "").lower() == "true":
        return None
    if (CACHE / "current" / "ok").exists():
        return None
    return (
        "the Windows tier needs Wine: run tests/windows/setup.sh once (root, ~1 min), "
        "or set CRC_WINE_TESTS=1 to let the tests run it"
    )


@pytest.fixture(scope="session")
def wine_template() -> dict[str, Any]:
    """Run setup.sh (a no-op when cached); its manifest. Fails, never skips, in CI."""
    reason = _mode()
    if reason is not None:
        pytest.skip(reason)
    started = time.monotonic()
    out = subprocess.run(
        ["bash", str(SETUP)],
        capture_output=True,
        text=True,
        timeout=1800,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if out.returncode != 0:
        pytest.fail(
            f"tests/windows/setup.sh failed (exit {out.returncode}):\n{out.stderr[-3000:]}",
            pytrace=False,
        )
    manifest = json.loads((CACHE / "current" / "manifest.json").read_text())
    manifest["setup_seconds"] = round(time.monotonic() - started, 1)
    return manifest


@pytest.fixture(scope="module")
def win(
    wine_template: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WineMachine]:
    """A server, a fresh prefix, the agent installed from the server's package and
    registered as the crc-agent service with `crc agent install`, machine ready."""
    tmp = tmp_path_factory.mktemp("wine")
    server = ServerProcess(tmp / "srv").start()
    prefix = WinePrefix(Path(wine_template["prefix"]), tmp)
    machine = WineMachine(server, prefix, tmp)
    try:
        prefix.start()
        machine.package = machine.install_agent_package()
        out = prefix.crc(*machine.install_args(), timeout=180)
        if out.returncode != 0:
            raise AssertionError(
                f"crc agent install failed ({out.returncode}):\n"
                f"{out.stdout}\n{out.stderr}\n{prefix.service_log()}"
            )
        machine.install_report = json.loads(out.stdout)
        yield machine
    finally:
        tear_down(machine, prefix, server)
