"""Quick requests from scripts on a machine (`crc agent emit`, `progress`, ...) wait for
an agent that restarts (a service restart, `kill -9`, an upgrade), and are carried out
once: agent/control.py's ``call_through_restarts``, with real agent processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def _agent_cmd(env, machine, *args, extra_env=None):
    """`crc agent ARGS` for MACHINE's agent, in the background (stdout, stderr piped)."""
    return subprocess.Popen(
        env.agent_argv(machine, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(extra_env or {})},
    )


def _messages(env, type_):
    """The bodies of the messages TYPE the master got (each one an event `message`)."""
    out = []
    for e in env.client.events("lab", types=("message",)):
        if e["data"].get("type") == type_:
            out.append(e["data"].get("body"))
    return out


def _wait_for(fn, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not (value := fn()):
        assert time.monotonic() < deadline, "not seen in time"
        time.sleep(0.1)
    return value


def _in_flight_while_restarted(env, agent, stop_signal, n):
    """Freeze the agent, send emit N (it waits in the agent's socket, unread), stop the
    agent with STOP_SIGNAL, start it again: the emit must arrive exactly once."""
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGSTOP)  # its socket still takes connections
    try:
        emit = _agent_cmd(env, "a", "emit", f"user.step{n}", f'{{"n": {n}}}')
        time.sleep(1.0)  # let it connect and send (if not, it finds no agent: also fine)
        agent.proc.send_signal(stop_signal)
    finally:
        agent.proc.send_signal(signal.SIGCONT)
    try:
        agent.wait(20)
        agent.start()
        _out, err = emit.communicate(timeout=60)
    finally:
        emit.kill()
    assert emit.returncode == 0, err
    assert _wait_for(lambda: _messages(env, f"user.step{n}")) == [{"n": n}]
    time.sleep(1.0)  # a duplicate would have arrived by now
    assert _messages(env, f"user.step{n}") == [{"n": n}]


def test_an_emit_in_flight_when_the_agent_is_killed_or_stopped_arrives_once(env):
    agents = env.group_with_agents("lab", ["a"])
    # kill -9: the request, unread, is reset with the agent's socket; sent again.
    _in_flight_while_restarted(env, agents["a"], signal.SIGKILL, 1)
    # SIGTERM: the stopping agent answers what it took, or resets what it did not.
    _in_flight_while_restarted(env, agents["a"], signal.SIGTERM, 2)


def test_progress_during_a_restart_waits_for_the_agent_and_is_reported_once(env):
    agents = env.group_with_agents("lab", ["a"])
    agents["a"].stop()  # `systemctl restart crc-agent`: stopped...
    progress = _agent_cmd(env, "a", "progress", "step 2", "--percent", "40")
    try:
        # ...and while it is down, the script goes on (and says it is waiting).
        assert "waiting up to 30 s for the agent" in progress.stderr.readline()
        agents["a"].start()
        _out, err = progress.communicate(timeout=60)
    finally:
        progress.kill()
    assert progress.returncode == 0, err
    texts = lambda: [  # noqa: E731
        e["data"]["text"] for e in env.client.events("lab", types=("progress",))
    ]
    assert _wait_for(texts) == ["step 2"]
    # A request that changes nothing is simply answered by the agent that came back.
    r = _agent_cmd(env, "a", "status", "--json")
    _out, err = r.communicate(timeout=60)
    assert r.returncode == 0, err


def test_a_killed_agent_that_does_not_come_back_fails_clearly(env):
    agents = env.group_with_agents("lab", ["a"])
    agents["a"].kill()  # kill -9, and no service manager to start it again
    p = _agent_cmd(env, "a", "emit", "user.step", extra_env={"CRC_AGENT_WAIT": "1"})
    _out, err = p.communicate(timeout=60)
    assert p.returncode == 6
    lines = err.splitlines()
    assert lines[0].startswith("crc: waiting up to 1 s for the agent"), err
    assert lines[1].startswith("crc: error: no agent answered with state dir"), err
    assert "within 1 s" in lines[1] and "--agent-wait" in lines[1] and len(lines) == 2


def test_no_agent_at_all_says_it_waits_then_fails(env, tmp_path):
    state = tmp_path / "stopped"
    state.mkdir()
    (state / "agent.lock").touch()  # an agent ran here (and stopped): it may come back
    argv = [sys.executable, "-m", "cloudremotecontrol", "agent", "progress", "x"]
    r = subprocess.run(
        [*argv, "--state-dir", str(state), "--agent-wait", "0.5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 6
    assert "waiting up to 0.5 s for the agent" in r.stderr
    assert "no agent answered" in r.stderr and "Traceback" not in r.stderr
    # A state directory that does not exist has no agent to wait for: at once.
    r = subprocess.run(
        [*argv, "--state-dir", str(tmp_path / "typo")], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 6 and "waiting" not in r.stderr
    assert r.stderr.startswith("crc: error: no agent is running with state dir"), r.stderr
    # Nor one where no agent ever ran (tests/system/test_agent_never_enrolled.py).
    (tmp_path / "never-started").mkdir()
    r = subprocess.run(
        [*argv, "--state-dir", str(tmp_path / "never-started")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 6 and "waiting" not in r.stderr
    assert "none was ever started there" in r.stderr, r.stderr


def test_a_kv_wait_goes_on_across_an_agent_restart(env, crc):
    agents = env.group_with_agents("lab", ["a"])
    waiter = _agent_cmd(env, "a", "kv", "wait", "db/up", "--timeout", "60")
    try:
        time.sleep(1.5)  # its request waits in the agent
        agents["a"].kill()  # kill -9: the service manager starts it again
        time.sleep(1.0)
        agents["a"].start()
        env.wait_state("lab", ["a"], "ready")
        r = crc("kv", "set", "lab", "db/up", '"yes"')
        assert r.returncode == 0, r.stderr
        out, err = waiter.communicate(timeout=60)
    finally:
        waiter.kill()
    assert waiter.returncode == 0, err
    assert out.strip() == '"yes"'
