"""A user's mistake at the `crc` CLI of the master ends in one clear line and the
documented exit code, never a traceback or the token, and changes nothing on the server:
names and kv keys that would reach another endpoint, NaN/Infinity, a pull destination
that cannot be written, a pasted token, a URL that is no CRC server, a damaged profile,
an option that goes with another."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest


def _clean(r: subprocess.CompletedProcess[str], *secrets: str) -> None:
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("crc: error: "), r.stderr
    for secret in secrets:
        assert secret.strip() not in r.stderr + r.stdout


def _run(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`crc ARGS` with exactly the CRC_* variables of ``env`` (none of the fixture's)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CRC_")}
    return subprocess.run(
        [sys.executable, "-m", "cloudremotecontrol", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, **env},
    )


def test_a_group_name_with_a_slash_is_refused_and_reaches_nothing(env, crc):
    env.client.create_group("g2", ["a"])
    env.client.create_group("lab", ["a"])
    env.client.kv_set("lab", "foo", "bar")
    r = crc("group", "delete", "g2/teardown")
    assert r.returncode == 2 and "invalid group 'g2/teardown'" in r.stderr, r.stderr
    _clean(r)
    r = crc("group", "show", "lab/kv/foo")
    assert r.returncode == 2 and "bar" not in r.stdout, r.stdout + r.stderr
    _clean(r)
    assert {g["group"] for g in env.client.list_groups()} == {"g2", "lab"}


def test_a_kv_key_with_dot_segments_is_refused(env, crc):
    env.client.create_group("lab", ["a"])
    for args in (
        ("set", "lab", "a/../b", "1"),
        ("get", "lab", ".."),
        ("set", "lab", "../../g3", "1"),
        ("set", "lab", "a//b", "1"),
    ):
        r = crc("kv", *args)
        assert r.returncode == 2 and "invalid key" in r.stderr, (args, r.stdout, r.stderr)
        _clean(r)
    assert env.client.kv_list("lab") == []


@pytest.mark.parametrize(
    "args",
    [
        ("kv", "set", "lab", "k", "NaN"),
        ("kv", "set", "lab", "k", '{"a": Infinity}'),
        ("send", "lab", "--to", "a", "user.n", '{"x": NaN}'),
        ("send", "lab", "--to", "a", "user.n", "NaN"),
    ],
)
def test_nan_and_infinity_are_refused_as_the_agent_refuses_them(env, crc, args):
    env.client.create_group("lab", ["a"])
    r = crc(*args)
    assert r.returncode == 2 and "JSON numbers must be finite" in r.stderr, r.stderr
    _clean(r)
    assert env.client.kv_list("lab") == []


@pytest.mark.parametrize("name", ["", "../lab", "Lab"])
def test_audit_of_a_group_name_no_group_can_have_is_refused(env, crc, name):
    """`--group ""` (an unset variable in a script) listed every group's records, and a
    name no group can have an empty list (exit 0), as if nothing had happened there."""
    env.client.create_group("lab", ["a"])
    r = crc("audit", "--group", name)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr == (
        f"crc: error: invalid group {name!r}: use 1-63 lowercase letters, digits and inner "
        "hyphens\n"
    ), r.stderr
    assert r.stdout == ""
    r = crc("audit", "--group", "lab", "--json")
    assert r.returncode == 0, r.stderr
    assert {rec["group"] for rec in json.loads(r.stdout)["records"]} == {"lab"}


def test_kv_get_wait_past_the_servers_bound_names_the_option(env, crc):
    """It was the server's "invalid query.wait: Input should be less than or equal to
    300", naming no option of crc's."""
    env.client.create_group("lab", ["a"])
    r = crc("kv", "get", "lab", "k", "--wait", "10m")
    assert r.returncode == 2, r.stderr
    assert r.stderr == (
        "crc: error: --wait 10m is too long: at most 300 s (5m); wait again for longer\n"
    ), r.stderr
    env.client.kv_set("lab", "k", "v")
    r = crc("kv", "get", "lab", "k", "--wait", "5m")  # the bound itself is fine
    assert r.returncode == 0 and r.stdout == '"v"\n', r.stderr


def test_pull_to_a_missing_directory_is_refused_before_the_job(env, crc, tmp_path):
    env.group_with_agents("lab", ["a"])
    local = tmp_path / "nonexistent-dir" / "x"
    r = crc("pull", "lab", "--from", "a", "/etc/hostname", str(local))
    assert r.returncode == 2 and "cannot write" in r.stderr and "no directory" in r.stderr
    _clean(r)
    assert env.client.list_jobs("lab") == []  # refused before anything ran


