"""`crc server run --replica-url` (the real `crc` as a process) with a URL machines could
not use to dial this replica back: a scheme that is not the server's (http:// on a TLS
server, whose pinned certificate a machine will not send its credential without;
https:// on an --insecure one), or an empty value (an unset variable in a script, which
would otherwise be server.json's url: the mistake the option is there to avoid). Each is
one `crc: error: …` line, exit 2, before anything is served."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cloudremotecontrol.master.localrun import crc_argv

PORT = 45731  # never listened on: the command must stop before it serves


def _crc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(crc_argv(*args), capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("replica") / "data"
    r = _crc(
        "server",
        "init",
        "--data-dir",
        str(d),
        "--listen",
        f"127.0.0.1:{PORT}",
        "--url",
        f"https://127.0.0.1:{PORT}",
    )
    assert r.returncode == 0, r.stderr
    return d


@pytest.mark.parametrize(
    ("extra", "replica_url", "said"),
    [
        ([], f"http://127.0.0.1:{PORT}", "https://"),
        (["--json"], f"http://127.0.0.1:{PORT}", "https://"),
        (["--insecure"], f"https://127.0.0.1:{PORT}", "--insecure"),
        ([], "", "empty"),
        (["--insecure"], "", "empty"),
    ],
)
def test_a_replica_url_machines_could_not_dial_back_is_refused_before_serving(
    data_dir: Path, extra: list[str], replica_url: str, said: str
) -> None:
    r = _crc(
        "server",
        "run",
        "--data-dir",
        str(data_dir),
        "--listen",
        f"127.0.0.1:{PORT}",
        "--replica-url",
        replica_url,
        *extra,
    )
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    assert "serving" not in r.stdout + r.stderr and "dashboard" not in r.stdout + r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("crc: error: "), lines
    assert "--replica-url" in lines[0] and said in lines[0], lines[0]
