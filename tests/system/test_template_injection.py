"""A machine cannot command its peers through a scenario's templates: a hostile host
name and private address, reported by a machine with its own credential, are left out
by the server; hostile free text it keeps (os_release, arch) is printed by a peer's
step, never run (master/scenario/shellquote.py).

Real: the server, the peer's agent (it runs the step in its shell), the scenario file
parser and the step executor of `crc up`. The hostile machine speaks the agent protocol
by hand (wire_helpers.WireAgent), as a compromised VM would."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from wire_helpers import enroll, pinned_http, wire_agent

from cloudremotecontrol.master.client import Client
from cloudremotecontrol.master.scenario.model import parse_scenario
from cloudremotecontrol.master.scenario.steps import StepExecutor, template_context
from cloudremotecontrol.master.scenario.view import View
from cloudremotecontrol.providers.local import LocalProvider

SCENARIO = """
name: lab
provider: local
machines:
  db: {}
  web: {}
steps:
  - name: peers
    to: web
    run: |
      echo "db={{ machines.db.facts.os_release }}"
      echo db-arch={{ machines.db.facts.arch }}
      echo 'again {{ machines.db.facts.os_release }}'
      cat <<EOF
      heredoc {{ machines.db.facts.os_release }}
      EOF
"""


class Recorder(View):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def output(self, step: str, machine: str | None, stream: str, data: str) -> None:
        self.lines += data.splitlines()


def test_a_hostile_hostname_and_address_are_printed_by_peers_never_run(
    env: Any, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:12]
    pwned = [Path(f"/tmp/PWNED-{tag}-{i}") for i in range(3)]
    keys = {m["name"]: m["key"] for m in env.client.create_group("lab", ["db", "web"])["machines"]}
    env.agent("web", keys["web"])
    with pinned_http(env.server) as http:
        cred = enroll(http, keys["db"])

    hostile = {
        "os": "linux",
        "hostname": f"db$(touch {pwned[0]})`touch {pwned[1]}`",
        "ips": [f"10.0.0.5$(touch {pwned[2]})"],
        "private_ips": [f"10.0.0.5$(touch {pwned[2]})"],
        # Free text the server keeps: it reaches templates as it was sent.
        "os_release": f"Debian $(touch {pwned[0]}) `touch {pwned[1]}` '\"; touch {pwned[2]}",
        "arch": "x86$(id)`id`;id|id",  # run, it would print uid=...
    }

    async def report() -> None:
        async with wire_agent(env.server, cred, "lab", "db") as db:
            await db.send_msg("facts", hostile)
            await db.send_msg("system.ready", {})

    asyncio.run(report())
    env.wait_state("lab", ["web"], "ready")

    scenario = parse_scenario(SCENARIO, tmp_path / "lab.yaml")
    view = Recorder()
    executor = StepExecutor(
        scenario,
        "lab",
        lambda: Client(env.server.url, env.token, env.server.fingerprint),
        LocalProvider(tmp_path / "machines"),  # asked only for its capabilities
        {},
        view,
    )
    outcome = executor(scenario.steps[0], 1)
    assert outcome.ok, outcome
    # What the server keeps of the machine's report is what the peer prints, as text.
    db = template_context(scenario, env.client.group("lab"), {})["machines"]["db"]
    # The hostile host name and addresses never got that far: the server left them out.
    assert "touch" not in str(db["hostname"]) and not db["private_ip"], db
    release, arch = hostile["os_release"], hostile["arch"]
    assert db["facts"]["os_release"] == release and db["facts"]["arch"] == arch, db
    assert view.lines == [
        f"db={release}",
        f"db-arch={arch}",
        f"again {release}",
        f"heredoc {release}",
    ], view.lines
    assert not [p for p in pwned if p.exists()], "a peer ran what a machine reported"
