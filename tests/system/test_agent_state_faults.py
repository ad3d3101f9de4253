"""An agent whose state directory cannot be used (a file in its path, a damaged
database or credential) stops at once with one clear line and exit code 2, not a Python
traceback that the service manager restarts for ever without saying why; `crc agent
install` says the same, and `crc agent uninstall` refuses what is no state directory
before it touches the service; one whose state disk
fills up while a job runs waits for room, and loses nothing of the job."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import Env


def _stopped_with_one_line(agent_log: str) -> list[str]:
    lines = [ln for ln in agent_log.splitlines() if ln.strip()]
    assert "Traceback" not in agent_log, agent_log
    return [ln for ln in lines if ln.startswith(("crc: error:", "crc agent: error:"))]


def test_an_enrolled_agent_with_a_damaged_database_says_so_and_exits_2(env: Env) -> None:
    out = env.client.create_group("g", ["web"])
    agent = env.agent("web", out["machines"][0]["key"])
    env.wait_state("g", ["web"], "ready")
    agent.stop()
    db = agent.state_dir / "agent.db"
    for extra in ("agent.db-wal", "agent.db-shm"):
        (agent.state_dir / extra).unlink(missing_ok=True)
    db.write_bytes(b"\x00not a database\xff" * 512)  # a disk fault, a copy cut short

    again = env.agent("web", None)
    assert again.wait(60) == 2
    errors = _stopped_with_one_line(again.log())
    assert len(errors) == 1 and f"{db} is damaged" in errors[0], again.log()


def test_an_agent_whose_state_directory_cannot_be_made_says_so_and_exits_2(
    env: Env, crc: Callable[..., Any], tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")  # a file where a directory must be
    key = env.client.create_group("g", ["web"])["machines"][0]["key"]
    state_dir = blocker / "state"
    service = [sys.executable, "-m", "cloudremotecontrol.agent", "run"]
    for how in ("crc agent run", "the service's entry point"):
        if how == "crc agent run":
            out = crc("agent", "run", "--state-dir", str(state_dir), extra_env={"CRC_KEY": key})
        else:
            out = subprocess.run(
                [*service, "--state-dir", str(state_dir)],
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, **env.cli_env, "CRC_KEY": key},
            )
        assert out.returncode == 2, out.stderr
        errors = _stopped_with_one_line(out.stderr)
        assert len(errors) == 1, out.stderr
        assert f"cannot use state directory {state_dir}: Not a directory" in errors[0]
    # The key was never presented: the machine can still enroll.
    assert env.client.group("g")["machines"][0]["state"] == "pending"


def _fake_systemd(tmp_path: Path) -> dict[str, str]:
    """The variables that point `crc agent install / uninstall` at the stand-in for
    systemctl and a unit directory of this test's own (never the machine's systemd)."""
    import cloudremotecontrol.agent.platform.fake_systemctl as fake

    units = tmp_path / "units"
    units.mkdir(exist_ok=True)
    (tmp_path / "fake-systemd").mkdir(exist_ok=True)
    return {
        "CRC_SYSTEMCTL": f"{sys.executable} {fake.__file__}",
        "CRC_SYSTEMD_DIR": str(units),
        "CRC_FAKE_SYSTEMD_STATE": str(tmp_path / "fake-systemd"),
    }


@pytest.mark.parametrize(
    "damage",
    ["not json", '{"url": "https://h:1"}', '{"unknown": 1}', "[1, 2]", "a directory"],
)
def test_a_damaged_credential_is_one_line_and_exit_2_for_run_and_install(
    env: Env, crc: Callable[..., Any], tmp_path: Path, damage: str
) -> None:
    key = env.client.create_group("g", ["web"])["machines"][0]["key"]
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    credential = state_dir / "credential.json"
    if damage == "a directory":
        credential.mkdir()
    else:
        credential.write_text(damage)
    enroll = ["--url", env.server.url, "--key", key, "--fingerprint", env.server.fingerprint]
    fake = _fake_systemd(tmp_path)
    for command in (["run"], ["install", "--wait", "0"]):
        out = crc("agent", *command, "--state-dir", str(state_dir), *enroll, extra_env=fake)
        assert out.returncode == 2, (command, out.stderr)
        errors = _stopped_with_one_line(out.stderr)
        assert errors == [
            f"crc: error: {credential} is damaged: remove the state directory and enroll "
            "again with a new key"
        ], out.stderr
    assert not list(Path(fake["CRC_SYSTEMD_DIR"]).iterdir())  # no service made
    # The key was never presented: the machine can still enroll.
    assert env.client.group("g")["machines"][0]["state"] == "pending"


def test_install_with_a_state_dir_that_is_a_file_is_one_line_and_exit_2(
    crc: Callable[..., Any], tmp_path: Path
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x\n")
    fake = _fake_systemd(tmp_path)
    args = ["--url", "https://127.0.0.1:9", "--key", "crck_x", "--wait", "0"]
    out = crc("agent", "install", "--state-dir", str(a_file), *args, extra_env=fake)
    assert out.returncode == 2, out.stderr
    errors = _stopped_with_one_line(out.stderr)
    assert len(errors) == 1 and f"cannot use state directory {a_file}" in errors[0], out.stderr
    assert not list(Path(fake["CRC_SYSTEMD_DIR"]).iterdir())


def test_uninstall_refuses_what_is_no_state_dir_before_it_removes_the_service(
    crc: Callable[..., Any], tmp_path: Path
) -> None:
    fake = _fake_systemd(tmp_path)
    unit = Path(fake["CRC_SYSTEMD_DIR"]) / "crc-agent.service"
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    a_file = tmp_path / "a-file"
    a_file.write_text("x\n")
    other = tmp_path / "somebody-elses-dir"
    other.mkdir()
    (other / "precious").write_text("keep me\n")
    refusals = [
        (["--state-dir", str(a_file)], f"{a_file} is not a directory"),
        (["--state-dir", str(a_file), "--purge"], f"{a_file} is not a directory"),
        (["--state-dir", str(other), "--purge"], f"{other} does not look like an agent"),
    ]
    for args, why in refusals:
        out = crc("agent", "uninstall", *args, extra_env=fake)
        assert out.returncode == 2, (args, out.stderr)
        errors = _stopped_with_one_line(out.stderr)
        assert len(errors) == 1 and why in errors[0], out.stderr
        assert unit.exists(), args  # the service is left as it was
    assert a_file.read_text() == "x\n" and (other / "precious").exists()
    # A state directory holding no credential: the service goes, and no credential is
    # said to be kept there.
    empty = tmp_path / "empty"
    empty.mkdir()
    out = crc("agent", "uninstall", "--state-dir", str(empty), extra_env=fake)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "service crc-agent removed\n", out.stdout
    assert not unit.exists()


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout  # a safety net, not a measurement
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare(1) to give the agent a small disk of its own",
)
def test_a_job_whose_output_meets_a_full_state_disk_goes_on_once_there_is_room(
    env: Env, crc: Callable[..., Any], tmp_path: Path
) -> None:
    out = env.client.create_group("lab", ["a"])
    state_dir = tmp_path / "agents" / "a"
    state_dir.mkdir(parents=True)
    small_disk = 'mount -t tmpfs -o size=2m crc-test "$0" && exec "$@"'
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", small_disk]
    agent = env.agent("a", out["machines"][0]["key"], prefix=[*prefix, str(state_dir)])
    env.wait_state("lab", ["a"], "ready")
    assert agent.proc is not None
    # The job fills the agent's disk (it sees the agent's mounts), then writes output.
    fill = f"dd if=/dev/zero of={state_dir / 'filler'} bs=4k 2>/dev/null; seq 1 20000"
    crc_run = [sys.executable, "-m", "cloudremotecontrol", "run", "lab", "--to", "a", "--"]
    run = subprocess.Popen(
        [*crc_run, "sh", "-c", fill],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env.cli_env},
    )
    try:
        _wait_for(lambda: "database or disk is full" in agent.log(), "a full disk")
        filler = Path(f"/proc/{agent.proc.pid}/root{state_dir}") / "filler"
        filler.unlink()  # room again: what waited goes out, nothing lost
        stdout, stderr = run.communicate(timeout=90)
    finally:
        run.kill()
        run.communicate()
    assert run.returncode == 0, stderr
    assert stdout == "".join(f"[a] {n}\n" for n in range(1, 20001))
    assert "[a] succeeded (exit 0)" in stderr
    assert agent.alive() and "Traceback" not in agent.log()


# Run in a mount namespace of its own, on a 2 MiB tmpfs: the agent's state database
# (the product's AgentState) on a disk that fills up, then gets room back.
_SMALL_DISK_SCRIPT = r"""
import os, sqlite3, sys
from cloudremotecontrol.agent.state import AgentState
from cloudremotecontrol.protocol.messages import Envelope, JobOutput

