"""A job's ``--env`` on Windows, where environment names are case-insensitive: a name
given in another case than the inherited one (``path=...`` for the service's ``Path``)
replaces it, keeping the job's spelling, rather than the job getting both.

The environment the agent hands to the process is looked at in the Windows Python itself
(the first test): CPython 3.12.x and later drop such duplicates themselves when they
build the block (python/cpython#102731; the tier's Python is 3.12.8), earlier ones pass
both on and the child reads the first, the inherited one. Then end to end, from the
job's own environment block (GetEnvironmentStringsW), as Windows hands it over."""

from __future__ import annotations

import json
from typing import Any

from wine_machine import WineMachine

# The job's environment block as the process got it: every NAME=value, duplicates kept.
BLOCK = r"""
import ctypes, json
k = ctypes.windll.kernel32
k.GetEnvironmentStringsW.restype = ctypes.c_void_p
p = k.GetEnvironmentStringsW()
names, i = [], 0
while True:
    s = ctypes.wstring_at(p + i * 2)
    if not s:
        break
    names.append(s)
    i += len(s) + 1
print(json.dumps(names))
"""


# run_job with the agent's own environment (os.environ as Windows shows it, upper-cased
# names), the process start replaced by a recorder: the env it would be given.
RECORD = r"""
import asyncio, json, os
from cloudremotecontrol.agent import runner
from cloudremotecontrol.agent.platform.windows import WindowsPlatform
from cloudremotecontrol.protocol.messages import JobRun

os.environ["CRC_T_INHERITED"] = "agent's"
given = {}

async def start(*argv, env, **options):
    given.update(env)
    raise FileNotFoundError(2, "recorded")

async def main():
    async def nothing(*args):
        return None
    job = JobRun(
        job_id="3" * 32,
        argv=("x.exe",),
        env={"path": "job's", "crc_t_inherited": "job's", "crc_machine": "job's"},
    )
    asyncio.create_subprocess_exec = start
    await runner.run_job(
        job, WindowsPlatform(), nothing, nothing, asyncio.Event(), {"CRC_MACHINE": "win"}
    )

asyncio.run(main())
print(json.dumps(given))
"""


def test_the_agent_gives_a_job_one_variable_per_name_ignoring_case(win: WineMachine) -> None:
    win.wait_state("ready")  # the agent package is installed in the Windows Python
    out = win.prefix.python("-c", RECORD)
    assert out.returncode == 0, (out.stdout, out.stderr)
    env: dict[str, str] = json.loads(out.stdout.strip().splitlines()[-1])
    for name in ("PATH", "CRC_T_INHERITED", "CRC_MACHINE"):
        spelled = [n for n in env if n.upper() == name]
        assert spelled == [name.lower()], (name, sorted(env))
        assert env[spelled[0]] == "job's"
    assert any(n.upper() == "SYSTEMROOT" for n in env), sorted(env)  # the rest inherited


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]


def test_env_replaces_an_inherited_name_equal_ignoring_case(win: WineMachine) -> None:
    win.wait_state("ready")
    script = win.prefix.host_path(r"C:\crc-test\block.py")
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(BLOCK)
    out = win.crc(
        "run",
        "g",
        "--to",
        "win",
        "--json",
        "--env",
        r"path=C:\crc-job-path",
        "--env",
        "crc_machine=mine",
        "--",
        r"C:\Python312\python.exe",
        r"C:\crc-test\block.py",
    )
    assert out.returncode == 0, (out.stdout, out.stderr)
    lines = _json_lines(out.stdout)
    printed = "".join(r["data"] for r in lines if r.get("stream") == "stdout")
    block: list[str] = json.loads(printed)

    def named(name: str) -> list[str]:
        return [e for e in block if e.split("=", 1)[0].upper() == name]

    assert named("PATH") == [r"path=C:\crc-job-path"], block
    assert named("CRC_MACHINE") == ["crc_machine=mine"], block
    assert named("CRC_GROUP") == ["CRC_GROUP=g"], block  # what the agent sets, kept
