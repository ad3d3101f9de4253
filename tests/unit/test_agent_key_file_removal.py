"""Once enrolled, the agent removes its enrollment key file: a regular file only. A
script that feeds the key through ``--key-file /dev/stdin`` (or a link, a pipe) must not
lose that path: ``/dev/stdin`` is a link, and the agent often runs as root."""

from __future__ import annotations

import os
from pathlib import Path

from cloudremotecontrol.agent.state import remove_key_file


def test_a_regular_key_file_is_removed(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("crck_x\n")
    assert remove_key_file(str(key)) is None
    assert not key.exists()
    assert remove_key_file(str(key)) is None  # gone already: nothing to say


def test_a_link_a_pipe_and_a_device_are_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "real"
    target.write_text("crck_x\n")
    link = tmp_path / "stdin"
    link.symlink_to(target)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (link, fifo, Path("/dev/null")):
        assert remove_key_file(str(path)) == "not a regular file: left as it is"
        assert os.path.lexists(path)
    assert target.exists()
