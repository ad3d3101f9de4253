"""What the master's commands answer, with a real server and real agents: which user
wrote a key (`crc kv`), the master's key writes in `crc audit` (never their values),
the server's answer to `crc send --json`, the token name of `crc server add-user
--json`, and one rule and one wording for an empty or malformed message type."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from typing import Any

import pytest


def _ok(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert r.returncode == 0, (r.stdout, r.stderr)
    return r


def test_crc_kv_names_the_user_who_wrote_a_key_and_the_audit_lists_it_without_its_value(env, crc):
    # A machine named as the user is: its writes must not pass for the user's.
    env.group_with_agents("lab", ["alice"])
    _ok(crc("kv", "set", "lab", "db/secret", '{"password": "hunter2"}'))
    _ok(crc("kv", "set", "lab", "db/secret", '{"password": "hunter3"}'))
    assert env.agent_cli("alice", "kv", "set", "db/up", "true").returncode == 0

    item = json.loads(_ok(crc("kv", "get", "lab", "db/secret", "--json")).stdout)
    assert (item["by"], item["user"], item["version"]) == ("master", "alice", 2), item
    item = json.loads(_ok(crc("kv", "get", "lab", "db/up", "--json")).stdout)
    assert (item["by"], item["user"]) == ("alice", None), item
    # Piped, `crc kv get` prints the value alone, as scripts read it.
    r = _ok(crc("kv", "get", "lab", "db/secret"))
    assert (r.stdout, r.stderr) == ('{"password": "hunter3"}\n', ""), r
    listed = json.loads(_ok(crc("kv", "list", "lab", "--json")).stdout)
    assert [(k["key"], k["by"], k["user"]) for k in listed["keys"]] == [
        ("db/secret", "master", "alice"),
        ("db/up", "alice", None),
    ], listed
    table = _ok(crc("kv", "list", "lab")).stdout.splitlines()
    assert table[0].split() == ["KEY", "VERSION", "BY", "USER", "UPDATED"], table
    assert table[1].split()[:4] == ["db/secret", "2", "master", "alice"], table
    assert table[2].split()[:4] == ["db/up", "1", "alice", "-"], table
    events = _ok(crc("events", "lab")).stdout
    assert "db/secret version 2 by master (alice)" in events, events
    assert "db/up version 1 by alice\n" in events, events
    # The machine learns that the master wrote it, not which user.
    got = env.agent_cli("alice", "kv", "get", "db/secret", "--json")
    assert got.returncode == 0, got.stderr
    assert "user" not in json.loads(got.stdout) and json.loads(got.stdout)["by"] == "master"

    records = json.loads(_ok(crc("audit", "--group", "lab", "--json")).stdout)["records"]
    sets = [(r["actor"], r["group"], r["detail"]) for r in records if r["action"] == "kv.set"]
    assert sets == [
        ("alice", "lab", {"key": "db/secret", "version": 1}),
        ("alice", "lab", {"key": "db/secret", "version": 2}),
    ], records  # the machine's write is in the events, not the audit
    human = _ok(crc("audit", "--group", "lab")).stdout
    assert re.search(r"alice +kv\.set +lab +key=db/secret version=2", human), human
    assert "hunter" not in human and "hunter" not in json.dumps(records)


def _stderr_on_a_terminal(env: Any, *args: str) -> tuple[str, str]:
    """Run `crc ARGS` with its stderr on a terminal (stdout piped): (stdout, stderr)."""
    master, slave = pty.openpty()
    try:
        r = subprocess.run(
            [sys.executable, "-m", "cloudremotecontrol", *args],
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
            timeout=60,
            env={**os.environ, **env.cli_env},
        )
        os.close(slave)
        slave = -1
        assert r.returncode == 0
        err = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the terminal's other end is closed, all read
                break
            if not chunk:
                break
            err += chunk
        return r.stdout, err.decode()
    finally:
        if slave != -1:
            os.close(slave)
        os.close(master)


def test_crc_kv_get_on_a_terminal_says_who_wrote_the_value_on_stderr(env, crc):
    env.client.create_group("lab", ["a"])
    _ok(crc("kv", "set", "lab", "release", "v42"))
    out, err = _stderr_on_a_terminal(env, "kv", "get", "lab", "release")
    assert out == '"v42"\n', out
    assert re.fullmatch(r"crc: release version 1 by master \(alice\), \d+s ago\r?\n", err), err


def test_crc_send_json_prints_the_server_answer_one_message_id_per_target(env, crc):
    env.group_with_agents("lab", ["a", "b"])
    out = json.loads(_ok(crc("send", "lab", "--to", "all", "config", '{"n": 1}', "--json")).stdout)
    assert (out["group"], out["type"], out["targets"]) == ("lab", "user.config", ["a", "b"]), out
    assert [m["machine"] for m in out["messages"]] == ["a", "b"], out
    ids = [m["id"] for m in out["messages"]]
    assert len(set(ids)) == 2 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids), out
    assert "deliveries" not in out  # the server's own bookkeeping stays there
    # Each machine gets its message (the ids are the envelopes'), as before.
    for m in ("a", "b"):
        got = env.agent_cli(m, "wait-message", "config", "--timeout", "30")
        assert got.returncode == 0 and json.loads(got.stdout) == {"n": 1}, got.stderr
    # The human line is unchanged.
    assert _ok(crc("send", "lab", "--to", "a", "config")).stdout == "sent user.config to a\n"


def test_add_user_json_names_the_token_it_prints_once(env):
    out = env.server.admin("add-user", "bob")
    assert set(out) == {"user", "name", "token"} and out["user"] == "bob", out
    assert out["name"] == "default" and out["token"].startswith("crcm_"), out
    tokens = env.server.admin("list-tokens", "bob")["tokens"]
    assert [t["name"] for t in tokens] == [out["name"]], tokens
    # The name is the one revoke-token takes.
    env.server.admin("revoke-token", "bob", out["name"])
    [token] = env.server.admin("list-tokens", "bob")["tokens"]
    assert token["revoked"] is not None


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("", "invalid message type: empty; give the message's NAME (or user.NAME)"),
        ("user.", "invalid message type: empty; give the message's NAME (or user.NAME)"),
        ("a b", "invalid message type 'a b': give NAME or user.NAME, NAME of 1 to 64 "),
        ("user.x/y", "invalid message type 'user.x/y': give NAME or user.NAME"),
    ],
)
def test_send_and_wait_refuse_a_bad_message_type_alike_before_asking_the_server(
    env, crc, given, says
):
    env.client.create_group("lab", ["a"])
    sent = crc("send", "lab", "--to", "a", given, "{}")
    waited = crc("wait", "lab", "--message", given, "--timeout", "5s")
    for r, hint in ((sent, "TYPE"), (waited, "--message")):
        assert (r.returncode, r.stdout) == (2, ""), (r.stdout, r.stderr)
        assert r.stderr.startswith(f"crc: error: Invalid value for {hint}: {says}"), r.stderr
    # One wording: what follows the name of the argument or option is the same.
    said = [re.sub(r"^.*?(TYPE|--message): | \(usage: .*$", "", r.stderr) for r in (sent, waited)]
    assert said[0] == said[1] and said[0].startswith(says), said
    assert list(env.client.events("lab", types=("message.sent",))) == []
