"""An example provider: a scenario's machines are agent processes on this computer.

Written against the public surface only (``cloudremotecontrol.providers``), as a
third party would. Each machine is a directory ``$CRC_EXAMPLE_DIR/<scenario>/<machine>``
holding its boot script, the agent's state, its console and ``machine.json`` (the
process id); the agent runs in a session of its own, so ``destroy`` kills everything it
started.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cloudremotecontrol.bootstrap import BootstrapParams
from cloudremotecontrol.providers import (
    Capabilities,
    Feature,
    Instance,
    MachineSpec,
    Provider,
    ProviderError,
    instance_label,
    machine_tag,
    scenario_tag,
)


class ExampleProvider(Provider):
    name = "example"
    capabilities = Capabilities(
        features=frozenset({Feature.CONSOLE}),
        oses=frozenset({"linux"}),
        settings={"flavour": ("small", "large")},
        required=("plan",),
        public_addresses=False,
        liveness_interval=1.0,
    )

    def __init__(self, root: Path, flavour: str) -> None:
        self.root = root
        self.flavour = flavour

    @classmethod
    def from_settings(
        cls, settings: Mapping[str, Any], *, server_url: str | None
    ) -> ExampleProvider:
        root = os.environ.get("CRC_EXAMPLE_DIR")
        if not root:
            raise ProviderError("set CRC_EXAMPLE_DIR", provider=cls.name)
        return cls(Path(root), str(settings.get("flavour") or "small"))

    def describe(self) -> str:
        return f"example machines, {self.flavour}, under {self.root}"

    def startup_script(self, spec: MachineSpec, params: BootstrapParams) -> str:
        fp = f" --fingerprint {shlex.quote(params.fingerprint)}" if params.fingerprint else ""
        return (
            f"#!/bin/sh\nCRC_KEY={shlex.quote(params.key)} exec "
            f"{shlex.quote(sys.executable)} -m cloudremotecontrol agent run "
            f'--url {shlex.quote(params.url)}{fp} --state-dir "$CRC_AGENT_STATE_DIR"\n'
        )

    def create(self, scenario: str, spec: MachineSpec, startup_script: str) -> Instance:
        d = self.root / scenario / spec.name
        if d.exists():
            raise ProviderError(f"{scenario}.{spec.name} exists", provider=self.name)
        (d / "agent").mkdir(parents=True)
        (d / "boot.sh").write_text(startup_script)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/"),
            "CRC_AGENT_STATE_DIR": str(d / "agent"),
        }
        with open(d / "console.log", "ab") as console:
            proc = subprocess.Popen(
                ["sh", str(d / "boot.sh")],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        record = {"scenario": scenario, "machine": spec.name, "pid": proc.pid, "plan": spec.plan}
        (d / "machine.json").write_text(json.dumps(record))
        return self._instance(d)

    def get(self, instance_id: str) -> Instance | None:
        d = self._dir(instance_id)
        return self._instance(d) if (d / "machine.json").is_file() else None

    def list(self, scenario: str) -> list[Instance]:
        return [
            self._instance(p.parent) for p in sorted(self.root.glob(f"{scenario}/*/machine.json"))
        ]

    def wait_running(self, instance_id: str, timeout: float) -> Instance:
        inst = self.get(instance_id)
        if inst is None or not inst.ready:
            raise ProviderError(f"machine {instance_id} is not running", provider=self.name)
        return inst

    def destroy(self, instance_id: str) -> None:
        d = self._dir(instance_id)
        pid = self._pid(d)
        if pid is not None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 10
            while self._alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        shutil.rmtree(d, ignore_errors=True)

    def console_tail(self, instance_id: str, chars: int = 2000) -> str:
        try:
            return (self._dir(instance_id) / "console.log").read_text()[-chars:]
        except OSError:
            return "(no console)"

    # -- records -----------------------------------------------------------------------
    def _dir(self, instance_id: str) -> Path:
        scenario, _, machine = instance_id.partition(".")
        return self.root / scenario / machine

    def _pid(self, d: Path) -> int | None:
        try:
            return int(json.loads((d / "machine.json").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    def _instance(self, d: Path) -> Instance:
        scenario, machine = d.parent.name, d.name
        pid = self._pid(d)
        alive = pid is not None and self._alive(pid)
        return Instance(
            id=f"{scenario}.{machine}",
            name=machine,
            label=instance_label(scenario, machine),
            status="running" if alive else "stopped",
            ready=alive,
            main_ip="127.0.0.1",
            tags=(scenario_tag(scenario), machine_tag(machine)),
            stopped=not alive,
        )
