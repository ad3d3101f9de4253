"""SIGTERM stops `crc server run` cleanly and at once while responses that last until
their client goes are open: followed event streams (a group's, a job's) are cut, and
their followers resume from their cursor once the server is back; a waiting kv read is
answered (503, asked again). No traceback and no ERROR in the server's log: before,
uvicorn waited for such responses, then cancelled each with a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
from wire_helpers import bearer, pinned_http


def _follow(env: Any, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env.cli_env},
    )


def test_sigterm_with_open_streams_stops_cleanly_and_followers_resume(env: Any) -> None:
    server = env.server
    env.client.create_group("lab", ["a"])
    job = env.client.start_job("lab", "a", argv=["true"])  # queued: no agent runs
    followers = [_follow(env, "events", "lab", "-f", "--json") for _ in range(2)]
    seen: list[list[str]] = [[] for _ in followers]
    for f, lines in zip(followers, seen, strict=True):
        assert f.stdout is not None
        threading.Thread(
            target=lambda out=f.stdout, got=lines: got.extend(out), daemon=True
        ).start()
    kv: dict[str, Any] = {}

    def kv_wait() -> None:
        with pinned_http(server) as http:
            http.headers["Authorization"] = bearer(env.token)
            start = time.monotonic()
            try:
                r = http.get("/v1/groups/lab/kv/k", params={"wait": 120}, timeout=60)
                kv["status"] = r.status_code
            except httpx.HTTPError as exc:
                kv["status"] = repr(exc)
            kv["seconds"] = time.monotonic() - start

    def job_follow() -> None:  # read as a client does, until the stream breaks
        with pinned_http(server) as http:
            http.headers["Authorization"] = bearer(env.token)
            path = f"/v1/jobs/{job['job_id']}/events"
            try:
                with http.stream("GET", path, params={"follow": "true"}, timeout=60) as r:
                    for _ in r.iter_lines():
                        pass
                kv["job"] = "ended"
            except httpx.HTTPError:
                kv["job"] = "cut"

    threads = [threading.Thread(target=kv_wait), threading.Thread(target=job_follow)]
    for t in threads:
        t.start()
    time.sleep(1.5)  # every stream and the wait are open on the server
    for f in followers:
        assert f.poll() is None, f.stderr.read() if f.stderr else ""
    logged = server.log_path.stat().st_size
    start = time.monotonic()
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    rc = server.proc.wait(30)
    stopped = time.monotonic() - start
    for t in threads:
        t.join(30)
    log = server.log_path.read_bytes()[logged:].decode(errors="replace")
    assert rc == 0, log
    assert "Traceback" not in log and "CancelledError" not in log, log
    assert " ERROR " not in log, log
    assert stopped < 2.5, (stopped, log)  # not uvicorn's 3 s graceful timeout, then more
    assert kv.get("status") == 503 and kv["seconds"] < 5, kv
    assert kv.get("job") == "cut", kv  # broken, not ended: its reader resumes

    # The followers wait for the server (they resume for 60 s), then see what comes next.
    time.sleep(1)
    for f in followers:
        assert f.poll() is None, f.stderr.read() if f.stderr else ""
    server.start()
    later = env.client.start_job("lab", "a", argv=["true"])["job_id"]
    deadline = time.monotonic() + 60
    while not all(later in "".join(lines) for lines in seen) and time.monotonic() < deadline:
        time.sleep(0.1)
    for f, lines in zip(followers, seen, strict=True):
        f.terminate()
        _, err = f.communicate(timeout=30)
        assert later in "".join(lines), (lines, err)
        assert "Traceback" not in err, err
