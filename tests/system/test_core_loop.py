"""The core loop of the README, with the real CLI, server and agents."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from cloudremotecontrol.agent.state import AgentState


def test_run_streams_output_per_machine_and_exits_with_worst_code(env, crc):
    env.group_with_agents("lab", ["a", "b"])
    r = crc("run", "lab", "--to", "all", "--", "uname", "-s")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["[a] Linux", "[b] Linux"]
    r = crc("run", "lab", "--to", "a", "--shell", "sh", "--", "exit 7")
    assert r.returncode == 7
    assert "[a] failed (exit 7)" in r.stderr
    r = crc(
        "run",
        "lab",
        "--to",
        "all",
        "--shell",
        "sh",
        "--",
        'if [ "$CRC_MACHINE" = a ]; then exit 3; else exit 9; fi',
    )
    assert r.returncode == 9
    assert "[a] failed (exit 3)" in r.stderr and "[b] failed (exit 9)" in r.stderr


def test_run_json_gives_one_line_per_target(env, crc):
    env.group_with_agents("lab", ["a", "b"])
    r = crc("run", "lab", "--to", "all", "--json", "--", "echo", "hi")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    results = {x["machine"]: x for x in lines if "status" in x}
    assert {k: (v["status"], v["exit_code"]) for k, v in results.items()} == {
        "a": ("succeeded", 0),
        "b": ("succeeded", 0),
    }
    outputs = [x for x in lines if x.get("stream") == "stdout"]
    assert {(x["machine"], x["data"]) for x in outputs} == {("a", "hi\n"), ("b", "hi\n")}


def test_jobs_do_not_see_the_enrollment_key(env, crc):
    env.group_with_agents("lab", ["a"])
    r = crc("run", "lab", "--to", "a", "--", "env")
    assert r.returncode == 0
    assert "crck_" not in r.stdout and "CRC_KEY" not in r.stdout
    assert "[a] CRC_MACHINE=a" in r.stdout.splitlines()


def test_env_cwd_and_timeout(env, crc, tmp_path):
    env.group_with_agents("lab", ["a"])
    r = crc(
        "run",
        "lab",
        "--to",
        "a",
        "--env",
        "GREETING=hello there",
        "--cwd",
        str(tmp_path),
        "--shell",
        "sh",
        "--",
        'echo "$GREETING from $(pwd)"',
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"[a] hello there from {tmp_path}"
    r = crc("run", "lab", "--to", "a", "--timeout", "1s", "--", "sleep", "30")
    assert r.returncode == 124
    assert "timed_out" in r.stderr


def test_status_wait_and_events_show_the_machines(env, crc):
    out = env.client.create_group("lab", ["a", "b"])
    keys = {m["name"]: m["key"] for m in out["machines"]}
    r = crc("status", "lab", "--json")
    assert {m["name"]: m["state"] for m in json.loads(r.stdout)["machines"]} == {
        "a": "pending",
        "b": "pending",
    }
    for name, key in keys.items():
        env.agent(name, key)
    r = crc("wait", "lab", "--timeout", "60s")
    assert r.returncode == 0, r.stderr
    assert "all 2 machine(s) of lab are ready" in r.stdout
    r = crc("status", "lab", "--json")
    machines = json.loads(r.stdout)["machines"]
    assert all(m["state"] == "ready" and m["last_seen"] for m in machines)
    r = crc("events", "lab", "--json")
    kinds = [json.loads(x)["type"] for x in r.stdout.splitlines()]
    assert kinds.count("machine.state") >= 4  # pending->enrolled->ready for each


def test_wait_times_out_with_a_clear_error(env, crc):
    env.client.create_group("lab", ["a"])
    r = crc("wait", "lab", "--timeout", "1s")
    assert r.returncode == 6
    assert "not ready: a" in r.stderr


def test_wait_json_says_where_things_stand_then_each_change_then_ready(env, crc):
    """`crc wait --json` is JSON lines a script can follow: the machines' states first
    (the last line's shape, ready false), each change as `crc events --json` prints it,
    then the last line, unchanged. It printed nothing until a machine changed."""
    keys = {m["name"]: m["key"] for m in env.client.create_group("lab", ["a", "b"])["machines"]}
    env.agent("a", keys["a"])
    env.wait_state("lab", ["a"], "ready")
    r = crc("wait", "lab", "--json", "--timeout", "0.5s")
    assert r.returncode == 6 and "not ready: b" in r.stderr, r.stderr
    start = {"group": "lab", "ready": False, "machines": ["a", "b"]}
    assert [json.loads(x) for x in r.stdout.splitlines()] == [
        {**start, "states": {"a": "ready", "b": "pending"}}
    ], r.stdout
    cli = subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", "wait", "lab", "--json", "--machines", "b"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **env.cli_env},
    )
    try:
        assert cli.stdout is not None
        first = json.loads(cli.stdout.readline())  # said at once, while b is pending
        assert first == {**start, "machines": ["b"], "states": {"b": "pending"}}, first
        env.agent("b", keys["b"])
        out, _ = cli.communicate(timeout=60)
    finally:
        cli.kill()
        cli.wait()
    lines = [json.loads(x) for x in out.splitlines()]
    assert cli.returncode == 0 and lines[-1] == {**start, "machines": ["b"], "ready": True}, out
    changes = [x["data"]["state"] for x in lines[:-1] if x["type"] == "machine.state"]
    assert changes == ["enrolled", "ready"], lines


def test_credential_kept_private_and_key_never_needed_again(env, crc):
    agents = env.group_with_agents("lab", ["a"])
    cred = env.tmp / "agents" / "a" / "credential.json"
    assert stat.S_IMODE(os.stat(cred).st_mode) == 0o600
    agents["a"].stop()
    env.wait_state("lab", ["a"], "offline")
    # Restart with no key at all: the credential in the state dir is enough.
    env.agent("a", None)
    env.wait_state("lab", ["a"], "ready")
    assert crc("run", "lab", "--to", "a", "--", "true").returncode == 0


def test_group_delete_revokes_and_agents_stop_cleanly(env, crc):
    agents = env.group_with_agents("lab", ["a", "b"])
    r = crc("group", "delete", "lab")
    assert r.returncode == 0, r.stderr
    for a in agents.values():
        assert a.wait(15) == 0
        assert "revoked" in a.log() or "deleted" in a.log()
    # A restarted agent refuses to run with its revoked credential.
    state = AgentState(env.tmp / "agents" / "a")
    assert state.get("revoked")
    state.close()
    r = crc("group", "show", "lab")
    assert r.returncode == 4


def test_a_job_of_a_deleted_group_is_gone_even_when_the_name_is_reused(env, crc):
    from cloudremotecontrol.errors import NotFound

    env.group_with_agents("lab", ["a"])
    job_id = env.client.start_job("lab", "a", argv=["sleep", "60"])["job_id"]
    assert env.client.job(job_id)["group"] == "lab"
    assert crc("group", "delete", "lab").returncode == 0
    # A group of the same name again: the old job must not be read through it.
    assert crc("group", "create", "lab", "--machines", "a").returncode == 0
    for call in (
        lambda: env.client.job(job_id),
        lambda: list(env.client.job_events(job_id, follow=False)),
        lambda: env.client.cancel_job(job_id),
    ):
        with pytest.raises(NotFound, match="its group 'lab' was deleted"):
            call()
    for args in (("job", "show", job_id), ("job", "cancel", job_id)):
        r = crc(*args)
        assert r.returncode == 4, (args, r.stdout, r.stderr)
        assert "was deleted" in r.stderr and "Traceback" not in r.stderr


def test_audit_records_who_started_what_where(env, crc):
    env.group_with_agents("lab", ["a"])
    assert crc("run", "lab", "--to", "a", "--", "echo", "x").returncode == 0
    r = crc("audit", "--group", "lab", "--json")
    records = json.loads(r.stdout)["records"]
    actions = [(x["actor"], x["action"]) for x in records]
    assert ("alice", "group.create") in actions and ("machine:a", "machine.enroll") in actions
    job = next(x for x in records if x["action"] == "job.run")
    assert job["actor"] == "alice" and job["detail"]["argv"] == ["echo", "x"]
    assert job["detail"]["targets"] == ["a"]


def test_one_quoted_string_runs_in_the_default_shell_and_words_run_as_argv(env, crc):
    env.group_with_agents("lab", ["a"])
    r = crc("run", "lab", "--to", "a", "--", "echo one && echo $CRC_MACHINE")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["[a] one", "[a] a"]
    r = crc("run", "lab", "--to", "a", "--", "echo", "$CRC_MACHINE", "&&", "x")
    assert r.stdout.splitlines() == ["[a] $CRC_MACHINE && x"]  # argv: no shell involved


def test_a_group_past_its_ttl_is_revoked_and_flagged(env, crc):
    agents = env.group_with_agents("lab", ["a"])
    r = crc("group", "create", "short", "--machines", "x", "--ttl", "2s", "--json")
    assert r.returncode == 0, r.stderr
    # The live group is untouched; the short one expires: its keys and credentials die.
    import time

    deadline = time.monotonic() + 20
    while not env.client.group("short")["expired"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert env.client.group("short")["machines"][0]["state"] == "revoked"
    # No `crc up` made it: crc never made its machines, `crc down` would refuse it.
    r = crc("group", "list")
    assert "EXPIRED: crc group delete" in r.stdout, r.stdout
    listed = json.loads(crc("group", "list", "--json").stdout)["groups"]
    assert {g["group"]: (g["expired"], g["scenario"]) for g in listed} == {
        "lab": (False, None),
        "short": (True, None),
    }
    assert crc("status", "short").stderr.splitlines()[-1] == (
        "TTL passed: every credential is revoked; its machines are not destroyed (no "
        "`crc up` made them): `crc group delete short` removes the group"
    )
    expired = [e for e in env.client.events("short") if e["type"] == "group.expired"]
    assert expired[0]["data"]["note"] == (
        "its machines are not destroyed (no `crc up` made them): `crc group delete short` "
        "removes the group"
    )
    # Commanding it says so, rather than "no machine" or "not pending". The advice is
    # what applies to a group no `crc up` made.
    for args in (
        ("run", "short", "--to", "all", "--", "true"),
        ("run", "short", "--to", "x", "--", "true"),
        ("send", "short", "--to", "x", "user.hi", "{}"),
        ("bootstrap", "short", "x", "--os", "linux"),
        ("wait", "short", "--timeout", "30s"),  # its machines will never be ready
    ):
        r = crc(*args)
        assert r.returncode == 4, (args, r.stdout, r.stderr)
        assert r.stderr.splitlines()[-1].endswith(
            "group 'short' has expired (its TTL): its machines are revoked; run "
            "`crc group delete short`"
        ), (args, r.stderr)
        assert "Traceback" not in r.stderr
    # Its key/value store is the owner's still (no machine of it can read it any more),
    # and reading the group works, as `crc status` and `crc events` do.
    assert crc("kv", "set", "short", "k", "v").returncode == 0
    assert crc("kv", "get", "short", "k").returncode == 0
    assert crc("events", "short").returncode == 0
    assert agents["a"].alive()
    assert crc("run", "lab", "--to", "a", "--", "true").returncode == 0
    key = json.loads(
        crc("group", "create", "short2", "--machines", "y", "--ttl", "1s", "--json").stdout
    )["machines"][0]["key"]
    time.sleep(2.5)
    late = env.agent("y", key)
    assert late.wait(30) != 0
    assert "revoked" in late.log() or "already used" in late.log()
