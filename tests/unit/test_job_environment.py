"""A job's environment: the agent's own, then what the agent sets (CRC_MACHINE...), then
the job's ``env``, a later name replacing an earlier one. On Windows names are
case-insensitive: ``--env Path=x`` replaces the inherited ``PATH`` (keeping the job's
spelling) rather than giving the job both. On Linux names are as given."""

from __future__ import annotations

import asyncio
import json
import sys

from cloudremotecontrol.agent.platform.linux import LinuxPlatform
from cloudremotecontrol.agent.runner import JobOutcome, job_environment, run_job
from cloudremotecontrol.protocol.messages import JobRun

# As os.environ shows it on Windows: names upper-cased.
INHERITED = {"PATH": r"C:\Windows\system32", "SYSTEMROOT": r"C:\Windows", "TEMP": r"C:\t"}


def test_windows_a_job_name_replaces_an_inherited_one_equal_ignoring_case() -> None:
    env = job_environment(
        INHERITED, {"CRC_MACHINE": "win"}, {"Path": r"C:\mine", "temp": "x"}, windows=True
    )
    assert env == {
        "Path": r"C:\mine",
        "SYSTEMROOT": r"C:\Windows",
        "temp": "x",
        "CRC_MACHINE": "win",
    }
    assert [n for n in env if n.upper() == "PATH"] == ["Path"]


def test_windows_the_jobs_env_replaces_what_the_agent_sets_ignoring_case() -> None:
    env = job_environment({}, {"CRC_MACHINE": "win"}, {"crc_machine": "other"}, windows=True)
    assert env == {"crc_machine": "other"}


def test_windows_the_later_of_two_spellings_in_one_layer_wins() -> None:
    env = job_environment(INHERITED, {"path": "a", "PaTh": "b"}, windows=True)
    assert [(n, v) for n, v in env.items() if n.upper() == "PATH"] == [("PaTh", "b")]


def test_windows_different_names_are_all_kept() -> None:
    env = job_environment({"A": "1"}, {"B": "2"}, {"a_b": "3"}, windows=True)
    assert env == {"A": "1", "B": "2", "a_b": "3"}


def test_linux_names_differing_in_case_are_different_variables() -> None:
    env = job_environment(
        {"PATH": "/usr/bin", "HOME": "/root"},
        {"CRC_MACHINE": "a"},
        {"Path": "x", "HOME": "/home/a", "crc_machine": "b"},
        windows=False,
    )
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/home/a",
        "CRC_MACHINE": "a",
        "Path": "x",
        "crc_machine": "b",
    }


def test_layers_are_not_changed() -> None:
    inherited = dict(INHERITED)
    job_environment(inherited, {"path": "x"}, windows=True)
    assert inherited == INHERITED


def test_a_linux_job_gets_both_spellings_and_the_agents_names() -> None:
    """run_job on Linux: the names as given (the job's Path beside the inherited PATH)."""
    code = "import json, os; print(json.dumps(dict(os.environ)))"
    job = JobRun(
        job_id="2" * 32,
        argv=(sys.executable, "-c", code),
        env={"Path": "mine", "CRC_GROUP": "job's"},
    )
    out: list[str] = []

    async def main() -> JobOutcome:
        async def output(stream: str, text: str) -> None:
            if stream == "stdout":
                out.append(text)

        async def started(pid: int) -> None:
            return None

        return await run_job(
            job,
            LinuxPlatform(),
            output,
            started,
            asyncio.Event(),
            extra_env={"CRC_MACHINE": "a", "CRC_GROUP": "g"},
        )

    outcome = asyncio.run(main())
    assert outcome.status == "succeeded", outcome
    seen = json.loads("".join(out))
    assert seen["Path"] == "mine" and "PATH" in seen and seen["PATH"] != "mine"
    assert seen["CRC_MACHINE"] == "a" and seen["CRC_GROUP"] == "job's"
