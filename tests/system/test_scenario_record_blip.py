"""`crc up` records each step that succeeded in the group's kv (``crc.up/steps``), so a
later run skips it. A server out of reach just then (a restart, a network blip) used to
fail the whole run although the step had succeeded; the record is now tried again.

The runner's server here is reached through a relay that goes down for a few seconds
the moment a step succeeds: every open connection is cut and new ones are refused.
"""

from __future__ import annotations

import builtins
import contextlib
import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tcp_relay import TcpRelay

from cloudremotecontrol.bootstrap import BootstrapParams
from cloudremotecontrol.master.profile import Profile
from cloudremotecontrol.master.scenario.model import parse_scenario
from cloudremotecontrol.master.scenario.runner import Runner
from cloudremotecontrol.master.scenario.state import STEPS_KEY, LocalState
from cloudremotecontrol.master.scenario.view import View
from cloudremotecontrol.providers import (
    Capabilities,
    Instance,
    MachineSpec,
    Provider,
    machine_tag,
    scenario_tag,
)

OUTAGE = 3.0  # seconds the server is out of reach after the step succeeded
SAFETY = 120.0


class Blinking(TcpRelay):
    def __init__(self, port: int) -> None:
        super().__init__()
        self.server_port = port
        self.down = threading.Event()

    def connect(self, client: socket.socket) -> socket.socket | None:
        if self.down.is_set():
            return None
        return socket.create_connection(("127.0.0.1", self.server_port))

    def blink(self) -> None:
        self.down.set()
        for sock in list(self._socks):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        threading.Timer(OUTAGE, self.down.clear).start()


class BlinkOnSuccess(View):
    def __init__(self, relay: Blinking) -> None:
        super().__init__()
        self.relay = relay
        self.notes: list[str] = []

    def step(self, event: str, name: str, **doc: Any) -> None:
        if event == "succeeded":
            self.relay.blink()

    def info(self, text: str, **doc: Any) -> None:
        self.notes.append(text)


class Booting(Provider):
    """Each machine is a real agent started with its key (the test's `env.agent`)."""

    name = "booting"
    capabilities = Capabilities(liveness_interval=0.5)

    def __init__(self, env: Any) -> None:
        self.env = env
        self.made: dict[str, Instance] = {}

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], *, server_url: str | None) -> Booting:
        raise NotImplementedError

    def startup_script(self, spec: MachineSpec, params: BootstrapParams) -> str:
        return params.key

    def create(self, scenario: str, spec: MachineSpec, startup_script: str) -> Instance:
        self.env.agent(spec.name, startup_script)
        inst = Instance(
            id=f"{scenario}.{spec.name}",
            name=spec.name,
            label=f"{scenario}-{spec.name}",
            status="running",
            ready=True,
            tags=(scenario_tag(scenario), machine_tag(spec.name)),
        )
        self.made[inst.id] = inst
        return inst

    def get(self, instance_id: str) -> Instance | None:
        return self.made.get(instance_id)

    def destroy(self, instance_id: str) -> None:
        self.made.pop(instance_id, None)

    def wait_running(self, instance_id: str, timeout: float) -> Instance:
        return self.made[instance_id]

    def list(self, scenario: str) -> builtins.list[Instance]:
        return [i for i in self.made.values() if i.scenario == scenario]


def test_a_step_that_succeeded_is_recorded_through_a_server_blip(env, tmp_path: Path):
    port = int(env.server.url.rsplit(":", 1)[1].split("/")[0])
    relay = Blinking(port)
    scenario = parse_scenario(
        "name: blip\nprovider: local\ntimeouts: {ready: 60s}\nmachines: {a: }\n"
        "steps:\n  - name: hello\n    to: a\n    run: echo hello\n"
    )
    profile = Profile(f"https://127.0.0.1:{relay.port}", env.token, env.server.fingerprint)
    view = BlinkOnSuccess(relay)
    runner = Runner(scenario, profile, Booting(env), view, state=LocalState(tmp_path / "b.json"))
    got: dict[str, Any] = {}

    def up() -> None:
        try:
            got["value"] = runner.up()
        except Exception as exc:  # noqa: BLE001 -- looked at by the test
            got["error"] = exc

    try:
        thread = threading.Thread(target=up, daemon=True)
        thread.start()
        thread.join(SAFETY)
    finally:
        runner.close()
    assert not thread.is_alive(), f"crc up still runs after {SAFETY:g} s"
    assert relay.down.is_set() is False
    assert got == {"value": 0}, (got, view.notes)
    stored = env.client.kv_get("blip", STEPS_KEY)["value"]
    assert set(stored) == {"hello"}, stored
