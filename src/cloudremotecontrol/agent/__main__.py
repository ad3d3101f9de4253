"""``python -m cloudremotecontrol.agent run``: the lean agent entry point (agent/main.py)."""

from __future__ import annotations

import sys

from .main import main

if __name__ == "__main__":
    sys.exit(main())
