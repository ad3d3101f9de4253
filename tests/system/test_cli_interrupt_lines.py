"""Ctrl-C (SIGINT) ends every crc command with exit 130 and one line, `crc: interrupted`
(never click's `crc: aborted` after a blank line); `crc up`, which says itself that it
was interrupted and what that leaves (its summary, the machines still at the provider),
ends on those lines, with no `crc: interrupted` after them. Real server, real agents."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from cloudremotecontrol.errors import NotFound
from cloudremotecontrol.providers.local import LocalProvider


def _crc(env: Any, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env.cli_env},
    )


@pytest.mark.parametrize(
    "args",
    [
        ["kv", "get", "g", "never", "--wait", "2m"],
        ["events", "g", "--follow"],
        ["wait", "g", "--timeout", "2m"],
    ],
)
def test_ctrl_c_says_interrupted_once_and_exits_130(env: Any, args: list[str]) -> None:
    env.client.create_group("g", ["a"])  # never enrolls: the waits go on
    proc = _crc(env, *args)
    time.sleep(2)  # connected and waiting
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (130, "crc: interrupted\n")


SCENARIO = """\
name: cut
provider: local
timeouts: {ready: 60s, step: 2m}
machines: {a: }
steps:
  - name: slow
    run: crc agent kv set slow started; sleep 120
"""


def test_up_interrupted_ends_on_what_it_leaves_without_another_line(env: Any, crc: Any) -> None:
    env.cli_env["CRC_LOCAL_DIR"] = str(env.tmp / "machines")
    path = env.tmp / "cut.yaml"
    path.write_text(SCENARIO)
    provider = LocalProvider(env.tmp / "machines")
    try:
        proc = _crc(env, "up", str(path))
        deadline = time.monotonic() + 90
        while True:  # the step's job runs on the machine
            try:
                env.client.kv_get("cut", "slow")
                break
            except NotFound:
                assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
                time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, out + err
        assert "interrupted: running jobs were cancelled; `crc up` again resumes" in out
        assert "scenario cut: INTERRUPTED" in out, out
        assert err.splitlines() == [
            f"1 machine(s) of cut are still at local (a): `crc up {path}` again resumes, "
            f"`crc down {path}` destroys them"
        ], out + err
        r = crc("down", str(path))
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        for inst in provider.list("cut"):
            provider.destroy(inst.id)
