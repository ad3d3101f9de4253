"""The lean agent entry point (``python -m cloudremotecontrol.agent``, what the service
runs) loads neither click nor the CLI, master or server code, nor their libraries."""

from __future__ import annotations

import subprocess
import sys


def test_the_lean_agent_entry_point_loads_no_cli_master_or_server_code() -> None:
    code = (
        "import sys\n"
        "import cloudremotecontrol.agent.main, cloudremotecontrol.agent.service\n"
        "import cloudremotecontrol.agent.core\n"
        "bad = ('click', 'cloudremotecontrol.cli', 'cloudremotecontrol.master',\n"
        "       'cloudremotecontrol.server', 'pydantic', 'httpx', 'fastapi', 'rich')\n"
        "print(sorted(m for m in sys.modules if m.startswith(bad)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
