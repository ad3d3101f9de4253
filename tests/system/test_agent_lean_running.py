"""A running agent, connected and idle, started as the service starts it (the lean
entry point, ``python -m cloudremotecontrol.agent run``), holds none of the modules it
has no more use for: no click, CLI, master or server code; not what its connection
library imports and an idle agent never uses (agent/deferred.py); and not argparse
with gettext, which read its options and are unloaded then (agent/main.py). Started as
``crc agent run``, it holds click and the agent's commands, but none of the master's
or the server's commands (cli/main.py loads a command's module when it is used). Each
module would hold memory for as long as the agent runs (bench/RESULTS.md, "Agent
start-up and memory")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cloudremotecontrol.agent.core import enroll
from cloudremotecontrol.agent.state import AgentState
from conftest import Env
from lean import MASTER_AND_SERVER

# MODULE as ``python -m`` runs it, with a thread that writes the names of the loaded
# modules to ANSWER once the file ASK exists (the agent is connected then).
RUN_AND_TELL = """
import json, os, runpy, sys, threading, time
module, ask, answer = sys.argv.pop(1), sys.argv.pop(1), sys.argv.pop(1)
def tell():
    while not os.path.exists(ask):
        time.sleep(0.05)
    with open(answer + ".part", "w") as fh:
        json.dump(sorted(sys.modules), fh)
    os.replace(answer + ".part", answer)
threading.Thread(target=tell, daemon=True).start()
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""

UNUSED = (
    *MASTER_AND_SERVER,
    # what websockets imports and an idle agent never uses (agent/deferred.py)
    "email",
    "http.client",
    "zipfile",
    "csv",
    "_bz2",
    "_lzma",
    "_pickle",
    # read the options, then unloaded (agent/main.py)
    "argparse",
    "gettext",
)


# Commands of the master and the server, which `crc agent run` has no use for.
OTHER_COMMANDS = (
    "cloudremotecontrol.cli.master_cmds",
    "cloudremotecontrol.cli.job_cmds",
    "cloudremotecontrol.cli.wait_cmd",
    "cloudremotecontrol.cli.stream_cmds",
    "cloudremotecontrol.cli.scenario_cmds",
    "cloudremotecontrol.cli.demo_cmd",
    "cloudremotecontrol.cli.server_cmds",
    "cloudremotecontrol.cli.bootstrap_cmds",
    "cloudremotecontrol.master",
    "cloudremotecontrol.server",
)


def _loaded_by_a_connected_agent(env: Env, tmp_path: Path, *command: str) -> list[str]:
    # Enrolled before (its first run's HTTPS call uses urllib, which is then loaded).
    key = env.client.create_group("lab", ["a"])["machines"][0]["key"]
    state = tmp_path / "a"
    st = AgentState(state)
    enroll(st, env.server.url, key, env.server.fingerprint)
    st.close()
    ask, answer = tmp_path / "ask", tmp_path / "answer.json"
    argv = [sys.executable, "-c", RUN_AND_TELL, *command[:1], str(ask), str(answer)]
    # No proxy to look up (with one, websockets loads urllib.request for the lookup).
    clean = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    with open(tmp_path / "a.log", "ab") as log:
        proc = subprocess.Popen(
            [*argv, *command[1:], "--state-dir", str(state), "--log-level", "warning"],
            env={
                **clean,
                "CRC_AGENT_HOSTS_FILE": str(tmp_path / "hosts"),
            },
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        env.wait_state("lab", ["a"], "ready")
        ask.touch()
        deadline = time.monotonic() + 30
        while not answer.exists():
            assert proc.poll() is None, (tmp_path / "a.log").read_text()
            assert time.monotonic() < deadline, "the agent did not list its modules"
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(30)
    loaded: list[str] = json.loads(answer.read_text())
    return loaded


def test_a_connected_lean_agent_holds_no_module_it_has_no_more_use_for(
    env: Env, tmp_path: Path
) -> None:
    loaded = _loaded_by_a_connected_agent(env, tmp_path, "cloudremotecontrol.agent", "run")
    assert "websockets.asyncio.client" in loaded  # connected, with its own code
    assert "cloudremotecontrol.agent.core" in loaded
    unused = [m for m in loaded if m in UNUSED or m.startswith(tuple(f"{u}." for u in UNUSED))]
    assert unused == [], unused


def test_crc_agent_run_holds_none_of_the_master_or_server_commands(
    env: Env, tmp_path: Path
) -> None:
    loaded = _loaded_by_a_connected_agent(env, tmp_path, "cloudremotecontrol", "agent", "run")
    assert "websockets.asyncio.client" in loaded  # connected
    assert "cloudremotecontrol.cli.agent_cmds" in loaded
    other = [m for m in loaded if m.startswith(OTHER_COMMANDS)]
    assert other == [], other
