"""Data messages between the master and machines, and machines among themselves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

# What a job runs to reach its agent (its state dir comes in CRC_AGENT_STATE_DIR).
CRC = f"{sys.executable} -m cloudremotecontrol"


def agent_cli(env, machine, *args, timeout=60):
    return env.agent_cli(machine, *args, timeout=timeout)


def test_master_message_reaches_a_script_on_the_machine(env, crc):
    env.group_with_agents("lab", ["a", "b"])
    r = crc("send", "lab", "--to", "a", "user.config", '{"db": "10.0.0.5"}')
    assert r.returncode == 0, r.stderr
    r = agent_cli(env, "a", "wait-message", "user.config", "--timeout", "20")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"db": "10.0.0.5"}  # the body, as the help says
    # Handed out once: the next wait times out with a clear error.
    r = agent_cli(env, "a", "wait-message", "user.config", "--timeout", "1")
    assert r.returncode == 6 and "no user.config message" in r.stderr
    # --json: the envelope's type, sender and body.
    r = crc("send", "lab", "--to", "a", "config", '{"db": "10.0.0.6"}')
    assert r.returncode == 0, r.stderr
    r = agent_cli(env, "a", "wait-message", "config", "--timeout", "20", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {
        "type": "user.config",
        "from": "master",
        "body": {"db": "10.0.0.6"},
    }


def _waiting(env, machine, type_, timeout="60"):
    """`crc agent wait-message` running in the background (its stdout, stderr piped)."""
    state = str(env.tmp / "agents" / machine)
    argv = ["agent", "wait-message", type_, "--timeout", timeout, "--state-dir", state]
    return subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_wait_that_is_killed_takes_no_message(env, crc):
    env.group_with_agents("lab", ["a"])
    waiter = _waiting(env, "a", "user.go")
    time.sleep(1.5)  # its request is waiting in the agent
    waiter.kill()  # a script's timeout, Ctrl-C
    waiter.communicate()
    time.sleep(0.5)
    r = crc("send", "lab", "--to", "a", "user.go", '{"n": 1}')
    assert r.returncode == 0, r.stderr
    # The message waits for the next script, rather than going to the dead one.
    r = agent_cli(env, "a", "wait-message", "user.go", "--timeout", "20")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"n": 1}


def test_a_wait_goes_on_across_an_agent_restart(env, crc):
    agents = env.group_with_agents("lab", ["a"])
    waiter = _waiting(env, "a", "user.go")
    try:
        time.sleep(1.5)
        agents["a"].kill()  # kill -9: the service manager starts it again
        time.sleep(1.0)
        agents["a"].start()
        env.wait_state("lab", ["a"], "ready")
        r = crc("send", "lab", "--to", "a", "user.go", '{"n": 2}')
        assert r.returncode == 0, r.stderr
        out, err = waiter.communicate(timeout=60)
    finally:
        waiter.kill()
    assert waiter.returncode == 0, err
    assert json.loads(out) == {"n": 2}
    # Handed out once.
    r = agent_cli(env, "a", "wait-message", "user.go", "--timeout", "0.5")
    assert r.returncode == 6 and "no user.go message within 0.5 s" in r.stderr, r.stderr


def test_machine_tells_master_success_and_peers_hear_each_other(env, crc):
    env.group_with_agents("lab", ["a", "b"])
    cursor = env.client.event_cursor("lab")
    r = agent_cli(env, "a", "emit", "user.success", '{"step": "mysql"}')
    assert r.returncode == 0, r.stderr
    r = crc(
        "wait",
        "lab",
        "--message",
        "success",
        "--from",
        "a",
        "--since",
        str(cursor),
        "--timeout",
        "20s",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"step": "mysql"}
    r = agent_cli(env, "a", "emit", "user.hello", '{"n": 1}', "--to", "b")
    assert r.returncode == 0, r.stderr
    r = agent_cli(env, "b", "wait-message", "user.hello", "--from", "a", "--timeout", "20")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"n": 1}


def test_peers_lists_the_group_to_its_machines(env):
    env.group_with_agents("lab", ["a", "b"])
    r = agent_cli(env, "b", "peers", "--json")
    assert r.returncode == 0, r.stderr
    roster = json.loads(r.stdout)
    assert roster["group"] == "lab" and roster["machine"] == "b"
    assert [(m["name"], m["state"]) for m in roster["machines"]] == [("a", "ready"), ("b", "ready")]
    assert all(m["public_ip"] == "127.0.0.1" for m in roster["machines"])


def test_a_machine_cannot_message_another_group_or_use_bad_types(env):
    env.group_with_agents("lab", ["a"])
    env.group_with_agents("other", ["x"])
    cursor = env.client.event_cursor("lab")
    r = agent_cli(env, "a", "emit", "user.hi", "--to", "x")
    assert r.returncode == 4 and "no machine 'x' in group 'lab'" in r.stderr, r.stderr
    _assert_nothing_sent_before_a_mark(env, cursor)
    # Whatever a script names its message, it travels as data (user.*), never a command.
    r = agent_cli(env, "a", "emit", "job.run", '{"argv": ["touch", "/tmp/x"]}')
    assert r.returncode == 0
    r = agent_cli(env, "a", "emit", "bad type!", "--to", "master")
    assert r.returncode == 2 and "invalid message type" in r.stderr


def test_kv_store_coordinates_machines_and_master(env, crc):
    env.group_with_agents("lab", ["a", "b"])
    env.group_with_agents("other", ["x"])
    waiter = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cloudremotecontrol",
            "agent",
            "kv",
            "wait",
            "db/ready",
            "--timeout",
            "30",
            "--state-dir",
            str(env.tmp / "agents" / "b"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    r = agent_cli(env, "a", "kv", "set", "db/ready", '{"ip": "10.0.0.5"}')
    assert r.returncode == 0, r.stderr
    out, err = waiter.communicate(timeout=40)
    assert waiter.returncode == 0, err
    assert json.loads(out) == {"ip": "10.0.0.5"}
    r = crc("kv", "get", "lab", "db/ready")
    assert json.loads(r.stdout) == {"ip": "10.0.0.5"}
    r = crc("kv", "get", "lab", "db/ready", "--json")
    doc = json.loads(r.stdout)
    assert (doc["key"], doc["value"], doc["version"], doc["by"]) == (
        "db/ready",
        {"ip": "10.0.0.5"},
        1,
        "a",
    )
    r = crc("kv", "set", "lab", "mode", "fast")
    assert r.returncode == 0
    r = agent_cli(env, "b", "kv", "get", "mode")
    assert json.loads(r.stdout) == "fast"
    r = agent_cli(env, "b", "kv", "get", "mode", "--json")
    assert json.loads(r.stdout)["value"] == "fast" and json.loads(r.stdout)["by"] == "master"
    # Another group's machine cannot see this group's keys.
    r = agent_cli(env, "x", "kv", "get", "mode")
    assert r.returncode == 4 and "no key 'mode'" in r.stderr
    r = agent_cli(env, "a", "kv", "get", "bad key!")
    assert r.returncode == 2 and "invalid key" in r.stderr
    r = crc("kv", "list", "lab", "--json")
    assert [(k["key"], k["by"]) for k in json.loads(r.stdout)["keys"]] == [
        ("db/ready", "a"),
        ("mode", "master"),
    ]


def test_a_kv_wait_that_times_out_says_what_it_waited_for(env, crc):
    """A wait for a key that was never set says so (not "did not change"); a wait for a
    newer version says which version it waited to pass. CLI, SDK and agent alike."""
    from cloudremotecontrol.errors import TimedOut

    env.group_with_agents("lab", ["a"])
    env.client.kv_set("lab", "mode", "fast")  # version 1
    r = crc("kv", "get", "lab", "never", "--wait", "1s")
    assert r.returncode == 6, r.stderr  # timed out
    assert "key 'never' was not set within 1 s" in r.stderr, r.stderr
    with pytest.raises(TimedOut, match=r"^key 'never' was not set within 1 s$"):
        env.client.kv_get("lab", "never", wait=1)
    with pytest.raises(
        TimedOut, match=r"^key 'mode' did not change within 1 s \(no version above 1\)$"
    ):
        env.client.kv_get("lab", "mode", wait=1, newer_than=1)
    r = agent_cli(env, "a", "kv", "wait", "never", "--timeout", "1")
    assert r.returncode == 6, r.stderr  # timed out
    assert "key 'never' was not set within 1 s" in r.stderr, r.stderr
    r = agent_cli(env, "a", "kv", "wait", "mode", "--newer-than", "1", "--timeout", "1")
    assert r.returncode == 6, r.stderr  # timed out
    assert "key 'mode' did not change within 1 s (no version above 1)" in r.stderr, r.stderr


def test_waits_on_an_agent_end_when_its_machine_is_revoked(env):
    """A script waiting on its agent (a message, a key) when the group is deleted was
    left waiting out its --timeout for an agent that would not come back (it took the
    agent's exit for a restart): it is told at once, exit 3."""
    env.group_with_agents("lab", ["a"])
    state = str(env.tmp / "agents" / "a")
    waits = [
        ["agent", "wait-message", "user.never", "--timeout", "120", "--state-dir", state],
        ["agent", "kv", "wait", "never", "--timeout", "120", "--state-dir", state],
    ]
    waiters = [
        subprocess.Popen(
            [sys.executable, "-m", "cloudremotecontrol", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in waits
    ]
    try:
        time.sleep(2)  # both wait on the agent
        assert all(w.poll() is None for w in waiters)
        env.client.delete_group("lab")
        for w in waiters:
            out, err = w.communicate(timeout=60)  # well before their --timeout of 120 s
            assert w.returncode == 3, err
            # The agent's words, or the server's (a key wait on the server ends first).
            assert out == "" and "Traceback" not in err, err
            assert err in (
                "crc: error: machine credential unknown or revoked\n",
                "crc: error: this machine was revoked (group 'lab' deleted): nothing more "
                "comes to it\n",
            ), err
        # A script that asks after the agent stopped is told the same, at once (not
        # "no agent is running", nor a wait for one that restarts).
        for argv in (waits[0], ["agent", "status", "--state-dir", state]):
            r = env.agent_cli("a", *argv[1:-2], timeout=30)
            assert r.returncode == 3, r.stderr
            assert r.stderr == (
                "crc: error: this machine was revoked (group 'lab' deleted): nothing more "
                "comes to it\n"
            ), r.stderr
    finally:
        for w in waiters:
            w.kill()


def test_a_kv_wait_goes_on_across_a_server_restart(env, crc):
    env.group_with_agents("lab", ["a"])
    state = str(env.tmp / "agents" / "a")
    argv = ["agent", "kv", "wait", "db/up", "--timeout", "60", "--state-dir", state]
    waiter = subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.5)  # its long poll is on the server
        env.server.kill()
        time.sleep(1.0)
        env.server.start()
        r = crc("kv", "set", "lab", "db/up", '"yes"')
        assert r.returncode == 0, r.stderr
        out, err = waiter.communicate(timeout=60)
    finally:
        waiter.kill()
    assert waiter.returncode == 0, err
    assert json.loads(out) == "yes"


def test_crc_wait_message_finds_the_message_a_command_ended_with_even_if_sent_before(env, crc):
    """The rule: from each machine, a message sent after the last command started
    there counts, even if it came before `crc wait` started; --since CURSOR (printed
    with each message) waits for the next one."""
    env.group_with_agents("lab", ["db", "web"])
    # A message from before any command counts (nothing ran on db yet).
    assert agent_cli(env, "db", "emit", "booted", '{"n": 0}').returncode == 0
    r = crc("wait", "lab", "--message", "booted", "--from", "db", "--timeout", "20s")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"n": 0}
    # A command that ends by saying success; `crc wait` starts only afterwards.
    r = crc("run", "lab", "--to", "db", "--", f"{CRC} agent emit success '{{\"n\": 1}}'")
    assert r.returncode == 0, r.stderr
    r = crc("wait", "lab", "--message", "success", "--from", "db", "--timeout", "20s")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"n": 1}
    hint = r.stderr.strip().splitlines()[-1]
    assert "--since" in hint, r.stderr
    cursor = int(hint.rsplit("--since ", 1)[1])
    # A later command makes that message old: waiting again needs a new one.
    r = crc("run", "lab", "--to", "db", "--", "true")
    assert r.returncode == 0, r.stderr
    r = crc("wait", "lab", "--message", "success", "--from", "db", "--timeout", "2s")
    assert r.returncode == 6 and "no user.success message from db" in r.stderr, r.stderr
    # ...while an explicit cursor before it still finds it, and --json says its cursor.
    r = crc(
        "wait",
        "lab",
        "--message",
        "success",
        "--since",
        str(cursor - 1),
        "--json",
        "--timeout",
        "5s",
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["type"], doc["from"], doc["body"], doc["cursor"]) == (
        "user.success",
        "db",
        {"n": 1},
        cursor,
    )
    # A message that arrives while waiting is found too (web: no command ran there).
    waiter = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cloudremotecontrol",
            "wait",
            "lab",
            "--message",
            "up",
            "--from",
            "web",
            "--timeout",
            "30s",
        ],
        env={**os.environ, **env.cli_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1)
    assert agent_cli(env, "web", "emit", "up", '{"port": 80}').returncode == 0
    out, err = waiter.communicate(timeout=40)
    assert waiter.returncode == 0, err
    assert json.loads(out) == {"port": 80}


