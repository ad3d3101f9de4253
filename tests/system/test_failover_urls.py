"""Several server URLs: agents and the CLI move on to the next when one is down."""

from __future__ import annotations

import json

from cloudremotecontrol.master.client import Client
from cloudremotecontrol.master.localrun import AgentProcess, free_port


def test_agent_and_cli_use_the_next_url_when_the_first_is_down(env, crc):
    dead = f"https://127.0.0.1:{free_port()}"
    urls = f"{dead},{env.server.url}"
    out = env.client.create_group("lab2", ["b"])
    # Enrollment and the connection both get past the dead first URL.
    b = AgentProcess(
        env.tmp / "agents" / "b", urls, out["machines"][0]["key"], env.server.fingerprint
    ).start()
    env.agents.append(b)
    env.wait_state("lab2", ["b"], "ready")
    r = crc(
        "run",
        "lab2",
        "--to",
        "b",
        "--json",
        "--",
        "echo",
        "via-second",
        extra_env={"CRC_URL": urls},
    )
    assert r.returncode == 0, r.stderr
    assert {"machine": "b", "stream": "stdout", "data": "via-second\n"} in [
        json.loads(x) for x in r.stdout.splitlines()
    ]
    with Client(urls, env.token, env.server.fingerprint) as c:
        assert c.url == env.server.url
        assert c.group("lab2")["machines"][0]["state"] == "ready"


def test_all_urls_down_is_a_clear_error(env, crc):
    urls = f"https://127.0.0.1:{free_port()},https://127.0.0.1:{free_port()}"
    r = crc("group", "list", extra_env={"CRC_URL": urls})
    assert r.returncode == 6
    assert r.stderr.startswith("crc: error: cannot reach") and "Traceback" not in r.stderr


def test_login_with_every_url_down_names_each(tmp_path):
    """Not only the last URL tried: the user would think the first one was fine."""
    import os
    import subprocess
    import sys

    import pytest

    from cloudremotecontrol.errors import Unavailable

    first, second = (f"https://127.0.0.1:{free_port()}" for _ in range(2))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRC_")}
    token = "crcm_" + "a" * 40
    argv = ["login", "--url", f"{first},{second}", "--token", token]
    r = subprocess.run(
        [sys.executable, "-m", "cloudremotecontrol", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "HOME": str(tmp_path)},
    )
    assert r.returncode == 6, r.stderr
    assert r.stderr.startswith(f"crc: error: cannot reach any of {first}, {second}: "), r.stderr
    assert "Traceback" not in r.stderr
    # The SDK says it so too, pinned (its certificate fetched first) or not.
    for pin in (None, "sha256:" + "ab" * 32):
        with pytest.raises(Unavailable, match=f"^cannot reach any of {first}, {second}: "):
            with Client(f"{first},{second}", token, pin) as c:
                c.whoami()