state_dir = sys.argv[1]
state = AgentState(state_dir)

def message(i):
    return Envelope.of(JobOutput("f" * 32, "stdout", f"line {i}\n" * 5), "lab", "a", "master")

filler = os.path.join(state_dir, "filler")
with open(filler, "wb", buffering=0) as f:  # a job's log fills the disk
    try:
        while True:
            f.write(b"\0" * 4096)
    except OSError:
        pass
try:
    state.enqueue(message(-1))
except sqlite3.OperationalError as exc:
    print("full:", exc)
os.unlink(filler)  # the operator makes room: about 2 MiB
for i in range(3000):  # output stored, sent and acknowledged, as a long job's is
    try:
        seq, _ = state.enqueue(message(i))
    except sqlite3.OperationalError as exc:
        print(f"stuck after {i} messages: {exc}")
        sys.exit(1)
    state.acked(seq)
print("stored 3000")
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare(1) to give the agent's state a small disk of its own",
)
def test_the_state_database_does_not_take_back_the_room_a_full_disk_got(tmp_path: Path) -> None:
    """Once a full disk has room again, the agent's database keeps working with it: its
    write-ahead log used to grow into the freed room before its first checkpoint (4 MiB
    by default) and leave nothing, so every later message failed for ever."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    small_disk = 'mount -t tmpfs -o size=2m crc-test "$1" && exec "$0" -c "$2" "$1"'
    unshare = ["unshare", "--mount", "--propagation", "private", "sh", "-c", small_disk]
    out = subprocess.run(
        [*unshare, sys.executable, str(state_dir), _SMALL_DISK_SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "full: database or disk is full" in out.stdout, out.stdout + out.stderr
    assert out.returncode == 0 and "stored 3000" in out.stdout, out.stdout + out.stderr


def test_an_agent_restored_from_a_backup_skips_what_it_acknowledged_and_gets_new_jobs(
    env: Env,
) -> None:
    """Its state dir copied back from before a job it had acknowledged: the server has
    dropped that job's message, so it tells the agent to skip it (``machine.resync``),
    and the next job reaches the agent on that same connection."""
    agents = env.group_with_agents("g", ["web"])
    agent = agents["web"]

    def run(word: str) -> dict[str, Any]:
        job = env.client.start_job("g", "web", argv=["echo", word], timeout=20)
        deadline = time.monotonic() + 40
        while True:
            target = env.client.job(job["job_id"])["targets"][0]
            if target["status"] not in ("queued", "delivered", "running"):
                return dict(target)
            assert time.monotonic() < deadline, f"job {word} never ended: {target}"
            time.sleep(0.1)

    assert run("one")["status"] == "succeeded"
    agent.stop()
    backup = env.tmp / "web-backup"
    shutil.copytree(agent.state_dir, backup, ignore=shutil.ignore_patterns("*.sock"))
    agent.start()
    env.wait_state("g", ["web"], "ready")
    assert run("two")["status"] == "succeeded"
    agent.stop()
    shutil.rmtree(agent.state_dir)
    shutil.copytree(backup, agent.state_dir)  # from before job two
    agent.start()
    env.wait_state("g", ["web"], "ready")
    assert run("three")["status"] == "succeeded"
    resync = [e["data"] for e in env.client.events("g") if e["type"] == "machine.resync"]
    assert [(r["direction"], r["lost"]) for r in resync] == [("to agent", 1)], resync