@pytest.mark.parametrize(
    "local, why",
    [
        ("", "LOCAL is empty: give the path of the file to write"),
        ("newdir/", "cannot write {tmp}/newdir/: there is no directory {tmp}/newdir"),
    ],
)
def test_pull_to_no_file_path_is_refused_before_the_job(env, crc, tmp_path, local, why):
    """An empty LOCAL was `cannot write : it is a directory` (the current directory);
    `newdir/` started the job, then failed to write (`Not a directory`)."""
    env.group_with_agents("lab", ["a"])
    target = f"{tmp_path}/{local}" if local else local
    r = crc("pull", "lab", "--from", "a", "/etc/hostname", target)
    assert r.returncode == 2, r.stderr
    assert r.stderr == f"crc: error: {why.format(tmp=tmp_path)}\n", r.stderr
    assert env.client.list_jobs("lab") == []
    assert not (tmp_path / "newdir").exists()


def test_a_pasted_token_is_stripped_and_a_bad_one_never_shown(env, crc):
    r = crc("group", "list", extra_env={"CRC_TOKEN": env.token + "\n"})
    assert r.returncode == 0, r.stderr
    r = crc("login", "--url", env.server.url, "--token", " " + env.token + "\n")
    assert r.returncode == 0, r.stderr
    for bad in ("\u201c" + env.token + "\u201d", env.token[:12] + " " + env.token[12:]):
        r = crc("group", "list", extra_env={"CRC_TOKEN": bad})
        assert r.returncode == 2 and "token holds a character" in r.stderr, r.stderr
        _clean(r, env.token[12:], env.token[:12])
        r = crc("login", "--url", env.server.url, "--token", bad)
        assert r.returncode == 2, r.stderr
        _clean(r, env.token[12:], env.token[:12])


class _Plain(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello, I am not CRC\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def plain_server() -> Iterator[str]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Plain)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_login_to_a_server_that_is_not_crc_says_so(plain_server, tmp_path):
    token = "crcm_x_ysecretpart"
    env = {"CRC_CONFIG_DIR": str(tmp_path / "cfg")}
    r = _run("login", "--url", plain_server, "--token", token, env=env)
    assert r.returncode == 6 and "not a CloudRemoteControl server" in r.stderr, r.stderr
    _clean(r, token)
    assert not (tmp_path / "cfg" / "config.json").exists()


@pytest.mark.parametrize("text", ["[1,2]", '"x"', '{"url": 5}'])
def test_a_damaged_profile_says_run_login_again(tmp_path, text):
    (tmp_path / "config.json").write_text(text)
    r = _run("group", "list", env={"CRC_CONFIG_DIR": str(tmp_path)})
    assert r.returncode == 2 and "is damaged: run `crc login` again" in r.stderr, r.stderr
    _clean(r)


def test_login_with_a_config_dir_that_is_a_file_is_a_clear_error(server, tmp_path):
    token = server.add_user("bob")
    afile = tmp_path / "afile"
    afile.write_text("")
    r = _run(
        "login",
        "--url",
        server.url,
        "--token",
        token,
        "--fingerprint",
        server.fingerprint,
        env={"CRC_CONFIG_DIR": str(afile)},
    )
    assert r.returncode == 2 and "cannot save the login profile" in r.stderr, r.stderr
    _clean(r, token)


def test_hosts_ip_without_sync_hosts_is_a_usage_error(env, crc):
    for ip in ("private", "auto"):
        r = crc("group", "create", "g2", "--machines", "x", "--hosts-ip", ip)
        assert r.returncode == 2 and "--sync-hosts" in r.stderr, r.stderr
        _clean(r)
    assert env.client.list_groups() == []
    r = crc("group", "create", "g2", "--machines", "x", "--sync-hosts", "--hosts-ip", "private")
    assert r.returncode == 0, r.stderr


class _Counting(_Plain):
    """A server that only counts the requests it gets (none is expected)."""

    seen: list[str] = []

    def do_POST(self) -> None:
        self.seen.append(self.path)
        self.do_GET()

    def do_GET(self) -> None:
        self.seen.append(self.path)
        super().do_GET()


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (("Bad_Name", "--machines", "a"), "invalid group 'Bad_Name'"),
        (("g/teardown", "--machines", "a"), "invalid group 'g/teardown'"),
        (("lab", "--machines", "a,Web"), "invalid machine 'Web'"),
        (("lab", "--machines", "a,-b"), "invalid machine '-b'"),
        (("lab", "--machines", " , "), "names no machine"),
        (("lab", "--machines", "a,b,a"), "'a' more than once"),
    ],
)
def test_group_create_checks_names_before_asking_the_server(tmp_path, args, what):
    """The server's rule for names (protocol/names.py), checked by the CLI and the SDK
    before anything is sent: a usage error (exit 2), whatever the server is."""
    from cloudremotecontrol.errors import InvalidInput
    from cloudremotecontrol.master.client import Client

    _Counting.seen = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        env = {"CRC_CONFIG_DIR": str(tmp_path), "CRC_URL": url, "CRC_TOKEN": "crcm_x_y"}
        r = _run("group", "create", *args, env=env)
        assert r.returncode == 2 and what in r.stderr, r.stderr
        assert "usage: crc group create" in r.stderr, r.stderr
        _clean(r)
        # The SDK refuses a name the server would refuse before sending it, too.
        name, machines = args[0], args[2].split(",")
        if what.startswith("invalid"):
            with Client(url, "crcm_x_y") as client, pytest.raises(InvalidInput, match=what):
                client.create_group(name, [m.strip() for m in machines])
        assert _Counting.seen == []
    finally:
        srv.shutdown()
        srv.server_close()


