"""Ctrl-C in the first tenth of a second of `crc`, while Python loads its modules: a
line and exit 130, as later, never a traceback of the import it cut short."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time


def test_ctrl_c_while_crc_starts_says_interrupted_without_a_traceback(tmp_path) -> None:
    env = {**os.environ, "CRC_CONFIG_DIR": str(tmp_path / "cfg")}
    outcomes = []
    for i in range(40):
        proc = subprocess.Popen(
            [sys.executable, "-m", "cloudremotecontrol", "group", "list"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        time.sleep(0.005 * i)  # 0 to 0.2 s: before, during and after the imports
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        outcomes.append((0.005 * i, proc.returncode, err.strip()))

    # A traceback may come from Python's own start (its `site` and `runpy` modules) and
    # the few lines that load the entry point, before it can answer a Ctrl-C; never from
    # crc's code beyond (the CLI, click, the commands).
    beyond = re.compile(
        r"cloudremotecontrol/(?!__init__\.py|__main__\.py|cli/__init__\.py|cli/entry\.py)"
    )
    assert [o for o in outcomes if beyond.search(o[2])] == []
    # The imports take most of the start: some run was cut short in them, or later.
    assert any(o[1] == 130 and o[2].startswith("crc: ") for o in outcomes), outcomes
