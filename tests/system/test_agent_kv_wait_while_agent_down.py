"""`crc agent kv wait --agent-wait`, with a real agent process: a script that starts its
wait while the agent is stopped (a service restart) waits for it, then gets the key the
master sets; one whose agent does not come back within --agent-wait fails clearly."""

from __future__ import annotations

import subprocess


def _kv_wait(env, *args):
    """`crc agent kv wait db/up ARGS` for machine a's agent, in the background."""
    return subprocess.Popen(
        env.agent_argv("a", "kv", "wait", "db/up", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_kv_wait_started_while_the_agent_is_stopped_waits_agent_wait_for_it(env, crc):
    agents = env.group_with_agents("lab", ["a"])
    agents["a"].stop()  # `systemctl restart crc-agent`: stopped...
    with _kv_wait(env, "--agent-wait", "60", "--timeout", "120") as waiter:
        try:
            # ...and while it is down, the script says it waits for it.
            assert "waiting up to 60 s for the agent" in waiter.stderr.readline()
            agents["a"].start()
            env.wait_state("lab", ["a"], "ready")
            r = crc("kv", "set", "lab", "db/up", '"yes"')
            assert r.returncode == 0, r.stderr
            out, err = waiter.communicate(timeout=60)
        finally:
            waiter.kill()
    assert waiter.returncode == 0, err
    assert out.strip() == '"yes"'


def test_kv_wait_whose_agent_stays_stopped_fails_after_agent_wait(env):
    agents = env.group_with_agents("lab", ["a"])
    agents["a"].stop()
    with _kv_wait(env, "--agent-wait", "1", "--timeout", "120") as waiter:
        try:
            _out, err = waiter.communicate(timeout=60)  # --agent-wait, not --timeout
        finally:
            waiter.kill()
    assert waiter.returncode == 6, err
    lines = err.splitlines()
    assert lines[0].startswith("crc: waiting up to 1 s for the agent"), err
    assert lines[1].startswith("crc: error: no agent answered with state dir"), err
    assert "within 1 s" in lines[1] and "--agent-wait" in lines[1] and len(lines) == 2
