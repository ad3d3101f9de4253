"""docs/architecture.md's state diagrams are the tables of protocol/states.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cloudremotecontrol.protocol.states import JOB_TRANSITIONS, MACHINE_TRANSITIONS

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"


def _check(doc: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "diagrams"), "--check", "--doc", str(doc)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_state_diagrams_are_generated_from_the_tables() -> None:
    res = _check(DOC)
    assert res.returncode == 0, res.stdout + res.stderr
    text = DOC.read_text()
    for (state, _event), target in [*MACHINE_TRANSITIONS.items(), *JOB_TRANSITIONS.items()]:
        assert f"    {state.value} --> {target.value}: " in text


def test_a_diagram_that_differs_from_its_table_is_reported(tmp_path: Path) -> None:
    stale = tmp_path / "architecture.md"
    stale.write_text(DOC.read_text().replace("    pending --> revoked: revoke\n", "", 1))
    res = _check(stale)
    assert res.returncode == 1
    assert "-    pending --> revoked: revoke" not in res.stdout
    assert "+    pending --> revoked: revoke" in res.stdout
    assert "run scripts/diagrams" in res.stdout
