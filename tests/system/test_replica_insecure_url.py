"""Replicas run with --insecure (plain HTTP on loopback): a shell opened through one
replica for a machine connected to another is dialled back over plain HTTP, at the
replica's --replica-url when it has one, else at the address it listens on (never
server.json's https:// URL). The machine's agent dials only its own server URLs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from cloudremotecontrol.master.client import Client
from cloudremotecontrol.master.localrun import AgentProcess, ServerProcess, crc_argv


def _wait(pred, timeout=30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return value


@contextlib.contextmanager
def _plain(data: Path, database: str, extra: list[str]) -> Iterator[str]:
    """`crc server run --insecure` of ``data`` (listening where its server.json says)."""
    listen = json.loads((data / "server.json").read_text())["listen"]
    log = open(data / "server.log", "wb")
    proc = subprocess.Popen(
        crc_argv(
            "server", "run", "--data-dir", str(data), "--database", database, "--insecure", *extra
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    url = f"http://{listen}"
    try:

        def up() -> bool:
            assert proc.poll() is None, (data / "server.log").read_text()
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url + "/v1/health", timeout=2) as resp:
                    return resp.status == 200
            return False

        _wait(up)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def _two_plain_replicas_shell(tmp_path: Path, pg_url: str, host: str, named: bool) -> None:
    """Replica A (the machine's) and B (the shell's), both --insecure; the agent knows
    them as ``http://HOST:PORT``; B is given that as --replica-url when ``named``."""
    first = ServerProcess(tmp_path / "r0", database=pg_url)
    first.init()
    second = first.replica(tmp_path / "r1")
    assert json.loads((second.data_dir / "server.json").read_text())["url"].startswith("https://")
    known = [f"http://{host}:{first.port}", f"http://{host}:{second.port}"]
    extra_b = ["--replica-url", known[1]] if named else []
    with _plain(first.data_dir, pg_url, []) as url_a, _plain(second.data_dir, pg_url, extra_b):
        token = first.add_user("alice")
        agent = None
        try:
            with Client(url_a, token) as via_a, Client(known[1], token) as via_b:
                out = via_a.create_group("lab", ["m"])
                agent = AgentProcess(
                    tmp_path / "m", url=",".join(known), key=out["machines"][0]["key"]
                ).start()
                _wait(lambda: via_b.group("lab")["machines"][0]["state"] == "ready", 60)
                assert via_a.group("lab")["machines"][0]["state"] == "ready"
                # Opened through B; the machine, connected to A, dials B back.
                with via_b.shell("lab", "m", argv=["sh", "-c", "echo dialled-back"]) as s:
                    s.expect("dialled-back", 60)
                    assert s.wait(60) == 0
        finally:
            if agent is not None:
                agent.stop()
    for d in (first.data_dir, second.data_dir):
        assert "Traceback" not in (d / "server.log").read_text()


def test_an_insecure_replica_without_replica_url_is_dialled_back_over_http(pg_url, tmp_path):
    _two_plain_replicas_shell(tmp_path, pg_url, "127.0.0.1", named=False)


def test_an_insecure_replica_is_dialled_back_at_its_replica_url(pg_url, tmp_path):
    # The agent knows the replicas as localhost: B must hand that name (its
    # --replica-url), not the address it listens on (127.0.0.1), or it is not dialled.
    _two_plain_replicas_shell(tmp_path, pg_url, "localhost", named=True)
