"""`crc` whose reader went away before it wrote (`crc | head -0`, `crc --help | head -0`,
`crc group list --bad 2>&1 | head -0`): help and the version end as any other output
cut short does, exit 141 without a word; an error that cannot be told keeps its own exit
code (as with stderr closed, `2>&-`). Never a traceback, never click's bare exit 1.

The real `crc` as a process, its output a pipe whose reading end is already closed, so
that its first write fails (no race with a reader)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cloudremotecontrol.master.localrun import crc_argv


def _run_into_closed_pipe(args: list[str], tmp_path: Path, *, stderr_too: bool) -> tuple[int, str]:
    """`crc ARGS | head -0` (with ``stderr_too``: `crc ARGS 2>&1 | head -0`): its exit
    code, and what it wrote on stderr when stderr is not the pipe."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone: every write gets EPIPE
    err_file = tmp_path / "stderr"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRC_")}
    env["CRC_CONFIG_DIR"] = str(tmp_path / "no-profile")
    try:
        with err_file.open("w") as err:
            proc = subprocess.run(
                crc_argv(*args),
                stdin=subprocess.DEVNULL,
                stdout=write_end,
                stderr=write_end if stderr_too else err,
                env=env,
                timeout=60,
            )
    finally:
        os.close(write_end)
    return proc.returncode, err_file.read_text()


@pytest.mark.parametrize(
    "args",
    [[], ["group"], ["agent", "kv"], ["--help"], ["-h"], ["--version"], ["group", "--help"]],
    ids=" ".join,
)
def test_help_and_version_into_a_closed_pipe_exit_141_without_a_word(
    args: list[str], tmp_path: Path
) -> None:
    code, err = _run_into_closed_pipe(args, tmp_path, stderr_too=False)
    assert code == 141, err
    assert err == "", err


@pytest.mark.parametrize(
    "args, code",
    [
        (["group", "list", "--bad"], 2),  # a usage error (click's)
        (["group", "create", "../x", "--machines", "a"], 2),  # crc's own check of a name
        (["group", "list"], 3),  # not logged in
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else str(v),
)
def test_an_error_into_a_closed_pipe_keeps_its_exit_code(
    args: list[str], code: int, tmp_path: Path
) -> None:
    # As told on an open stderr first: the same command, the same code.
    told, err = _run_into_closed_pipe(args, tmp_path, stderr_too=False)
    assert told == code and err.startswith("crc: error: "), err
    assert "Traceback" not in err
    untold, _ = _run_into_closed_pipe(args, tmp_path, stderr_too=True)
    assert untold == code
