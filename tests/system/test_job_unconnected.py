"""`crc push`, `crc pull` and `crc hosts sync` to a machine that is not connected say
so, with the job's id, as `crc run` does, instead of waiting without a word."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

SAFETY = 30.0

NOTE = "crc: not connected: b (pending); the job waits until they connect ({}Ctrl-C cancels it)\n"


def _until_noted(env, *args: str) -> tuple[int, str, str]:
    """Run crc until it says a target is not connected, then Ctrl-C it (the job is
    cancelled). Its exit code, stdout and stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env.cli_env},
    )
    lines: list[str] = []
    noted = threading.Event()
    before = ""

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "not connected" in line:
                noted.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        noted.wait(SAFETY)
        before = "".join(lines)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=SAFETY)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(SAFETY)
    assert noted.is_set(), f"said before Ctrl-C ({SAFETY:g} s): {before!r}"
    return proc.returncode, out, "".join(lines)


@pytest.fixture
def lab2(env, tmp_path) -> str:
    """Group lab2: a enrolled and connected, b never enrolled."""
    out = env.client.create_group("lab2", ["a", "b"])
    keys = {m["name"]: m["key"] for m in out["machines"]}
    env.agent("a", keys["a"], env={"CRC_AGENT_HOSTS_FILE": str(tmp_path / "hosts")})
    env.wait_state("lab2", ["a"], "ready")
    return "lab2"


def _with_group(argv: list[str], group: str) -> list[str]:
    """The command's words, then GROUP, then its arguments (`hosts sync` is two words)."""
    n = 2 if argv[0] == "hosts" else 1
    return [*argv[:n], group, *argv[n:]]


def _job_id(err: str) -> str:
    first = err.splitlines()[0]
    assert first.startswith("job ") and first.endswith(" on b"), err
    return first.split()[1]


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["push", "--to", "b", "{f}", "/tmp/x"], id="push"),
        pytest.param(["pull", "--from", "b", "/etc/hostname", "{d}/x"], id="pull"),
        pytest.param(["hosts", "sync", "--to", "b"], id="hosts-sync"),
        pytest.param(["run", "--to", "b", "--", "true"], id="run"),
    ],
)
def test_a_job_to_a_machine_not_connected_says_so(env, lab2, tmp_path, args):
    f = tmp_path / "f.txt"
    f.write_text("hi\n")
    argv = [a.format(f=f, d=tmp_path) for a in args]
    rc, _out, err = _until_noted(env, *_with_group(argv, lab2))
    limit = "--deliver-within sets a limit, " if argv[0] == "run" else ""
    assert NOTE.format(limit) in err, err
    job_id = _job_id(err)
    assert rc == 130, err  # Ctrl-C cancelled the job
    job = env.client.job(job_id)
    assert [(t["machine"], t["status"]) for t in job["targets"]] == [("b", "cancelled")], err


def test_push_and_pull_to_connected_machines_say_only_the_job(env, crc, lab2, tmp_path):
    f = tmp_path / "f.txt"
    f.write_text("hi\n")
    for args in (
        ["push", lab2, "--to", "a", str(f), str(tmp_path / "copy")],
        ["pull", lab2, "--from", "a", str(f), str(tmp_path / "back")],
    ):
        r = crc(*args, timeout=SAFETY)
        assert r.returncode == 0, r.stderr
        assert r.stderr.startswith("job ") and "not connected" not in r.stderr, r.stderr
    assert (tmp_path / "back").read_text() == "hi\n"
