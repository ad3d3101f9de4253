"""The package ships ``py.typed``: its annotations are what a user's type checker sees.

The SDK example is checked strict by mypy as a user's script would be, outside this
repository's configuration, against the installed package.
"""

from __future__ import annotations

import shutil
import sys
from importlib import resources
from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parents[2]


def _strict(script: Path, tmp_path: Path) -> str:
    """What ``mypy --strict`` finds wrong in ``script`` ('' if nothing), run as a user's
    own check: with none of this repository's settings, against the installed package."""
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\n")
    stdout, stderr, status = api.run(
        [
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--config-file",
            str(config),
            "--python-executable",
            sys.executable,
            str(script),
        ]
    )
    return "" if status == 0 else stdout + stderr


def test_the_package_declares_itself_typed() -> None:
    assert (resources.files("cloudremotecontrol") / "py.typed").is_file()


def test_the_sdk_example_type_checks_strict_as_a_user_script(tmp_path: Path) -> None:
    script = tmp_path / "sdk_scenario.py"
    shutil.copy(ROOT / "examples" / "sdk_scenario.py", script)
    assert _strict(script, tmp_path) == ""


def test_an_event_handler_returning_a_value_type_checks_strict(tmp_path: Path) -> None:
    """docs/sdk.md's handler, ``lambda ev: ev.type == "job.output" and print(...)``, is a
    bool-returning function: a user's strict mypy takes it for either client."""
    script = tmp_path / "handler.py"
    script.write_text(
        "from cloudremotecontrol import AsyncClient, Client\n"
        "from cloudremotecontrol.master.types import Event\n\n\n"
        "def sync(c: Client) -> None:\n"
        '    c.run_wait("lab", "all", command="true", on_event=lambda ev: ev.type == "x")\n\n\n'
        "async def run(c: AsyncClient) -> None:\n"
        "    seen: list[Event] = []\n"
        '    await c.run_wait("lab", "all", command="true", on_event=seen.append)\n'
        '    await c.run_wait("lab", "all", command="true", on_event=lambda ev: ev.type == "x")\n'
        '    await c.wait_messages("lab", "m", on_message=lambda m: m.type == "x")\n'
    )
    assert _strict(script, tmp_path) == ""
