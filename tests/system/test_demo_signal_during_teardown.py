"""A signal that comes while `crc demo` tears down does not cut the teardown short: its
machines, server, bridge use and directory (with the server's keys) are all gone, and
the demo then ends as that signal says. The real `crc demo`, as root."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cloudremotecontrol.providers.local import LocalProvider, _marked


def _netns(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.startswith(prefix)]


@pytest.mark.skipif(os.geteuid() != 0, reason="the demo's machines need network namespaces")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_demos_teardown_lets_it_finish(sig):
    tmp = Path(tempfile.mkdtemp(prefix="crct-", dir="/tmp"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", "demo", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp)},
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        demo = LocalProvider(Path(first["dir"]) / "machines")
        out = [first]
        for line in proc.stdout:  # until the teardown has begun
            out.append(json.loads(line))
            if "stopping the server" in line:
                break
        else:
            pytest.fail(f"the demo ended before its teardown: {out}")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=90)
        left_files = list(tmp.iterdir())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    assert proc.returncode == 128 + sig, (proc.returncode, err)
    assert "Traceback" not in err, err
    assert _netns(f"crc-{demo.scope}-") == []
    assert [v for v in _marked().values() if v.startswith(f"{demo.scope}/")] == []
    assert left_files == [], left_files  # its directory, with the server's keys, is gone
    servers = subprocess.run(["pgrep", "-f", first["dir"]], capture_output=True, text=True)
    assert servers.stdout == "", servers.stdout
