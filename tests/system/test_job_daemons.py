"""A job that starts a daemon (``server &``) ends when its own process ends, even though
the daemon keeps the job's output pipes open; the daemon keeps running and can go on
writing to them without blocking."""

from __future__ import annotations

import contextlib
import os
import signal
import time


def _wait_for(path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout  # a safety net, not a measurement
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_job_that_leaves_a_daemon_holding_its_output_ends_with_its_process(env, crc, tmp_path):
    env.group_with_agents("lab", ["a"])
    pid_file, go, done = tmp_path / "daemon.pid", tmp_path / "go", tmp_path / "done"
    daemon = (
        f"echo $$ > {pid_file}; while [ ! -e {go} ]; do sleep 0.05; done; "
        f"head -c 1000000 /dev/zero; touch {done}; exec sleep 600"
    )
    script = f"echo started; sh -c '{daemon}' & echo bye"
    try:
        # Without the fix the job lasts as long as the daemon (600 s): the CLI's
        # timeout here is only a safety net.
        r = crc("run", "lab", "--to", "a", "--", "sh", "-c", script, timeout=90)
        assert r.returncode == 0, r.stderr
        assert r.stdout == "[a] started\n[a] bye\n"
        assert "[a] succeeded (exit 0)" in r.stderr
        _wait_for(pid_file)
        pid = int(pid_file.read_text())
        os.kill(pid, 0)  # the daemon was left running
        # It writes far more than a pipe holds after the job ended: never blocked.
        go.touch()
        _wait_for(done)
    finally:
        if pid_file.exists() and pid_file.read_text().strip():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(int(pid_file.read_text())), signal.SIGKILL)
