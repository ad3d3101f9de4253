"""Ctrl-C during a scenario's steps, on a real server with real agents: the jobs of the
steps that run are cancelled at once, also one whose start was under way when Ctrl-C
came (the moment is forced here: the start's answer arrives only after Ctrl-C)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from cloudremotecontrol.master.client import Client
from cloudremotecontrol.master.scenario.model import parse_scenario
from cloudremotecontrol.master.scenario.steps import StepExecutor
from cloudremotecontrol.master.scenario.view import View
from cloudremotecontrol.providers.local import LocalProvider

STEP_TIMEOUT = 120  # what a job not cancelled runs for (it sleeps longer)
SAFETY = 45.0  # a cancelled job has ended well before this, far below STEP_TIMEOUT


def test_a_job_whose_start_was_under_way_at_ctrl_c_is_cancelled_at_once(env, tmp_path: Path):
    env.group_with_agents("lab", ["a", "b"], env={"CRC_AGENT_HOSTS_FILE": str(tmp_path / "hosts")})
    scenario = parse_scenario(
        "name: lab\nprovider: local\nmachines: {a: {}, b: {}}\n"
        f"steps:\n  - {{name: slow, run: sleep 300, timeout: {STEP_TIMEOUT}s}}\n"
    )
    executor: StepExecutor

    class StartedAsCtrlCComes(Client):
        """The start's answer arrives after Ctrl-C was taken (``cancel_all`` ran)."""

        def start_job(self, *args: Any, **kw: Any) -> dict[str, Any]:
            started = super().start_job(*args, **kw)
            executor.cancel_all()
            return started

    executor = StepExecutor(
        scenario,
        "lab",
        lambda: StartedAsCtrlCComes(env.server.url, env.token, env.server.fingerprint),
        LocalProvider(tmp_path / "machines"),
        {},
        View(),
    )
    got: dict[str, Any] = {}

    def run() -> None:
        got["outcome"] = executor(scenario.steps[0], 1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(SAFETY)
    (job,) = env.client.list_jobs("lab")
    try:
        assert not thread.is_alive(), f"the step still follows its job after {SAFETY:g} s"
        outcome = got["outcome"]
        assert not outcome.ok
        assert {m: r["status"] for m, r in outcome.detail.items()} == {
            "a": "cancelled",
            "b": "cancelled",
        }, outcome
    finally:
        if thread.is_alive():  # the old way: the job runs on; end it before the agents
            env.client.cancel_job(job["job_id"])
            thread.join(SAFETY)
