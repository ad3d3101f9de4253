"""`crc server init` on a data directory it cannot make says so in one line and exits 2
(the real `crc` as a process), instead of a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cloudremotecontrol.master.localrun import crc_argv


def test_a_data_dir_that_cannot_be_made_is_one_line_and_exit_2(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory\n")
    for where, reason in [
        (a_file / "srv", "Not a directory"),  # under a file
        (Path("/proc/crc-srv"), ""),  # on a file system that takes no directories
    ]:
        r = subprocess.run(
            crc_argv("server", "init", "--data-dir", str(where)),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 2, (where, r.stderr)
        assert "Traceback" not in r.stdout + r.stderr, where
        lines = r.stderr.splitlines()
        assert len(lines) == 1, (where, r.stderr)
        assert lines[0].startswith(f"crc: error: cannot make the server data directory {where}: ")
        assert reason in lines[0], lines
