"""crc pull reads a regular file also where /proc is not mounted (a chroot, a bare
container): the agent opens it by name then, checked on the open file, instead of
failing every pull with "is not a file". Run in a mount namespace of its own with /proc
unmounted (as root, with `unshare`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cloudremotecontrol

SRC = str(Path(cloudremotecontrol.__file__).parent.parent)

PROBE = """
import os, sys
assert not os.path.exists("/proc/self"), "/proc is still mounted"
from cloudremotecontrol.agent import files
from cloudremotecontrol.errors import InvalidInput
fd = files._open_regular(sys.argv[1])
print(os.read(fd, 100).decode())
try:
    files._open_regular(sys.argv[2])
except InvalidInput as exc:
    print(exc.message)
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"),
    reason="needs root and unshare to unmount /proc in a namespace of its own",
)
def test_a_pull_reads_a_regular_file_where_proc_is_not_mounted(tmp_path: Path) -> None:
    (tmp_path / "app.log").write_text("started\n")
    os.mkfifo(tmp_path / "fifo")
    r = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            'umount -l /proc && exec "$0" -c "$1" "$2" "$3"',
            sys.executable,
            PROBE,
            str(tmp_path / "app.log"),
            str(tmp_path / "fifo"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "started"
    assert "is a FIFO on this machine, not a regular file" in lines[-1], r.stdout
