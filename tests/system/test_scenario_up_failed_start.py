"""A `crc up` that fails at its start: the server out of reach (said as every command
says it, with what is left: nothing), or the provider refusing before any machine was
made (the group this `crc up` made is deleted again; one that existed before is kept).
Real server, real `crc`, the fake Vultr API and the local provider."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudremotecontrol.errors import NotFound
from cloudremotecontrol.master.localrun import free_port
from fakes.vultr_api import FakeVultr

CLOUD = """\
name: cloud
provider: vultr
timeouts: {ready: 60s}
defaults: {region: ewr, plan: vc2-1c-1gb, image: "2284"}
machines: {a: , b: }
"""

LOCAL = """\
name: lab
provider: local
timeouts: {ready: 60s, step: 60s}
machines: {a: , b: }
steps:
  - name: nap
    run: sleep 0.1
"""


def _json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _summary(out: str) -> dict[str, Any]:
    (doc,) = [d for d in _json_lines(out) if d["event"] == "summary"]
    return doc


@pytest.fixture
def fake() -> Iterator[FakeVultr]:
    f = FakeVultr(ready_delay=0.05).start()
    yield f
    f.stop()
    assert f.violations == []


def _login(env: Any, crc: Any) -> None:
    """A saved profile (with the server's certificate, as `crc login` keeps it): the
    server is first asked when `crc up` looks for the group, not when it starts."""
    r = crc(
        "login",
        "--url",
        env.server.url,
        "--token",
        "-",
        "--fingerprint",
        env.server.fingerprint,
        input=env.token,
        extra_env={"CRC_URL": None, "CRC_TOKEN": None, "CRC_FINGERPRINT": None},
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_up_that_cannot_reach_the_server_says_so_and_that_nothing_was_made(env, crc):
    path = env.tmp / "lab.yaml"
    path.write_text(LOCAL)
    env.cli_env["CRC_LOCAL_DIR"] = str(env.tmp / "machines")
    _login(env, crc)
    profile_only = {"CRC_URL": None, "CRC_TOKEN": None, "CRC_FINGERPRINT": None}
    env.server.stop()

    r = crc("up", str(path), extra_env=profile_only)
    assert r.returncode == 6, r.stdout + r.stderr
    (last,) = r.stderr.splitlines()
    assert last.startswith(f"crc: error: cannot reach {env.server.url}: "), r.stderr
    assert last.endswith(
        f"; nothing was made (no group, no machine): `crc up {path}` again once the "
        "server can be reached"
    ), r.stderr
    assert "refused" not in last.replace("Connection refused", ""), r.stderr
    assert "MACHINE" not in r.stdout and "FAILED" not in r.stdout, r.stdout

    r = crc("up", str(path), "--json", extra_env=profile_only)
    assert r.returncode == 6, r.stdout + r.stderr
    summary = _summary(r.stdout)
    assert summary["unreachable"] is True and summary["ok"] is False, summary
    assert "refused" not in summary, summary
    assert "nothing was made (no group, no machine)" in r.stderr, r.stderr

    # With the fingerprint alone (no certificate saved), the first connection is made
    # before anything else: said the same way.
    nobody = f"https://127.0.0.1:{free_port()}"
    r = crc("up", str(path), extra_env={"CRC_URL": nobody})
    assert r.returncode == 6, r.stdout + r.stderr
    assert r.stderr.splitlines()[-1].startswith(f"crc: error: cannot reach {nobody}: "), r.stderr
    assert "; nothing was made (no group, no machine): `crc up " in r.stderr, r.stderr
    r = crc("up", str(path), "--json", extra_env={"CRC_URL": nobody})
    assert r.returncode == 6, r.stdout + r.stderr
    summary = _summary(r.stdout)  # the summary --json promises, this early too
    assert summary["unreachable"] is True and summary["ok"] is False, summary
    assert [m["name"] for m in summary["machines"]] == ["a", "b"], summary
    assert not (env.tmp / "machines").exists()


def test_up_refused_by_the_provider_deletes_the_group_it_made_but_never_one_that_existed(
    env, crc, fake
):
    path = env.tmp / "cloud.yaml"
    path.write_text(CLOUD)
    wrong = {"VULTR_API_KEY": "not-the-key", "CRC_VULTR_API_URL": fake.url}
    state = Path(env.cli_env["CRC_CONFIG_DIR"]) / "scenarios" / "cloud.json"

    # Vultr refuses the key: the group this `crc up` made, empty, is deleted again.
    r = crc("up", str(path), extra_env=wrong, timeout=120)
    assert r.returncode == 8, r.stdout + r.stderr
    assert "group cloud created" in r.stdout, r.stdout
    assert (
        "group cloud deleted again: this `crc up` made it and no machine was made, so "
        "nothing is left"
    ) in r.stdout, r.stdout
    assert "MACHINE" not in r.stdout, r.stdout
    assert r.stderr.splitlines() == [
        "crc: error: Vultr refused the API key (HTTP 401): check VULTR_API_KEY (Invalid API token.)"
    ], r.stderr
    with pytest.raises(NotFound):
        env.client.group("cloud")
    assert not state.exists()

    r = crc("up", str(path), "--json", extra_env=wrong, timeout=120)
    assert r.returncode == 8, r.stdout + r.stderr
    summary = _summary(r.stdout)
    assert summary["group_deleted"] is True and "refused" not in summary, summary
    with pytest.raises(NotFound):
        env.client.group("cloud")

    # A `crc up` killed after it made the group, before any machine (the Vultr API does
    # not answer its listing): the group stays, and a later `crc up` resumes it...
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    hung = {"VULTR_API_KEY": fake.api_key, "CRC_VULTR_API_URL": "http://127.0.0.1:%d/v2"}
    hung["CRC_VULTR_API_URL"] %= silent.getsockname()[1]
    up = subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", "up", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **env.cli_env, **hung},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                env.client.group("cloud")
                break
            except NotFound:
                assert up.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        time.sleep(0.5)  # its keys saved, it waits for Vultr's answer
    finally:
        up.kill()
        up.wait()
        silent.close()

    # ... and one the provider refuses leaves it as it was: it existed before.
    r = crc("up", str(path), extra_env=wrong, timeout=120)
    assert r.returncode == 8, r.stdout + r.stderr
    assert "group cloud exists: resuming" in r.stdout, r.stdout
    assert "deleted again" not in r.stdout, r.stdout
    assert [m["state"] for m in env.client.group("cloud")["machines"]] == ["pending"] * 2

    good = {"VULTR_API_KEY": fake.api_key, "CRC_VULTR_API_URL": fake.url}
    r = crc("down", str(path), extra_env=good, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert fake.state.instances == {}


def test_up_whose_first_create_vultr_refuses_deletes_the_group_it_made(env, crc, fake):
    path = env.tmp / "cloud.yaml"
    path.write_text(CLOUD)
    vultr_env = {"VULTR_API_KEY": fake.api_key, "CRC_VULTR_API_URL": fake.url}
    fake.state.fail_next(400, message="Invalid plan", method="POST", path="/instances")

    r = crc("up", str(path), "--json", extra_env=vultr_env, timeout=120)

    assert r.returncode == 8, r.stdout + r.stderr
    assert fake.state.instances == {}
    with pytest.raises(NotFound):
        env.client.group("cloud")
    docs = _json_lines(r.stdout)
    assert {"event": "info", "group": "cloud", "deleted": True} | {
        "text": "group cloud deleted again: this `crc up` made it and no machine was "
        "made, so nothing is left"
    } in docs, docs
    assert _summary(r.stdout)["group_deleted"] is True
    assert r.stderr.splitlines() == [
        "crc: error: machine a: Vultr rejected POST /instances (HTTP 400): Invalid plan"
    ], r.stderr


def test_up_whose_local_machine_cannot_be_made_deletes_the_group_it_made(env, crc):
    path = env.tmp / "lab.yaml"
    path.write_text(LOCAL)
    not_a_dir = env.tmp / "machines"
    not_a_dir.write_text("")

    r = crc("up", str(path), extra_env={"CRC_LOCAL_DIR": str(not_a_dir)})

    assert r.returncode == 8, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.splitlines() == [
        f"crc: error: machine a: cannot make local machine lab.a in {not_a_dir}/lab/a: "
        "Not a directory"
    ], r.stderr
    assert "group lab deleted again" in r.stdout, r.stdout
    assert "may have made" not in r.stderr, r.stderr
    with pytest.raises(NotFound):
        env.client.group("lab")
