"""More of the master's and the agent's mistakes that end in one clear line and the
documented exit code, never a traceback, and change nothing on the server:
`crc bootstrap` checks everything (and opens its output) before it issues a fresh key,
a damaged profile says run `crc login` again, a URL that is no CRC server says so (exit
6) whatever it answers, `crc agent run` without a fingerprint against a self-signed
server is exit 7 as `crc login`, `crc login` takes a server's address only, and
`crc sessions play --speed` is bounded."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cloudremotecontrol.master.client import Client


def _clean(
    r: subprocess.CompletedProcess[str], *secrets: str, prefix: str = "crc: error: "
) -> None:
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(prefix), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for secret in secrets:
        assert secret not in r.stderr + r.stdout


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


# -- crc bootstrap: nothing is reissued for a command that fails --------------------------


def _reissues(client: Client, group: str) -> int:
    return sum(1 for r in client.audit(group) if r.get("action") == "machine.key_reissue")


def test_bootstrap_checks_everything_before_it_issues_a_fresh_key(env, crc, tmp_path):
    out = env.client.create_group("rb", ["m1"])
    key = out["machines"][0]["key"]
    badkey = tmp_path / "badkey"
    badkey.write_bytes(b"\xff\xfe")
    attempts = [
        ("--os", "linux", "--url", "https://example.com/path"),
        ("--os", "linux", "--url", "https://u:pw@example.com"),
        ("--os", "windows", "--python-version", "abc"),
        ("--os", "linux", "--format", "cmd"),
        ("--os", "linux", "--key-ttl", "soon"),
        ("--os", "linux", "-o", str(tmp_path / "nodir" / "boot.sh")),
        ("--os", "linux", "-o", str(tmp_path)),
        ("--os", "linux", "--key-file", str(badkey)),
        ("--os", "linux", "--then", str(badkey)),
    ]
    for args in attempts:
        r = crc("bootstrap", "rb", "m1", *args)
        assert r.returncode == 2, (args, r.stderr)
        _clean(r, "pw")
        assert r.stdout == "", args
    assert _reissues(env.client, "rb") == 0
    assert not (tmp_path / "nodir").exists()
    # The key `crc group create` printed still works.
    env.agent("m1", key)
    env.wait_state("rb", ["m1"], "ready")


def test_bootstrap_writes_its_output_with_a_fresh_key(env, crc, tmp_path):
    env.client.create_group("rb", ["m1"])
    target = tmp_path / "boot.sh"
    r = crc(
        "bootstrap",
        "rb",
        "m1",
        "--os",
        "linux",
        "--url",
        "https://crc.example.net:8443",
        "-o",
        str(target),
    )
    assert r.returncode == 0, r.stderr
    assert "crck_" in target.read_text() and (target.stat().st_mode & 0o777) == 0o600
    assert _reissues(env.client, "rb") == 1
    # A file that exists is rewritten whole.
    target.write_text("x" * 100_000)
    r = crc(
        "bootstrap",
        "rb",
        "m1",
        "--os",
        "linux",
        "--url",
        "https://crc.example.net:8443",
        "-o",
        str(target),
    )
    assert r.returncode == 0, r.stderr
    assert target.read_text().startswith("#!") and "x" * 100 not in target.read_text()


def test_bootstrap_makes_an_existing_output_file_0600_before_it_holds_the_key(env, crc, tmp_path):
    env.client.create_group("rb", ["m1"])
    target = tmp_path / "boot.sh"
    target.write_text("an older script\n")
    target.chmod(0o644)  # readable by every user of this computer
    url = "https://crc.example.net:8443"
    r = crc("bootstrap", "rb", "m1", "--os", "linux", "--url", url, "-o", str(target))
    assert r.returncode == 0, r.stderr
    assert "crck_" in target.read_text()
    assert (target.stat().st_mode & 0o777) == 0o600  # as the line says
    assert r.stderr == f"wrote {target} (holds the enrollment key of m1: mode 0600)\n"


def test_bootstrap_writes_to_a_pipe_or_device_after_issuing_the_key(env, crc, tmp_path):
    """`-o /dev/stdout`, `-o >(ssh vm 'cat > boot.sh')`: no mode to set nor length to
    cut there; trying failed with EINVAL once the fresh key was issued, so the machine's
    old key no longer worked and the new one was never written."""
    key = env.client.create_group("rb", ["m1"])["machines"][0]["key"]
    url = "https://crc.example.net:8443"
    r = crc("bootstrap", "rb", "m1", "--os", "linux", "--url", url, "-o", "/dev/stdout")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("#!") and "crck_" in r.stdout and key not in r.stdout
    assert r.stderr == "wrote /dev/stdout (holds the enrollment key of m1)\n", r.stderr
    r = crc("bootstrap", "rb", "m1", "--os", "linux", "--url", url, "-o", os.devnull)
    assert r.returncode == 0, r.stderr
    assert _reissues(env.client, "rb") == 2


# -- a damaged profile ----------------------------------------------------------------------


def test_a_profile_that_is_not_utf8_says_run_login_again(tmp_path):
    (tmp_path / "config.json").write_bytes(b'{"url":"https://127.0.0.1:9","token":"\xff"}')
    r = _run("group", "list", env={"CRC_CONFIG_DIR": str(tmp_path)})
    assert r.returncode == 2 and "is damaged: run `crc login` again" in r.stderr, r.stderr
    _clean(r)


def test_a_profile_whose_certificate_is_not_pem_says_run_login_again(server, tmp_path):
    profile = {
        "url": server.url,
        "token": server.add_user("bob"),
        "fingerprint": server.fingerprint,
        "cert_pem": "garbage",
    }
    (tmp_path / "config.json").write_text(json.dumps(profile))
    r = _run("group", "list", env={"CRC_CONFIG_DIR": str(tmp_path)})
    assert r.returncode == 2 and "is damaged: run `crc login` again" in r.stderr, r.stderr
    _clean(r, profile["token"])


# -- a URL that is not a CRC server --------------------------------------------------------


class _Other(http.server.BaseHTTPRequestHandler):
    """Some other web server: an HTML 404 page for most paths, JSON of its own for two."""

    pages: dict[str, bytes] = {
        "/v1/whoami": b'{"user": "x"}',
        "/v1/groups": b'{"groups": [{"x": 1}]}',
        "/v1/groups/g1": b'{"name": "g1"}',
    }

    def do_GET(self) -> None:
        body = self.pages.get(self.path)
        if body is None:
            self._send(404, "text/html", b"<html><body><h1>Not Found</h1></body></html>")
        else:
            self._send(200, "application/json", body)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.path == "/v1/bad-json-error":
            self._send(400, "application/json", b'{"detail": "nope"}')
        else:
            self._send(404, "text/html", b"<html>Not Found</html>")

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class _Html404(_Other):
    pages: dict[str, bytes] = {}


def _serve(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def other_server() -> Iterator[str]:
    yield from _serve(_Other)


@pytest.fixture
def html_server() -> Iterator[str]:
    yield from _serve(_Html404)


def test_an_html_404_page_is_not_a_crc_server(html_server, tmp_path):
    token = "crcm_x_ysecretpart"
    other = {"CRC_URL": html_server, "CRC_TOKEN": token, "CRC_CONFIG_DIR": str(tmp_path)}
    r = _run("login", "--url", html_server, "--token", token, env=other)
    assert r.returncode == 6 and "not a CloudRemoteControl server" in r.stderr, r.stderr
    assert "HTTP 404 with text/html" in r.stderr
    _clean(r, "secretpart")
    for args in (
        ("job", "show", "0" * 32),
        ("group", "delete", "g1"),
        ("audit",),
        ("events", "g1"),  # an event stream: not waited out as a server restarting
    ):
        r = _run(*args, env=other, timeout=30)
        assert r.returncode == 6 and "not a CloudRemoteControl server" in r.stderr, r.stderr
        _clean(r, "secretpart")


def test_json_of_another_shape_is_not_a_crc_server(other_server, tmp_path):
    other = {"CRC_URL": other_server, "CRC_TOKEN": "crcm_x_y", "CRC_CONFIG_DIR": str(tmp_path)}
    for args in (("group", "list"), ("group", "show", "g1"), ("status", "g1")):
        r = _run(*args, env=other)
        assert r.returncode == 6 and "CloudRemoteControl server" in r.stderr, (args, r.stderr)
        _clean(r)


def test_the_servers_own_errors_keep_their_exit_codes(env, crc):
    r = crc("group", "show", "nosuch")
    assert r.returncode == 4 and "not a CloudRemoteControl" not in r.stderr, r.stderr
    r = crc("job", "show", "0" * 32)
    assert r.returncode == 4 and "not a CloudRemoteControl" not in r.stderr, r.stderr
    r = _run("group", "list", env={**env.cli_env, "CRC_TOKEN": "crcm_0000000000000000_x"})
    assert r.returncode == 3 and "not a CloudRemoteControl" not in r.stderr, r.stderr


def test_a_master_command_without_a_pin_says_how_to_pin_for_itself(env):
    # `crc group list` has no --fingerprint: the advice was to pass one.
    cli_env = {k: v for k, v in env.cli_env.items() if k != "CRC_FINGERPRINT"}
    r = _run("group", "list", env=cli_env)
    assert r.returncode == 7, r.stderr
    assert "not trusted" in r.stderr and "CRC_FINGERPRINT=sha256:..." in r.stderr, r.stderr
    assert "--fingerprint sha256:... where the command has that option" in r.stderr
    assert env.server.fingerprint in r.stderr


# -- crc agent run ---------------------------------------------------------------------------


KEY = "crck_0000000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


@pytest.mark.parametrize("entry", ["crc", "lean"])
def test_agent_run_without_a_fingerprint_on_a_self_signed_server_is_exit_7(server, tmp_path, entry):
    argv = (
        [sys.executable, "-m", "cloudremotecontrol", "agent", "run"]
        if entry == "crc"
        else [sys.executable, "-m", "cloudremotecontrol.agent", "run"]
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("CRC_")}
    r = subprocess.run(
        [
            *argv,
            "--state-dir",
            str(tmp_path / "st"),
            "--url",
            server.url,
            "--hosts-file",
            str(tmp_path / "hosts"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, "CRC_KEY": KEY},
    )
    assert r.returncode == 7, r.stderr
    assert "not trusted" in r.stderr and "--fingerprint" in r.stderr, r.stderr
    assert server.fingerprint in r.stderr  # the certificate it presented, to compare
    _clean(r, KEY, prefix="crc: error: " if entry == "crc" else "crc agent: error: ")


def test_agent_run_with_a_key_file_that_is_not_text_is_exit_2(server, tmp_path):
    badkey = tmp_path / "badkey"
    badkey.write_bytes(b"\xff")
    r = _run(
        "agent",
        "run",
        "--state-dir",
        str(tmp_path / "st"),
        "--url",
        server.url,
        "--key-file",
        str(badkey),
        "--fingerprint",
        server.fingerprint,
        "--hosts-file",
        str(tmp_path / "hosts"),
        env={},
    )
    assert r.returncode == 2 and "is not text" in r.stderr, r.stderr
    _clean(r)


# -- crc login takes a server's address only ----------------------------------------------


@pytest.mark.parametrize("suffix", ["/dashboard/", "/v1", "#x", "?a=1", "userinfo"])
def test_login_refuses_a_url_with_a_path_fragment_query_or_password(server, tmp_path, suffix):
    token = server.add_user("bob")
    url = server.url + suffix
    if suffix == "userinfo":
        url = server.url.replace("https://", "https://u:pw-secret@")
    cfg = tmp_path / "cfg"
    r = _run(
        "login",
        "--url",
        url,
        "--token",
        token,
        "--fingerprint",
        server.fingerprint,
        env={"CRC_CONFIG_DIR": str(cfg)},
    )
    assert r.returncode == 2 and "invalid server URL" in r.stderr, r.stderr
    _clean(r, token, "pw-secret")
    assert not (cfg / "config.json").exists()
    r = _run(
        "login",
        "--url",
        server.url + "/",
        "--token",
        token,
        "--fingerprint",
        server.fingerprint,
        env={"CRC_CONFIG_DIR": str(cfg)},
    )
    assert r.returncode == 0, r.stderr


# -- crc sessions play --speed ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--speed", "1e-300"),
        ("--speed", "nan"),
        ("--speed", "inf"),
        ("--speed", "1001"),
        ("--idle-limit", "nan"),
        ("--idle-limit", "inf"),
    ],
)
def test_sessions_play_bounds_its_speed(env, crc, option, value):
    r = crc("sessions", "play", "st_" + "0" * 32, option, value)
    assert r.returncode == 2 and option in r.stderr, r.stderr
    _clean(r)


def test_sessions_play_of_a_real_recording_at_a_tiny_speed_is_refused(env, crc):
    env.group_with_agents("lab", ["dev"])
    r = crc("shell", "lab", "dev", "--", "sh", "-c", "sleep 0.3; echo hi; sleep 0.3; echo there")
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 30
    while True:
        rows = json.loads(crc("sessions", "list", "lab", "--json").stdout)["sessions"]
        if rows and rows[0].get("recorded"):
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)
    stream = rows[0]["stream"]
    r = crc("sessions", "play", stream, "--speed", "1e-300", timeout=20)
    assert r.returncode == 2 and "--speed" in r.stderr, r.stderr
    _clean(r)
    r = crc("sessions", "play", stream, "--speed", "1000")
    assert r.returncode == 0 and "there" in r.stdout, r.stderr


@pytest.mark.parametrize("entry", ["crc", "lean"])
@pytest.mark.parametrize("empty", ["--url", "--key"])
def test_agent_run_with_an_empty_url_or_key_is_a_usage_error(server, tmp_path, entry, empty):
    """An empty value (a variable unset in the startup script: `--url "$URL"`) is said to
    be empty, exit 2, not "not enrolled yet: give --url and --key" (exit 3)."""
    argv = (
        [sys.executable, "-m", "cloudremotecontrol", "agent", "run"]
        if entry == "crc"
        else [sys.executable, "-m", "cloudremotecontrol.agent", "run"]
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("CRC_")}
    given = {"--url": server.url, "--key": KEY, empty: ""}
    r = subprocess.run(
        [
            *argv,
            "--state-dir",
            str(tmp_path / "st"),
            *[part for pair in given.items() for part in pair],
            "--hosts-file",
            str(tmp_path / "hosts"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=base,
    )
    assert r.returncode == 2, r.stderr
    assert f"{empty} is empty" in r.stderr, r.stderr
    _clean(r, KEY, prefix="crc: error: " if entry == "crc" else "crc agent: error: ")
