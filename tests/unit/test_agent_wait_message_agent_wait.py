"""`crc agent wait-message` takes `--agent-wait` (env `CRC_AGENT_WAIT`) as every other
`crc agent` helper does: an agent not answering when it starts (stopped, restarting) is
waited for that long, said on stderr, then exit 6; one that comes back within it is
asked. Each command runs as a process, beside a stand-in agent on a real Unix socket."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from late_agent import LateAgent, crc_agent, stopped_agent_dir

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="a Unix control socket")


def a_message(request: dict[str, Any]) -> dict[str, Any]:
    """What the stand-in agent answers a wait-message with."""
    return {
        "ok": True,
        "message": {"type": request["type"], "from": "master", "body": {"n": 1}},
    }


def test_wait_message_waits_agent_wait_for_an_agent_then_fails_clearly(tmp_path: Path) -> None:
    state = stopped_agent_dir(tmp_path)
    argv = ("wait-message", "user.go", "--timeout", "30", "--state-dir", str(state))
    started = time.monotonic()
    r = crc_agent(*argv, "--agent-wait", "0.5", cwd=tmp_path)
    assert time.monotonic() - started < 20  # --agent-wait, not --timeout
    assert r.returncode == 6, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("crc: waiting up to 0.5 s for the agent"), r.stderr
    assert lines[1].startswith("crc: error: no agent answered with state dir"), r.stderr
    assert "within 0.5 s" in lines[1] and "--agent-wait" in lines[1] and len(lines) == 2
    # The same from the environment, and 0: at once, without a word of waiting.
    r = crc_agent(*argv, cwd=tmp_path, CRC_AGENT_WAIT="0.5")
    assert r.returncode == 6 and "waiting up to 0.5 s" in r.stderr, r.stderr
    r = crc_agent(*argv, "--agent-wait", "0", cwd=tmp_path)
    assert r.returncode == 6 and "waiting" not in r.stderr, r.stderr


@pytest.mark.parametrize("how", ["option", "env"])
def test_wait_message_asks_an_agent_that_comes_back_within_agent_wait(
    how: str, tmp_path: Path
) -> None:
    state = stopped_agent_dir(tmp_path)
    agent = LateAgent(state, after=1.0, answer=a_message)
    try:
        argv = ["wait-message", "user.go", "--timeout", "30", "--state-dir", str(state)]
        env = {"CRC_AGENT_WAIT": "20"} if how == "env" else {}
        if how == "option":
            argv += ["--agent-wait", "20"]
        r = crc_agent(*argv, cwd=tmp_path, **env)
    finally:
        agent.close()
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"n": 1}
    assert "waiting up to 20 s for the agent" in r.stderr
    assert [q["op"] for q in agent.requests] == ["status", "wait-message"]


def test_agent_wait_is_bounded_as_for_every_helper(tmp_path: Path) -> None:
    for bad in ("nan", "inf", "3601"):
        r = crc_agent("wait-message", "user.go", "--agent-wait", bad, cwd=tmp_path)
        assert r.returncode == 2 and "Invalid value for '--agent-wait'" in r.stderr, r.stderr