DEEP = "[" * 100_000  # small, but deeper than json.loads can recurse


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (("send", "deep", "--to", "a", "hello", DEEP), "BODY is JSON nested too deeply"),
        (("kv", "set", "deep", "k", DEEP), "VALUE is JSON nested too deeply"),
        (("agent", "emit", "hello", DEEP, "--state-dir", "{tmp}"), "BODY is JSON nested"),
        (("agent", "kv", "set", "k", DEEP, "--state-dir", "{tmp}"), "VALUE is JSON nested"),
    ],
)
def test_json_nested_too_deeply_is_a_usage_error_not_a_traceback(env, crc, tmp_path, args, what):
    """A BODY or VALUE of a hundred thousand `[` made json.loads raise RecursionError: a
    traceback and exit 1. It is the user's input: one line, exit 2, nothing sent."""
    env.client.create_group("deep", ["a"])
    r = crc(*(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert r.returncode == 2, r.stderr[-500:]
    assert r.stderr.startswith(f"crc: error: {what}"), r.stderr[-500:]
    assert r.stderr.count("\n") == 1, r.stderr[-500:]
    _clean(r)
    assert env.client.kv_list("deep") == []


def test_an_env_name_no_agent_can_set_is_refused_by_name_and_others_are_set(env, crc):
    """`--env` refuses an item without `=` or with an empty name (exit 2, naming it)
    before anything is sent; a name outside POSIX's portable set reaches the command as
    given; the API refuses a name holding `=` or NUL with a 400 naming it."""
    env.group_with_agents("lab", ["a"])
    for item, why in (("junk", "no '='"), ("=1", "name (before the first '=') is empty")):
        r = crc("run", "lab", "--to", "all", "--env", item, "--", "true")
        assert r.returncode == 2, r.stderr
        assert f"Invalid value for '--env': {item!r}: " in r.stderr and why in r.stderr, r.stderr
        _clean(r)
    assert env.client.list_jobs("lab") == []
    r = crc("run", "lab", "--to", "a", "--env", "A B=1", "--env", "x.y=b=c", "--", "env")
    assert r.returncode == 0, r.stderr
    assert "[a] A B=1\n" in r.stdout and "[a] x.y=b=c\n" in r.stdout, r.stdout
    from cloudremotecontrol.errors import InvalidInput

    for key in ("A=B", "A\x00B", ""):
        with pytest.raises(InvalidInput) as exc:
            env.client.start_job("lab", "a", argv=["true"], env={key: "1"})
        assert f"invalid variable name {key!r} in env" in exc.value.message, exc.value
    assert len(env.client.list_jobs("lab")) == 1


@pytest.mark.parametrize("machines", ["a,,b", "a,b,", ",a", "a, ,b"])
def test_an_empty_name_in_a_machine_list_is_refused(env, crc, machines):
    """`crc group create g --machines "a,,b"` made a and b, the empty item dropped (a
    script's variable left empty), where `crc run --to a,,b` refuses the same list."""
    r = crc("group", "create", "g", "--machines", machines)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "has an empty name" in r.stderr, r.stderr
    _clean(r)
    assert env.client.list_groups() == []


def test_a_message_body_that_is_no_json_says_where_and_help_says_it_is_an_object(env, crc):
    env.client.create_group("lab", ["a"])
    r = crc("send", "lab", "--to", "a", "user.x", '{"a":')
    assert r.returncode == 2, r.stderr
    assert r.stderr == "crc: error: BODY is not valid JSON at line 1 column 6: Expecting value\n"
    r = crc("send", "--help")
    assert r.returncode == 0 and "BODY, a JSON object ({} when" in " ".join(r.stdout.split())


def test_group_show_and_status_list_the_labels_a_selector_reads(env, crc):
    """Which machines `--to role=db` selects was only in `--json`: a LABELS column, shown
    when some machine has labels (escaped, as every text from the server)."""
    r = crc(
        "group", "create", "sel", "--machines", "x,y,z",
        "--label", "x:role=db", "--label", "x:zone=a", "--label", "y:role=web",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    for args in (("group", "show", "sel"), ("status", "sel")):
        r = crc(*args)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].split()[:3] == ["MACHINE", "STATE", "LABELS"], r.stdout
        rows = {line.split()[0]: line.split()[2] for line in lines[1:] if line.strip()}
        assert rows == {"x": "role=db,zone=a", "y": "role=web", "z": "-"}, r.stdout
    env.client.create_group("plain", ["p"])
    r = crc("group", "show", "plain")
    assert "LABELS" not in r.stdout, r.stdout
