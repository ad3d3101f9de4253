"""`crc server run --insecure`: plain HTTP on a loopback address only, for development;
clients (the SDK, the CLI, the agent) speak plain HTTP to this computer only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudremotecontrol.master.client import Client
from cloudremotecontrol.master.localrun import AgentProcess, crc_argv, free_port


def _crc(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(crc_argv(*args), capture_output=True, text=True, timeout=60, **kw)


@pytest.fixture
def plain_server(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    data, port = tmp_path / "srv", free_port()
    r = _crc("server", "init", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}")
    assert r.returncode == 0, r.stderr
    r = _crc("server", "run", "--data-dir", str(data), "--insecure", "--listen", f"0.0.0.0:{port}")
    assert r.returncode == 2, r.stderr
    assert "--insecure serves plain HTTP and is allowed on a loopback address only" in r.stderr
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(
        crc_argv(
            "server", "run", "--data-dir", str(data), "--insecure", "--listen", f"127.0.0.1:{port}"
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/v1/health", timeout=2) as resp:
                    assert json.loads(resp.read())["ok"] is True
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "server.log").read_text()
                assert time.monotonic() < deadline, "the plain HTTP server never answered"
                time.sleep(0.1)
        r = _crc("server", "add-user", "alice", "--data-dir", str(data), "--json")
        assert r.returncode == 0, r.stderr
        yield url, json.loads(r.stdout)["token"], data
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def test_a_plain_http_server_on_loopback_serves_masters_and_agents(plain_server, tmp_path):
    url, token, _ = plain_server
    with Client(url, token) as client:
        out = client.create_group("lab", ["a"])
        agent = AgentProcess(tmp_path / "a", url=url, key=out["machines"][0]["key"]).start()
        try:
            client.wait_ready("lab", timeout=30)
            seen: list[str] = []
            result = client.run_wait(
                "lab",
                "all",
                argv=["echo", "over plain http"],
                on_event=lambda ev: seen.append(json.dumps(ev.to_dict())),
            )
            assert result.ok and result.results["a"].status == "succeeded", result
            assert any("over plain http" in line for line in seen), seen
        finally:
            agent.stop()
    unset = ("CRC_TOKEN", "CRC_FINGERPRINT")
    cfg = {k: v for k, v in os.environ.items() if k not in unset}
    r = _crc(
        "login",
        "--url",
        url,
        "--token",
        token,
        env={**cfg, "CRC_CONFIG_DIR": str(tmp_path / "cfg")},
    )
    assert r.returncode == 0, r.stderr


def test_clients_refuse_plain_http_to_another_computer(plain_server, tmp_path):
    _, token, _ = plain_server
    elsewhere = "http://192.0.2.10:8443"  # TEST-NET-1: nothing is sent there
    env = {k: v for k, v in os.environ.items() if k != "CRC_FINGERPRINT"}
    env["CRC_CONFIG_DIR"] = str(tmp_path / "cfg")
    r = _crc("login", "--url", elsewhere, "--token", token, env=env)
    assert r.returncode == 2, r.stderr
    assert "refusing plain http:// to 192.0.2.10" in r.stderr and "Traceback" not in r.stderr
    r = _crc(
        "agent",
        "run",
        "--url",
        elsewhere,
        "--state-dir",
        str(tmp_path / "b"),
        env={**env, "CRC_KEY": "crck_0123456789abcdef_x"},
    )
    assert r.returncode == 2, r.stderr
    assert "refusing plain http:// to 192.0.2.10" in r.stderr and "Traceback" not in r.stderr


def test_a_fingerprint_with_a_plain_http_url_is_refused_before_anything_is_sent(
    plain_server, tmp_path
):
    """A pin the caller counts on was skipped without a word with an http:// URL (the
    token or key sent in clear): refused, by the CLI, the SDK and the agent alike."""
    from cloudremotecontrol.errors import InvalidInput

    url, token, _ = plain_server
    pin = "sha256:" + "ab" * 32
    env = {k: v for k, v in os.environ.items() if k not in ("CRC_TOKEN", "CRC_FINGERPRINT")}
    env["CRC_CONFIG_DIR"] = str(tmp_path / "cfg")
    words = "a fingerprint pins the certificate of an https:// server"
    r = _crc("login", "--url", url, "--token", token, "--fingerprint", pin, env=env)
    assert r.returncode == 2 and words in r.stderr, r.stderr
    assert not (tmp_path / "cfg").exists() or not list((tmp_path / "cfg").rglob("*.json"))
    with pytest.raises(InvalidInput, match=words), Client(url, token, pin) as client:
        client.list_groups()
    r = _crc(
        "agent",
        "run",
        "--url",
        url,
        "--state-dir",
        str(tmp_path / "a"),
        "--fingerprint",
        pin,
        "--hosts-file",
        str(tmp_path / "hosts"),
        env={**env, "CRC_KEY": "crck_0123456789abcdef_x"},
    )
    assert r.returncode == 2 and words in r.stderr, r.stderr
    assert not (tmp_path / "a").exists()
