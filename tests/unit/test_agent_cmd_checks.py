"""`crc agent ...` refuses a timeout it cannot keep (nan, inf, a huge number) as a usage
error, and a state directory it cannot use with one clear line: exit codes as
docs/reference.md gives them, never a traceback. Each command runs as a process, with no
agent anywhere (nothing here needs one to be refused)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _crc(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CRC_AGENT_WAIT": "0"}
    env.pop("CRC_AGENT_STATE_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "cloudremotecontrol", "agent", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["wait-message", "user.q", "--timeout", "inf"],
        ["wait-message", "user.q", "--timeout", "1e12"],
        ["wait-message", "user.q", "--timeout", "nan"],
        ["kv", "wait", "k", "--timeout", "nan"],
        ["kv", "wait", "k", "--timeout", "inf"],
        ["progress", "hi", "--agent-wait", "nan"],
        ["progress", "hi", "--agent-wait", "inf"],
        ["progress", "hi", "--agent-wait", "1e12"],
        ["progress", "hi", "--percent", "nan"],
        ["install", "--wait", "nan"],
        ["run", "--facts-interval", "nan"],
        ["run", "--keep-messages-days", "nan"],
        ["run", "--keep-messages-mib", "nan"],
        ["run", "--keep-messages-mib", "-1"],
    ],
)
def test_a_timeout_that_is_not_a_bounded_number_is_a_usage_error(
    argv: list[str], tmp_path: Path
) -> None:
    r = _crc(*argv, "--state-dir", str(tmp_path / "none"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert "Invalid value for" in r.stderr


def test_the_longest_wait_message_timeout_is_taken(tmp_path: Path) -> None:
    # A week: accepted, then the missing agent is what fails (exit 6), not the number.
    r = _crc(
        "wait-message",
        "user.q",
        "--timeout",
        "604800",
        "--state-dir",
        str(tmp_path / "none"),
        cwd=tmp_path,
    )
    assert r.returncode == 6, r.stderr
    assert "Traceback" not in r.stderr and "no agent is running" in r.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["progress", "hi"],
        ["status"],
        ["kv", "get", "k"],
        ["wait-message", "user.q", "--timeout", "2"],
        ["kv", "wait", "k", "--timeout", "2"],
    ],
)
@pytest.mark.parametrize("where", ["f.txt", "f.txt/below", "loop", "missing"])
def test_a_state_dir_that_cannot_be_one_is_one_clear_line(
    argv: list[str], where: str, tmp_path: Path
) -> None:
    (tmp_path / "f.txt").write_text("not a directory\n")
    (tmp_path / "loop").symlink_to("loop")
    r = _crc(*argv, "--state-dir", f"./{where}", cwd=tmp_path)
    assert r.returncode == 6, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("crc: error: "), r.stderr
    assert where.split("/")[0] in lines[0]


@pytest.mark.parametrize(
    "argv",
    [
        ["run"],
        ["install"],
        ["uninstall"],
        ["status"],
        ["progress", "hi"],
        ["ready"],
        ["emit", "user.x"],
        ["peers"],
        ["wait-message", "user.q", "--timeout", "2"],
        ["kv", "set", "k", "v"],
        ["kv", "get", "k"],
        ["kv", "wait", "k", "--timeout", "2"],
    ],
)
def test_an_empty_state_dir_is_a_usage_error_not_the_default(
    argv: list[str], tmp_path: Path
) -> None:
    # `--state-dir "$DIR"` with DIR unset: not the default state dir (/var/lib/crc-agent).
    hosts = ["--hosts-file", str(tmp_path / "hosts")] if argv[0] in ("run", "install") else []
    r = _crc(*argv, "--state-dir", "", *hosts, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("crc: error: Invalid value for '--state-dir': an empty path;")


def _lean(*argv: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CRC_")}
    return subprocess.run(
        [sys.executable, "-m", "cloudremotecontrol.agent", "run", *argv],
        cwd=cwd,
        env={**base, **env, "CRC_AGENT_HOSTS_FILE": str(cwd / "hosts")},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_lean_entry_point_refuses_an_empty_state_dir_too(tmp_path: Path) -> None:
    r = _lean("--state-dir", "", "--url", "https://127.0.0.1:9", "--key", "crck_x", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "argument --state-dir: an empty path; leave the option out" in r.stderr, r.stderr


def test_an_empty_state_dir_variable_is_no_value_for_either_entry_point(tmp_path: Path) -> None:
    # As click reads an empty variable: not given. The option given on the command line
    # is then what counts (here a state dir of the test's, and a URL that is refused).
    given = ("--state-dir", str(tmp_path / "s"), "--url", "ftp://x", "--key", "crck_x")
    r = _lean(*given, cwd=tmp_path, CRC_AGENT_STATE_DIR="")
    assert r.returncode == 2 and "invalid server URL 'ftp://x'" in r.stderr, r.stderr
    env = {"CRC_AGENT_STATE_DIR": "", "CRC_AGENT_WAIT": "0"}
    base = {k: v for k, v in os.environ.items() if not k.startswith("CRC_")}
    r = subprocess.run(
        [sys.executable, "-m", "cloudremotecontrol", "agent", "status"],
        cwd=tmp_path,
        env={**base, **env, "XDG_STATE_HOME": str(tmp_path / "xdg")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 6 and "Invalid value" not in r.stderr, r.stderr


REFUSED = {
    "a bad --url": ["--url", "notaurl", "--key", "crck_x"],
    "a bad --fingerprint": [
        "--url",
        "https://127.0.0.1:9",
        "--key",
        "crck_x",
        "--fingerprint",
        "x",
    ],
    "no key": ["--url", "https://127.0.0.1:9"],
    # The key would go to another endpoint of the server (or of another program).
    "a --url with a path": ["--url", "https://127.0.0.1:9/proxy", "--key", "crck_x"],
    # A pin that would be skipped: the key sent in clear, to whatever listens.
    "a --fingerprint with a plain http --url": [
        "--url",
        "http://127.0.0.1:9",
        "--key",
        "crck_x",
        "--fingerprint",
        "sha256:" + "ab" * 32,
    ],
}


def _agent(entry: str, state_dir: Path, given: list[str], cwd: Path) -> str:
    """``crc agent run/install`` or the lean entry point, refusing ``given``; its stderr."""
    hosts = ["--hosts-file", str(cwd / "hosts")]  # never the system's
    if entry == "lean":
        r = _lean("--state-dir", str(state_dir), *given, *hosts, cwd=cwd)
    else:
        r = _crc(entry, "--state-dir", str(state_dir), *given, *hosts, cwd=cwd)
    assert r.returncode in (2, 3), r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr


@pytest.mark.parametrize("entry", ["run", "install", "lean"])
@pytest.mark.parametrize("refusal", sorted(REFUSED))
def test_a_refused_agent_leaves_no_state_dir_it_made(
    entry: str, refusal: str, tmp_path: Path
) -> None:
    state_dir = tmp_path / "new" / "deeper" / "state"
    _agent(entry, state_dir, REFUSED[refusal], tmp_path)
    assert not (tmp_path / "new").exists(), sorted(tmp_path.rglob("*"))


@pytest.mark.parametrize("entry", ["run", "install", "lean"])
def test_a_refused_agent_keeps_a_state_dir_that_was_there(entry: str, tmp_path: Path) -> None:
    empty, mine = tmp_path / "empty", tmp_path / "mine"
    empty.mkdir()
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    for state_dir in (empty, mine):
        _agent(entry, state_dir, REFUSED["a bad --url"], tmp_path)
        assert state_dir.is_dir()
    assert (mine / "notes.txt").read_text() == "mine\n"


def test_a_state_dir_whose_key_was_presented_is_kept(tmp_path: Path) -> None:
    # The key went to a server (none answered): the nonce kept with it lets the next
    # attempt enroll even if a server took the key and its answer was lost.
    state_dir = tmp_path / "new" / "state"
    r = _lean(
        "--state-dir",
        str(state_dir),
        "--url",
        "https://127.0.0.1:9",
        "--key",
        "crck_x",
        cwd=tmp_path,
    )
    assert r.returncode == 6, r.stderr
    assert (state_dir / "agent.db").is_file()


@pytest.mark.parametrize("sender", ["Bad Name", "", "a_b", "x" * 64])
def test_a_wait_for_a_message_from_no_possible_sender_is_a_usage_error(
    sender: str, tmp_path: Path
) -> None:
    """A typo in --from waited out the whole --timeout (600 s by default) for a sender
    that cannot exist; `crc wait --message --from` refuses it at once."""
    state = str(tmp_path / "state")
    r = _crc("wait-message", "user.x", "--from", sender, "--state-dir", state, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Invalid value for --from: invalid machine" in r.stderr, r.stderr
    assert "(the sender: master or a peer's name)" in r.stderr
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    ("argv", "code", "words"),
    [
        (["kv", "set", "Bad Key!", "1"], 2, "invalid key 'Bad Key!'"),
        (["kv", "set", "k\udcff", "1"], 2, "invalid key 'k\\udcff'"),  # not UTF-8
        (["kv", "get", "a/../b"], 2, "invalid key 'a/../b'"),
        (["kv", "wait", ""], 2, "invalid key ''"),
        (["kv", "set", "crc.up/steps", "1"], 3, "keys starting with 'crc.' are the master's"),
    ],
)
def test_a_key_the_store_refuses_is_refused_before_the_agent_is_asked(
    argv: list[str], code: int, words: str, tmp_path: Path
) -> None:
    """Said at once, whether or not an agent runs (here none does: asking one would be
    exit 6, "no agent is running")."""
    r = _crc(*argv, "--state-dir", str(tmp_path / "none"), cwd=tmp_path)
    assert r.returncode == code, r.stderr
    assert words in r.stderr and "no agent" not in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
