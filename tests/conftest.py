"""Shared fixtures: real server and agent processes over TLS on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from browser import browser, chromium_present, playwright_driver  # noqa: F401 -- fixtures: Chromium (tests/browser.py)
from cloudremotecontrol.master.client import Client
from cloudremotecontrol.master.localrun import AgentProcess, ServerProcess
from pg import pg_cluster, pg_url  # noqa: F401 -- fixtures: PostgreSQL databases (tests/pg.py)


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C as a terminal gives it. A shell script that starts pytest in the background
    (or ``nohup``) hands it SIGINT (and SIGQUIT) ignored, and every process a test starts
    would inherit that: what crc does on Ctrl-C could not be tested."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGQUIT) is signal.SIG_IGN:
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test item (``rep_call``), so fixtures can tell
    in their teardown whether the test failed (the browser saves its pages then)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path / "srv").start()
    yield srv
    srv.stop()


class Env:
    """A user of a running server: an SDK client plus helpers to start agents."""

    def __init__(self, server: ServerProcess, tmp: Path, user: str = "alice") -> None:
        self.server = server
        self.tmp = tmp
        self.token = server.add_user(user)
        self.client = Client(server.url, self.token, server.fingerprint)
        self.agents: list[AgentProcess] = []
        self.cli_env = {
            "CRC_URL": server.url,
            "CRC_TOKEN": self.token,
            "CRC_FINGERPRINT": server.fingerprint,
            "CRC_CONFIG_DIR": str(tmp / f"cfg-{user}"),
        }

    def agent(self, name: str, key: str | None, **kw: Any) -> AgentProcess:
        # A home of its own: the login shells it opens for `crc shell` read no dotfiles
        # of this computer's user (whose shell start-up, e.g. a version manager's
        # rehash, is not under test and can stall when a test ends a shell abruptly).
        home = self.tmp / "agents" / f"{name}-home"
        home.mkdir(parents=True, exist_ok=True)
        kw["env"] = {"HOME": str(home), **(kw.get("env") or {})}
        a = AgentProcess(
            self.tmp / "agents" / name, self.server.url, key, self.server.fingerprint, **kw
        ).start()
        self.agents.append(a)
        return a

    def agent_argv(self, machine: str, *args: str) -> list[str]:
        """`crc agent ARGS` for the agent ``agent(machine)`` started (its state dir)."""
        state = str(self.tmp / "agents" / machine)
        return [sys.executable, "-m", "cloudremotecontrol", "agent", *args, "--state-dir", state]

    def agent_cli(
        self, machine: str, *args: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run `crc agent ARGS` for MACHINE's agent, as a script on the machine does."""
        argv = self.agent_argv(machine, *args)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)

    def group_with_agents(self, group: str, names: list[str], **kw: Any) -> dict[str, AgentProcess]:
        out = self.client.create_group(group, names)
        agents = {m["name"]: self.agent(m["name"], m["key"], **kw) for m in out["machines"]}
        self.wait_state(group, names, "ready")
        return agents

    def wait_state(
        self, group: str, names: list[str], state: str, timeout: float = 30.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            g = self.client.group(group)
            states = {m["name"]: m["state"] for m in g["machines"]}
            if all(states[n] == state for n in names):
                return g
            if time.monotonic() > deadline:
                logs = "\n".join(a.log()[-1500:] for a in self.agents)
                raise AssertionError(f"machines not {state}: {states}\n{logs}")
            time.sleep(0.05)

    def close(self) -> None:
        for a in self.agents:
            a.stop()
        self.client.close()


@pytest.fixture(params=["sqlite", "postgres"])
def db_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    """An ``Env`` on a server of its own, once on SQLite and once on PostgreSQL."""
    database = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    srv = ServerProcess(tmp_path / "srv", database=database).start()
    e = Env(srv, tmp_path)
    try:
        yield e
    finally:
        e.close()
        srv.stop()


@pytest.fixture
def env(server: ServerProcess, tmp_path: Path) -> Iterator[Env]:
    e = Env(server, tmp_path)
    yield e
    e.close()


@pytest.fixture
def crc(env: Env) -> Callable[..., Any]:
    """Run the real `crc` CLI as a process with this user's credentials."""
    import subprocess
    import sys

    def run(
        *args: str,
        input: str | None = None,
        timeout: float = 60,
        extra_env: dict[str, str | None] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``extra_env`` adds variables; one whose value is None is unset."""
        merged = {**os.environ, **env.cli_env, **(extra_env or {})}
        return subprocess.run(
            [sys.executable, "-m", "cloudremotecontrol", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env={k: v for k, v in merged.items() if v is not None},
        )

    return run
