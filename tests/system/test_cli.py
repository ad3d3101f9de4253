"""The CLI as a user meets it: the real `crc` as a process, a real server and agents."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import pytest

from cloudremotecontrol.cli.main import cli
from cloudremotecontrol.master.localrun import AgentProcess, ServerProcess, crc_argv

CRC = [sys.executable, "-m", "cloudremotecontrol"]


def _wait(pred: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)
    return value


def _agent_cli(env: Any, machine: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CRC, "agent", *args, "--state-dir", str(env.tmp / "agents" / machine)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _leaves(group: click.Group, path: str = "crc") -> list[tuple[str, click.Command]]:
    out = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):  # loads each (crc's commands load on use)
        cmd = group.get_command(ctx, name)
        assert cmd is not None, name
        if isinstance(cmd, click.Group):
            out += _leaves(cmd, f"{path} {name}")
        else:
            out.append((f"{path} {name}", cmd))
    return out


def test_every_command_takes_json():
    missing = [
        path
        for path, cmd in _leaves(cli)
        if not any("--json" in p.opts for p in cmd.params if isinstance(p, click.Option))
    ]
    assert missing == []


def test_a_second_agent_on_a_state_dir_exits_at_once_and_the_first_keeps_working(env, crc):
    agents = env.group_with_agents("lab", ["a"])
    second = AgentProcess(
        env.tmp / "agents" / "a", env.server.url, None, env.server.fingerprint
    ).start()
    assert second.wait(30) == 9
    assert "already running with state dir" in second.log()
    assert agents["a"].alive()
    # The first agent still has its control socket and its connection.
    r = _agent_cli(env, "a", "status", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["connected"] is True
    assert _agent_cli(env, "a", "progress", "still here").returncode == 0
    r = crc("run", "lab", "--to", "a", "--", "echo", "ok")
    assert r.returncode == 0 and "[a] ok" in r.stdout, r.stderr
    # Once the first one is gone (even killed), the state dir is free again.
    agents["a"].kill()
    env.agent("a", None)
    env.wait_state("lab", ["a"], "ready")


def _start_run(env: Any, *args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [*CRC, "run", *args],
        env={**os.environ, **env.cli_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())
    return proc, first


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_to_crc_run_cancel_the_job_like_ctrl_c(env, crc, tmp_path, sig):
    env.group_with_agents("lab", ["a", "b"])
    marker = tmp_path / "finished"
    proc, first = _start_run(
        env, "lab", "--to", "all", "--json", "--", f"sleep 120; touch {marker}"
    )
    try:
        job_id = first["job_id"]
        assert first == {"job_id": job_id, "group": "lab", "targets": ["a", "b"]}
        _wait(
            lambda: {t["status"] for t in env.client.job(job_id)["targets"]} == {"running"},
            "both targets to run",
        )
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert f"{signal.Signals(sig).name}: cancelling job {job_id}" in err
    results = [json.loads(line) for line in out.splitlines()]
    assert sorted((r["machine"], r["status"], r["job_id"]) for r in results) == [
        ("a", "cancelled", job_id),
        ("b", "cancelled", job_id),
    ]
    assert {t["status"] for t in env.client.job(job_id)["targets"]} == {"cancelled"}
    assert not marker.exists()


def test_crc_run_shows_a_line_written_in_pieces_as_one_line_and_a_long_one_in_64k_pieces(env, crc):
    env.group_with_agents("lab", ["a", "b"])
    # Pieces a slow command writes reach the master apart; a long line comes in many,
    # and is printed in pieces of 65,536 characters, each with the prefix (at most that
    # much of a line is held per machine and stream).
    script = (
        'printf part; sleep 0.3; printf ial; sleep 0.3; echo " line"; '
        "head -c 300000 /dev/zero | tr '\\0' x; echo; printf 'no end'"
    )
    r = crc("run", "lab", "--to", "all", "--", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    for m in ("a", "b"):
        mine = [ln for ln in r.stdout.splitlines() if ln.startswith(f"[{m}] ")]
        assert mine == [
            f"[{m}] partial line",
            *[f"[{m}] " + "x" * 65536] * 4,
            f"[{m}] " + "x" * (300000 - 4 * 65536),
            f"[{m}] no end",
        ]
        # Joined again by their prefix, the pieces are the line.
        assert "".join(ln[len(f"[{m}] ") :] for ln in mine[1:-1]) == "x" * 300000


@pytest.mark.parametrize("as_json", [False, True])
def test_crc_run_whose_output_is_closed_cancels_the_job_and_exits_141(env, tmp_path, as_json):
    env.group_with_agents("lab", ["a", "b"])
    marker = tmp_path / "finished"
    script = f"for i in $(seq 1 600); do echo line $i; sleep 0.1; done; touch {marker}"
    proc = subprocess.Popen(
        [*CRC, "run", "lab", "--to", "all", *(["--json"] if as_json else []), "--", script],
        env={**os.environ, **env.cli_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        first = proc.stdout.readline()  # `crc run ... | head -1`
        proc.stdout.close()
        err = proc.stderr.read()
        proc.stderr.close()
        assert proc.wait(timeout=60) == 141, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in err and "Exception" not in err, err
    job_id = err.split("job ", 1)[1].split()[0]
    if as_json:
        assert json.loads(first)["job_id"] == job_id
    else:
        assert first.startswith(("[a] line ", "[b] line ")), first
    assert f"crc: output closed: cancelled job {job_id} on every machine" in err, err
    _wait(
        lambda: {t["status"] for t in env.client.job(job_id)["targets"]} == {"cancelled"},
        "the targets to be cancelled",
    )
    assert not marker.exists()


def test_crc_events_whose_output_is_closed_exits_141_without_a_word(env):
    env.client.create_group("lab", ["a"])
    proc = subprocess.Popen(
        [*CRC, "events", "lab", "--follow", "--json"],
        env={**os.environ, **env.cli_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        first = json.loads(proc.stdout.readline())  # `crc events -f | head -1`
        proc.stdout.close()
        for n in range(50):  # events until crc writes one to the closed pipe
            env.client.kv_set("lab", f"k{n}", n)
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        err = proc.stderr.read()
        proc.stderr.close()
        assert proc.wait(timeout=30) == 141, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert first["type"] == "group.created" and err == "", err


@pytest.mark.parametrize(
    "command", [[""], ["", "x"], ["  "], ["--shell", "bash", "--", " "]], ids=repr
)
def test_crc_run_refuses_an_empty_command_before_sending_anything(env, crc, command):
    env.group_with_agents("lab", ["a"])
    args = command if command[0] == "--shell" else ["--", *command]
    r = crc("run", "lab", "--to", "a", *args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("crc: error: empty COMMAND: give the program to run"), r.stderr
    assert "usage: crc run" in r.stderr and r.stdout == ""
    assert env.client.list_jobs("lab", 10) == []


def test_crc_send_refuses_a_body_or_type_it_would_not_send_as_given(env, crc):
    # 0, false, "" and [] used to be sent as {}; an empty TYPE as "user.".
    env.group_with_agents("lab", ["a"])
    for body in ["0", "false", '""', "[]", "[1, 2]"]:
        r = crc("send", "lab", "--to", "a", "user.x", body)
        assert (r.returncode, r.stdout) == (2, ""), (body, r.stdout, r.stderr)
        assert r.stderr == "crc: error: message body must be a JSON object\n", r.stderr
    for type_ in ["", "user."]:
        r = crc("send", "lab", "--to", "a", type_, "{}")
        assert r.returncode == 2, r.stderr
        assert (
            "Invalid value for TYPE: invalid message type: empty; give the message's NAME"
            in r.stderr
        ), r.stderr
    assert list(env.client.events("lab", types=("message.sent",))) == []
    r = crc("send", "lab", "--to", "a", "user.x")  # no BODY: an empty one
    assert r.returncode == 0, r.stderr
    [sent] = list(env.client.events("lab", types=("message.sent",)))
    assert sent.data["body"] == {}


def test_a_mistyped_option_is_refused_never_run_as_the_command(env, crc):
    # A typo in a safety option (--max-concurency) used to become the command line of a
    # job on every target; refused as any unknown option is, before anything is sent.
    env.group_with_agents("lab", ["a"])
    for args, option, meant in [
        (
            ["run", "lab", "--to", "all", "--max-concurency", "1", "--", "echo", "x"],
            "--max-concurency",
            "--max-concurrency",
        ),
        (["run", "lab", "--to", "a", "--timout", "5s", "echo", "hi"], "--timout", "--timeout"),
        (["run", "--bogus", "lab", "--to", "a", "--", "true"], "--bogus", None),
        (["run", "lab", "--to", "a", "-x", "--", "true"], "-x", None),
        (["shell", "lab", "a", "--no-recrd", "--", "echo", "hi"], "--no-recrd", "--no-record"),
    ]:
        r = crc(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        # click's own words, which its versions put differently ("No such option 'X'.
        # Did you mean 'Y'?" in 8.3, "No such option: X (Possible options: Y, Z)" in 8.2).
        assert r.stderr.startswith("crc: error: No such option"), r.stderr
        named = re.findall(r"-[-a-z]+", r.stderr.split("(usage:", 1)[0])
        assert named[0] == option and "usage: crc " in r.stderr, r.stderr
        assert meant is None or meant in named[1:], r.stderr
        assert r.stdout == ""
    assert env.client.list_jobs("lab", 10) == []
    assert env.client.sessions("lab") == []
    # What follows the command, or --, is the command's own: passed on as before.
    r = crc("run", "lab", "--to", "a", "sh", "-c", "echo $0 $1", "-x", "--timout")
    assert r.returncode == 0 and r.stdout == "[a] -x --timout\n", (r.stdout, r.stderr)
    r = crc("run", "lab", "--to", "a", "--", "-x")  # a program named -x (there is none)
    assert r.returncode == 127 and "-x" in r.stderr, r.stderr


@pytest.mark.parametrize("sub", ["show", "cancel"])
@pytest.mark.parametrize("bad", ["../../x", "abc", "0" * 31 + "/", "\x1b[2J" + "0" * 28])
def test_crc_job_refuses_what_is_not_a_job_id(env, crc, sub, bad):
    r = crc("job", sub, bad)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("crc: error: Invalid value for 'JOB_ID': not a job id: "), r.stderr
    assert "32 hex digits" in r.stderr and "\x1b" not in r.stderr, r.stderr
    r = crc("job", sub, "0" * 32)  # the shape of a job id: asked, and not found
    assert r.returncode == 4 and "no job" in r.stderr, r.stderr


def test_crc_job_list_show_and_cancel(env, crc):
    env.group_with_agents("lab", ["a"])
    r = crc("run", "lab", "--to", "a", "--json", "--", "echo", "hi")
    assert r.returncode == 0, r.stderr
    done_id = json.loads(r.stdout.splitlines()[0])["job_id"]
    started = env.client.start_job("lab", "a", argv=["sleep", "120"])
    job_id = started["job_id"]
    _wait(lambda: env.client.job(job_id)["targets"][0]["status"] == "running", "the job to run")
    r = crc("job", "list", "lab", "--json")
    assert r.returncode == 0, r.stderr
    jobs = json.loads(r.stdout)["jobs"]
    assert [(j["job_id"], j["statuses"]) for j in jobs] == [
        (done_id, {"succeeded": 1}),
        (job_id, {"running": 1}),
    ]
    assert jobs[1]["argv"] == ["sleep", "120"] and jobs[1]["done"] is False
    r = crc("job", "list", "lab")
    assert r.returncode == 0 and job_id in r.stdout and "sleep 120" in r.stdout, r.stderr
    r = crc("job", "cancel", job_id)
    assert r.returncode == 0 and f"cancelling job {job_id} on a" in r.stdout, r.stderr
    _wait(lambda: env.client.job(job_id)["targets"][0]["status"] == "cancelled", "the cancel")
    r = crc("job", "show", job_id)
    assert r.returncode == 0, r.stderr
    assert "sleep 120" in r.stdout and "cancelled" in r.stdout
    r = crc("job", "show", job_id, "--json")
    assert json.loads(r.stdout)["targets"][0]["status"] == "cancelled"
    r = crc("job", "cancel", job_id)
    assert r.returncode == 0 and "nothing left to cancel" in r.stdout
    r = crc("job", "show", "0" * 32)
    assert r.returncode == 4 and r.stderr.startswith("crc: error: no job"), r.stderr


def test_crc_own_failures_can_be_told_from_the_remote_exit_code(env, crc):
    env.group_with_agents("lab", ["a"])
    # The remote command's code passes through...
    r = crc("run", "lab", "--to", "a", "--error-exit", "255", "--", "sh", "-c", "exit 4")
    assert r.returncode == 4, r.stderr
    # ...while crc's own "not found" (4 as well, by default) becomes 255 when asked.
    r = crc("run", "lab", "--to", "nosuch", "--", "true")
    assert r.returncode == 4
    r = crc("run", "lab", "--to", "nosuch", "--error-exit", "255", "--", "true")
    assert r.returncode == 255 and "no machine 'nosuch'" in r.stderr
    r = crc("run", "lab", "--to", "role=db", "--error-exit", "200", "--", "true")
    assert r.returncode == 200 and "matches no machine" in r.stderr
    r = crc(
        "run", "lab", "--to", "a", "--error-exit", "255", "--", "true", extra_env={"CRC_TOKEN": "x"}
    )
    assert r.returncode == 255
    # Bad input caught before anything is sent is crc's own failure too.
    for bad in (
        ["run", "lab", "--error-exit", "255", "--", "true"],  # no --to
        ["run", "lab", "--to", "a", "--error-exit", "255", "--shell", "fish", "--", "true"],
        ["push", "lab", "--to", "a", "--error-exit", "255", "/nonexistent/file", "/tmp/x"],
    ):
        r = crc(*bad)
        assert r.returncode == 255 and r.stderr.startswith("crc: error: "), (bad, r.stderr)
    r = crc("run", "lab", "--to", "a", "--error-exit", "abc", "--", "true")
    assert r.returncode == 2, r.stderr  # its own value cannot be used: the usual code


def test_usage_errors_are_one_line_with_the_usage_and_where_to_find_help(env, crc):
    for args, part in [
        (["run", "lab"], "Missing argument"),
        (["run", "lab", "--to", "a", "--shell", "fish", "--", "true"], "'fish'"),
        (["group", "create"], "Missing argument 'GROUP'"),
        (["status", "--bogus"], "No such option"),
        (["nosuch"], "No such command"),
    ]:
        r = crc(*args)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, (args, r.stderr)
        assert lines[0].startswith("crc: error: ") and part in lines[0], (args, lines)
        assert "--help`" in lines[0] and "usage: crc" in lines[0], lines
    r = crc()
    assert r.returncode == 0 and "Usage: crc" in r.stdout


def test_login_says_what_is_wrong_with_a_token_or_a_self_signed_server(env, crc, tmp_path):
    url, fp = env.server.url, env.server.fingerprint
    cfg = {"CRC_CONFIG_DIR": str(tmp_path / "cfg"), "CRC_URL": None, "CRC_TOKEN": None}
    r = crc("login", "--url", url, "--token", "garbage", "--fingerprint", fp, extra_env=cfg)
    assert r.returncode == 3, r.stderr
    assert "rejected this token" in r.stderr and "crc server add-user" in r.stderr
    assert "run `crc login`" not in r.stderr
    r = crc("login", "--url", url, "--token", env.token, extra_env={**cfg, "CRC_FINGERPRINT": None})
    assert r.returncode == 7, r.stderr
    line = r.stderr.strip()
    assert "self-signed" in line and "--fingerprint" in line and fp in line, line
    assert "Traceback" not in line and len(line.splitlines()) == 1
    r = crc("login", "--url", url, "--token", env.token, "--fingerprint", fp, extra_env=cfg)
    assert r.returncode == 0, r.stderr


def test_login_saves_the_url_list_without_empty_entries(env, crc, tmp_path):
    """A script's trailing comma (`--url "$A,$B"` with B unset) was saved in the profile
    as given; the list is saved as checked, and a list of nothing is a usage error."""
    url, fp = env.server.url, env.server.fingerprint
    cfg = {"CRC_CONFIG_DIR": str(tmp_path / "cfg"), "CRC_URL": None, "CRC_TOKEN": None}
    profile = tmp_path / "cfg" / "config.json"
    r = crc(
        "login", "--url", f" {url}/ ,,", "--token", env.token, "--fingerprint", fp, extra_env=cfg
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"logged in to {url} as alice"), r.stdout
    assert json.loads(profile.read_text())["url"] == url
    r = crc("login", "--url", " , ", "--token", env.token, "--fingerprint", fp, extra_env=cfg)
    assert r.returncode == 2 and "names no server URL" in r.stderr, r.stderr


def test_login_takes_the_token_from_stdin_the_environment_or_a_prompt(env, crc, tmp_path):
    import pexpect

    url, fp = env.server.url, env.server.fingerprint
    cfg = {"CRC_CONFIG_DIR": str(tmp_path / "cfg"), "CRC_URL": None, "CRC_TOKEN": None}
    profile = tmp_path / "cfg" / "config.json"
    r = crc("login", "--url", url, "--token", "-", "--fingerprint", fp, input=env.token + "\n")
    assert r.returncode == 0, r.stderr
    r = crc("login", "--url", url, "--fingerprint", fp, input="", extra_env=cfg)
    assert r.returncode == 2, r.stderr
    assert "--token -" in r.stderr and "CRC_TOKEN" in r.stderr and "Traceback" not in r.stderr
    r = crc("login", "--url", url, "--token", "-", "--fingerprint", fp, input="\n", extra_env=cfg)
    assert r.returncode == 2 and "standard input held no token" in r.stderr, r.stderr
    assert not profile.exists()
    r = crc(
        "login", extra_env={**cfg, "CRC_URL": url, "CRC_TOKEN": env.token, "CRC_FINGERPRINT": fp}
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(profile.read_text())["token"] == env.token
    profile.unlink()
    # At a terminal: asked for, and not echoed.
    child = pexpect.spawn(
        sys.executable,
        ["-m", "cloudremotecontrol", "login", "--url", url, "--fingerprint", fp],
        env={k: v for k, v in {**os.environ, **cfg}.items() if v is not None},
        timeout=60,
    )
    child.expect("Master token: ")
    child.sendline(env.token)
    child.expect(pexpect.EOF)
    child.close()
    shown = child.before.decode()
    assert child.exitstatus == 0, shown
    assert "logged in to" in shown and env.token not in shown, shown
    assert json.loads(profile.read_text())["token"] == env.token


def test_server_lists_users_and_their_tokens_without_a_secret(env):
    srv = env.server
    laptop = srv.admin("add-token", "alice", "laptop")["token"]
    srv.admin("add-token", "alice", "ci")
    srv.admin("revoke-token", "alice", "ci")
    bob = srv.add_user("bob")
    env.client.create_group("lab", ["a"])
    env.client.create_group("lab2", ["a"])
    env.client.delete_group("lab2")
    users = {u["user"]: u for u in srv.admin("list-users")["users"]}
    assert users["alice"]["tokens"] == 2 and users["alice"]["groups"] == 1, users
    assert users["bob"]["tokens"] == 1 and users["bob"]["groups"] == 0, users
    tokens = srv.admin("list-tokens", "alice")["tokens"]
    assert [t["name"] for t in tokens] == ["default", "laptop", "ci"], tokens
    assert [t["revoked"] is None for t in tokens] == [True, True, False], tokens
    # As a table (the same names and dates, no secret), and a clear error for no user.
    table = subprocess.run(
        crc_argv("server", "list-tokens", "alice", "--data-dir", str(srv.data_dir)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert table.returncode == 0, table.stderr
    assert table.stdout.split()[:3] == ["NAME", "CREATED", "REVOKED"], table.stdout
    assert "laptop" in table.stdout and " UTC" in table.stdout
    for secret in (laptop, bob, env.token):
        assert secret not in table.stdout and secret[:22] not in table.stdout
    missing = subprocess.run(
        crc_argv("server", "list-tokens", "nobody", "--data-dir", str(srv.data_dir)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 4 and missing.stderr == "crc: error: no user 'nobody'\n"


def test_agent_hosts_file_lets_hosts_sync_be_tried_without_root(env, crc, tmp_path):
    out = env.client.create_group("lab", ["a", "b"])
    files = {}
    for m in out["machines"]:  # one after the other: a enrolls first
        files[m["name"]] = tmp_path / f"hosts-{m['name']}"
        files[m["name"]].write_text("127.0.0.1 localhost\n")
        env.agent(m["name"], m["key"], extra=["--hosts-file", str(files[m["name"]])])
        env.wait_state("lab", [m["name"]], "ready")
    before = Path("/etc/hosts").read_bytes()
    r = crc("hosts", "sync", "lab", "--ip", "public")
    assert r.returncode == 0, r.stderr
    for f in files.values():
        text = f.read_text()
        assert text.startswith("127.0.0.1 localhost\n")
        # Both seen at one address: the one enrolled first first (reverse lookups).
        assert "127.0.0.1 a a.lab b b.lab" in text
        assert str(f) in r.stdout
    assert Path("/etc/hosts").read_bytes() == before


def test_server_run_says_where_it_serves_and_when_it_stops(tmp_path):
    srv = ServerProcess(tmp_path / "srv").start()
    try:
        _wait(lambda: "serving" in srv.log_path.read_text(), "the start line")
    finally:
        srv.stop()
    log = srv.log_path.read_text()
    start = next(line for line in log.splitlines() if "serving" in line)
    assert srv.url in start and srv.fingerprint in start
    assert "sqlite" in start and f"pid {srv.proc.pid}" in start
    assert "crc server: stopped" in log


def test_events_audit_and_status_read_cleanly(env, crc, tmp_path):
    out = env.client.create_group("lab", ["a"])
    env.agent("a", out["machines"][0]["key"], extra=["--gate-ready"])
    env.wait_state("lab", ["a"], "enrolled")
    assert _agent_cli(env, "a", "progress", "installing", "--percent", "40").returncode == 0
    _wait(lambda: env.client.group("lab")["machines"][0]["progress"], "the progress")
    r = crc("status", "lab")
    assert "40% installing" in r.stdout, r.stdout
    assert _agent_cli(env, "a", "ready").returncode == 0
    env.wait_state("lab", ["a"], "ready")
    # Ready: the start-up progress is over, the table no longer shows it...
    r = crc("status", "lab")
    assert r.returncode == 0 and "installing" not in r.stdout, r.stdout
    # ...while what a script reports afterwards is shown.
    assert _agent_cli(env, "a", "progress", "serving").returncode == 0
    _wait(lambda: "serving" in crc("status", "lab").stdout, "the new progress")
    # Events: a job's status says its exit code only when there is one.
    assert crc("run", "lab", "--to", "a", "--", "true").returncode == 0
    job = env.client.start_job("lab", "a", argv=["sleep", "60"])
    _wait(lambda: env.client.job(job["job_id"])["targets"][0]["status"] == "running", "run")
    env.client.cancel_job(job["job_id"])
    _wait(lambda: env.client.job(job["job_id"])["targets"][0]["status"] == "cancelled", "stop")
    remote_dir = tmp_path / ("a-rather-long-directory-name-" * 4)
    remote_dir.mkdir()
    remote = str(remote_dir / "file.conf")
    (tmp_path / "f").write_text("x")
    assert crc("push", "lab", "--to", "a", str(tmp_path / "f"), remote).returncode == 0
    r = crc("events", "lab")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "exit=None" not in r.stdout and "None" not in r.stdout, r.stdout
    assert any("job.status" in x and "succeeded (exit 0)" in x for x in lines), r.stdout
    assert any(x.endswith("cancelled: cancelled by the master") for x in lines), r.stdout
    facts = next(x for x in lines if " facts " in x)
    assert "hostname=" in facts and "ips=" in facts and "..." not in facts, facts
    assert any("job.created" in x and x.endswith(f"by alice: path={remote}") for x in lines)
    assert any("job.created" in x and x.endswith("by alice: sleep 60") for x in lines)
    # Audit: a header, and whole values.
    r = crc("audit", "--group", "lab")
    assert r.returncode == 0, r.stderr
    header = r.stdout.splitlines()[0].split()
    assert header == ["TIME", "ACTOR", "ACTION", "GROUP", "DETAIL"], r.stdout
    assert remote in r.stdout
