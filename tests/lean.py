"""The modules a lean agent must not load: the CLI, master and server code and the
libraries only they use (tests of the agent's entry point and of a running agent)."""

from __future__ import annotations

MASTER_AND_SERVER = (
    "click",
    "cloudremotecontrol.cli",
    "cloudremotecontrol.master",
    "cloudremotecontrol.server",
    "httpx",
    "pydantic",
)
