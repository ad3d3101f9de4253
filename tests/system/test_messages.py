"""Data messages between the master and machines, and machines among themselves."""

from __future__ import annotations

import json
import subprocess
import sys
import time


def agent_cli(env, machine, *args, timeout=60):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "cloudremotecontrol",
            "agent",
            *args,
            "--state-dir",
            str(env.tmp / "agents" / machine),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_master_message_reaches_a_script_on_the_machine(env, crc):
    env.group_with_agents("lab", ["a", "b"])
    r = crc("send", "lab", "--to", "a", "user.config", '{"db": "10.0.0.5"}')
    assert r.returncode == 0, r.stderr
    r = agent_cli(env, "a", "wait-message", "user.config", "--timeout", "20")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {
        "type": "user.config",
        "from": "master",
        "body": {"db": "10.0.0.5"},
    }
    # Handed out once: the next wait times out with a clear error.
    r = agent_cli(env, "a", "wait-message", "user.config", "--timeout", "1")
    assert r.returncode == 6 and "no user.config message" in r.stderr


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
    assert json.loads(r.stdout)["body"] == {"step": "mysql"}
    r = agent_cli(env, "a", "emit", "user.hello", '{"n": 1}', "--to", "b")
    assert r.returncode == 0, r.stderr
    r = agent_cli(env, "b", "wait-message", "user.hello", "--from", "a", "--timeout", "20")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["body"] == {"n": 1}


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
    assert r.returncode == 0  # accepted locally; the server refuses to route it
    events = []
    for _ in range(100):
        events = [e for e in env.client.events("lab", since=cursor) if e["type"] == "agent.error"]
        if events:
            break
        time.sleep(0.1)
    assert events and "no machine 'x'" in events[0]["data"]["message"]
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
    r = crc("kv", "set", "lab", "mode", "fast")
    assert r.returncode == 0
    r = agent_cli(env, "b", "kv", "get", "mode")
    assert json.loads(r.stdout) == "fast"
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
