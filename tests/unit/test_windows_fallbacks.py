"""What the agent and the CLI do where Windows differs from Linux, checked on Linux with
the difference made: no ``os.fchmod`` (Python < 3.13 on Windows), and a directory that
cannot be opened as a file raising PermissionError (not IsADirectoryError)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from cloudremotecontrol.agent.state import read_credential
from cloudremotecontrol.cli.bootstrap_cmds import _Output
from cloudremotecontrol.errors import InvalidInput


def test_bootstrap_writes_an_existing_file_where_there_is_no_fchmod(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "setup.ps1"
    target.write_text("an older script, longer than the new one")
    monkeypatch.delattr(os, "fchmod")
    out = _Output(str(target))
    out.write("new")
    assert target.read_text() == "new"


def test_a_credential_that_is_a_directory_is_damaged_where_opening_it_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "credential.json").mkdir()

    def refused(self: Path, *args: Any, **kwargs: Any) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", refused)
    with pytest.raises(InvalidInput, match="damaged"):
        read_credential(tmp_path)