def test_sdk_wait_message_follows_the_same_rule(env):
    env.group_with_agents("lab", ["a"])
    c = env.client
    done = c.run_wait("lab", "a", command=f"{CRC} agent emit ok '{{\"v\": 1}}'")
    assert done.ok and done.exit_code == 0
    msg = c.wait_message("lab", "ok", sender="a", timeout=20)
    assert (msg.type, msg.sender, msg.body) == ("user.ok", "a", {"v": 1})
    assert msg["from"] == "a" and msg.to_dict()["cursor"] == msg.cursor
    from cloudremotecontrol.errors import Unavailable

    try:
        c.wait_message("lab", "ok", sender="a", since=msg.cursor, timeout=1)
    except Unavailable as exc:
        assert exc.code == "timeout"
    else:
        raise AssertionError("a message after the cursor was invented")


def _assert_nothing_sent_before_a_mark(env, cursor):
    """No message of machine a (not even one the server refused: agent.error) after
    ``cursor`` but a mark sent now (a machine's messages are applied in order)."""
    r = agent_cli(env, "a", "emit", "user.mark", "--to", "master")
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 30
    while True:
        events = [e for e in env.client.events("lab", since=cursor) if e["machine"] == "a"]
        if any(e["type"] == "message" and e["data"]["type"] == "user.mark" for e in events):
            break
        assert time.monotonic() < deadline, events
        time.sleep(0.1)
    assert [e["type"] for e in events if e["type"] in ("agent.error", "message.sent")] == []
    assert [e["data"]["type"] for e in events if e["type"] == "message"] == ["user.mark"]


