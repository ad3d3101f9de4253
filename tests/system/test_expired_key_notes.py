"""A pending machine whose enrollment key expired unused cannot connect until a new key
enrolls it: `crc status` and `crc group show` say `pending (key expired)`, and a job to
it says so and names `crc bootstrap GROUP MACHINE`, rather than only that the job waits
until it connects. The job still waits for it (a new key can still enroll it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

SAFETY = 30.0


@pytest.fixture
def lab(env, tmp_path) -> str:
    """Group lab: y enrolled and ready; x and z pending, x's key expired, z's not."""
    keys = {
        m["name"]: m["key"] for m in env.client.create_group("lab", ["x", "y", "z"])["machines"]
    }
    env.agent("y", keys["y"], extra=["--hosts-file", str(tmp_path / "hosts")])
    env.wait_state("lab", ["y"], "ready")
    expires = env.client.machine_key("lab", "x", key_ttl=1)["key_expires"]
    time.sleep(max(0.0, expires + 0.2 - time.time()))  # same host, same clock
    return "lab"


def _until_told(env, *args: str) -> tuple[int, str]:
    """Run crc until it names `crc bootstrap`, then Ctrl-C it (its job is cancelled).
    Its exit code and stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env.cli_env},
    )
    lines: list[str] = []
    told = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "crc bootstrap" in line:
                told.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        told.wait(SAFETY)
        proc.send_signal(signal.SIGINT)
        proc.wait(SAFETY)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(SAFETY)
    assert proc.stderr is not None
    proc.stderr.close()
    err = "".join(lines)
    assert told.is_set(), err
    return proc.returncode, err


def test_status_and_group_show_say_the_key_expired(env, crc, lab):
    for args in (["status", lab], ["group", "show", lab]):
        r = crc(*args)
        assert r.returncode == 0, r.stderr
        rows = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
        assert " pending (key expired) " in rows["x"], r.stdout
        assert " pending " in rows["z"] and "expired" not in rows["z"], r.stdout
        assert " ready " in rows["y"], r.stdout
    assert [m["state"] for m in env.client.group(lab)["machines"]] == [
        "pending",
        "ready",
        "pending",
    ]


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["push", "{g}", "--to", "all", "{f}", "{d}/copy"], id="push"),
        pytest.param(["hosts", "sync", "{g}", "--to", "x,z"], id="hosts-sync"),
        pytest.param(["run", "{g}", "--to", "all", "--", "true"], id="run"),
    ],
)
def test_a_job_to_a_machine_whose_key_expired_says_how_to_get_a_new_key(env, lab, tmp_path, args):
    f = tmp_path / "f.txt"
    f.write_text("hi\n")
    rc, err = _until_told(env, *[a.format(g=lab, f=f, d=tmp_path) for a in args])
    assert "crc: not connected: x (pending, key expired), z (pending); the job waits" in err
    assert (
        "crc: x: its key expired unused, so the job waits until a new key enrolls it: "
        "`crc bootstrap lab x --os linux|windows` issues one" in err
    ), err
    assert rc == 130, err  # Ctrl-C cancelled the job, which had waited for x all along
