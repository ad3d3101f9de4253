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


def test_the_package_declares_itself_typed() -> None:
    assert (resources.files("cloudremotecontrol") / "py.typed").is_file()


def test_the_sdk_example_type_checks_strict_as_a_user_script(tmp_path: Path) -> None:
    script = tmp_path / "sdk_scenario.py"
    config = tmp_path / "mypy.ini"  # a user's own: none of this repository's settings
    config.write_text("[mypy]\n")
    shutil.copy(ROOT / "examples" / "sdk_scenario.py", script)
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
    assert status == 0, stdout + stderr
