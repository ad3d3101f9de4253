"""`crc login` at a terminal asks for the token: end of input there (Ctrl-D) is no token
given, one clear line and exit 2 (as `--token -` with nothing on standard input), not an
interruption; Ctrl-C still is (exit 130). A real pseudo-terminal, no server: nothing is
sent before a token is given."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pexpect

URL = "https://127.0.0.1:9"  # nothing listens: a token that got this far would fail (6)


def _login_at_a_terminal(tmp_path: Path) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRC_")}
    child = pexpect.spawn(
        sys.executable,
        ["-m", "cloudremotecontrol", "login", "--url", URL],
        env={**env, "CRC_CONFIG_DIR": str(tmp_path / "cfg")},
        timeout=60,
    )
    child.expect("Master token: ")
    return child


def _ended(child: Any) -> tuple[int | None, str]:
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus, child.before.decode(errors="replace")


def test_end_of_input_at_the_token_prompt_is_no_token_given(tmp_path: Path) -> None:
    child = _login_at_a_terminal(tmp_path)
    child.sendeof()  # Ctrl-D on an empty line
    code, shown = _ended(child)
    assert code == 2, shown
    lines = [line for line in shown.splitlines() if line.strip()]
    assert lines[-1].startswith("crc: error: no token given:"), shown
    assert "--token -" in lines[-1] and "Traceback" not in shown and "aborted" not in shown
    assert not (tmp_path / "cfg" / "config.json").exists()


def test_ctrl_c_at_the_token_prompt_is_still_an_interruption(tmp_path: Path) -> None:
    child = _login_at_a_terminal(tmp_path)
    child.sendintr()
    code, shown = _ended(child)
    assert code == 130, shown
    assert "crc: interrupted" in shown and "no token given" not in shown, shown
    assert "aborted" not in shown, shown