def test_emit_to_a_peer_the_group_does_not_have_fails_and_sends_nothing(env):
    env.group_with_agents("lab", ["a", "b"])
    env.client.create_group("other", ["x"])
    cursor = env.client.event_cursor("lab")
    for to, what in (
        ("b,nosuch", "no machine 'nosuch' in group 'lab'"),
        ("x", "no machine 'x' in group 'lab'"),  # another group's machine
        ("role=db", "'role=db' matches no machine of group 'lab'"),
    ):
        r = agent_cli(env, "a", "emit", "user.hi", "{}", "--to", to)
        assert r.returncode == 4 and what in r.stderr, (to, r.stderr)
        assert "Traceback" not in r.stderr and r.stdout == ""
    r = agent_cli(env, "a", "emit", "user.hi", "--to", "Bad Name")
    assert r.returncode == 2 and "invalid machine" in r.stderr, r.stderr
    _assert_nothing_sent_before_a_mark(env, cursor)
    # A peer that is there gets it, by name or with all.
    for to in ("b", "all"):
        r = agent_cli(env, "a", "emit", "user.hi", json.dumps({"to": to}), "--to", to, "--json")
        assert r.returncode == 0 and json.loads(r.stdout) == {"ok": True}, r.stderr
        r = agent_cli(env, "b", "wait-message", "user.hi", "--from", "a", "--timeout", "20")
        assert r.returncode == 0 and json.loads(r.stdout) == {"to": to}, r.stderr


def test_emit_to_a_peer_while_the_server_is_down_is_sent_when_it_is_back(env):
    env.group_with_agents("lab", ["a", "b"])
    env.server.stop()
    r = agent_cli(env, "a", "emit", "user.later", '{"n": 1}', "--to", "b")
    assert r.returncode == 0, r.stderr
    assert "cannot check --to against the group's machines now" in r.stderr, r.stderr
    env.server.start()
    r = agent_cli(env, "b", "wait-message", "user.later", "--from", "a", "--timeout", "60")
    assert r.returncode == 0 and json.loads(r.stdout) == {"n": 1}, r.stderr
