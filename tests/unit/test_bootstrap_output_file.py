"""`crc bootstrap -o`'s file (``_Output``) where files cannot be opened relative to a
directory (Windows): the script still goes to a new file moved over the old one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cloudremotecontrol.cli import bootstrap_cmds
from cloudremotecontrol.cli.bootstrap_cmds import _Output
from cloudremotecontrol.errors import InvalidInput


def test_an_existing_file_is_replaced_without_directory_descriptors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bootstrap_cmds, "_AT", False)
    target = tmp_path / "setup.ps1"
    target.write_text("an older script, longer than the new one")
    out = _Output(str(target))
    out.write("new")
    out.close()
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["setup.ps1"]


def test_no_script_leaves_the_file_and_no_temporary_without_directory_descriptors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bootstrap_cmds, "_AT", False)
    monkeypatch.chdir(tmp_path)
    Path("boot.sh").write_text("older")
    _Output("boot.sh").close()
    assert Path("boot.sh").read_text() == "older"
    assert os.listdir(".") == ["boot.sh"]


@pytest.mark.parametrize("at", [True, False])
def test_a_missing_directory_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: bool
) -> None:
    monkeypatch.setattr(bootstrap_cmds, "_AT", at and bootstrap_cmds._AT)
    path = str(tmp_path / "nodir" / "boot.sh")
    with pytest.raises(InvalidInput) as exc:
        _Output(path)
    assert str(exc.value) == f"-o: cannot write {path}: there is no directory {tmp_path / 'nodir'}"
