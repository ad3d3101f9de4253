"""One version, written once (``cloudremotecontrol.__version__``), reported everywhere:
the installed metadata, ``crc --version``, ``GET /v1/health``, the agent package the
server hands to VMs and the version an enrolled agent reports."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import urllib.request

from cloudremotecontrol import __version__
from cloudremotecontrol.tlspin import client_context


def test_every_part_reports_the_one_version(env) -> None:
    assert importlib.metadata.version("cloudremotecontrol") == __version__
    cli = subprocess.run(
        [sys.executable, "-m", "cloudremotecontrol", "--version"], capture_output=True, text=True
    )
    assert cli.returncode == 0 and cli.stdout.split()[-1] == __version__, cli.stdout
    ctx, _ = client_context(env.server.url, env.server.fingerprint)
    with urllib.request.urlopen(env.server.url + "/v1/health", context=ctx) as r:
        assert json.loads(r.read())["version"] == __version__
    with urllib.request.urlopen(env.server.url + "/v1/agent/package.sha256", context=ctx) as r:
        assert r.read().decode().split()[1] == f"crc-agent-{__version__}.pyz"
        assert r.headers["X-Crc-Version"] == __version__
    out = env.client.create_group("v", ["a"])
    env.agent("a", out["machines"][0]["key"])
    facts = env.wait_state("v", ["a"], "ready")["machines"][0]["facts"]
    assert facts["agent_version"] == __version__
    # A machine is ready only once its facts are known: the facts come first.
    kinds = [
        "ready" if e.type == "machine.state" and e.data.get("state") == "ready" else e.type
        for e in env.client.events("v", since=0)
    ]
    assert "facts" in kinds and kinds.index("facts") < kinds.index("ready"), kinds
