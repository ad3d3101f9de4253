"""`crc run` says so when a target's machine goes offline before its job ended (its
agent killed -9, the machine gone), instead of waiting without a word; it still waits
for the result, which the agent delivers when it reconnects."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest
from test_crash_recovery import _tagged

SAFETY = 30.0

OFFLINE = (
    "crc: machine b went offline before its job ended; its result comes when it "
    "reconnects (Ctrl-C cancels the job, a second one stops waiting)\n"
)
BACK = "crc: machine b is back online\n"


def _lines(stream, into: list[str], seen: queue.SimpleQueue[str]) -> threading.Thread:
    def read() -> None:
        for line in stream:
            into.append(line)
            seen.put(line)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


def _wait_for(seen: queue.SimpleQueue[str], text: str, said: list[str]) -> None:
    deadline = time.monotonic() + SAFETY
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no {text!r} within {SAFETY:g} s: {''.join(said)!r}"
        try:
            if text in seen.get(timeout=left):
                return
        except queue.Empty:
            continue


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_run_says_when_a_machine_goes_offline_and_waits_for_its_result(env, as_json):
    agents = env.group_with_agents("lab", ["a", "b"])
    tag = f"crc-offline-{os.getpid()}"
    argv = ["run", "lab", "--to", "a,b", *(["--json"] if as_json else []), "--shell", "bash"]
    # b's job lasts (its agent's HOME is b's own: conftest.Env.agent), a's ends at once.
    command = f'case "$HOME" in */b-home) exec -a {tag} sleep 300;; esac; echo done'
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", *argv, "--", command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env.cli_env},
    )
    out: list[str] = []
    err: list[str] = []
    out_seen: queue.SimpleQueue[str] = queue.SimpleQueue()
    err_seen: queue.SimpleQueue[str] = queue.SimpleQueue()
    assert proc.stdout is not None and proc.stderr is not None
    readers = [_lines(proc.stdout, out, out_seen), _lines(proc.stderr, err, err_seen)]
    try:
        deadline = time.monotonic() + SAFETY
        while not _tagged(tag):  # b runs it
            assert time.monotonic() < deadline, (out, err)
            assert proc.poll() is None, (out, err)
            time.sleep(0.05)
        agents["b"].kill()  # kill -9: the machine is gone, its job unfinished
        _wait_for(err_seen, "went offline", err)
        assert OFFLINE in err, err
        time.sleep(1.0)
        assert proc.poll() is None, err  # still waiting for b's result
        env.agent("b", None)  # b back: its agent reports the job lost (not re-run)
        proc.wait(timeout=SAFETY)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _tagged(tag):
            os.kill(pid, signal.SIGKILL)
        for r in readers:
            r.join(SAFETY)
        proc.stdout.close()
        proc.stderr.close()
    said = "".join(err)
    assert said.count("went offline") == 1, said  # said once
    assert "machine a" not in said, said
    assert proc.returncode == 125, said  # b lost, a succeeded
    if as_json:
        results = {
            d["machine"]: d for d in map(json.loads, out) if "status" in d and "machine" in d
        }
        assert results["b"]["status"] == "lost", out
        assert all(set(json.loads(x)) != {"note"} for x in out), out  # shape unchanged
    else:
        assert "[b] lost" in said, said
