"""A shell session cut by its replica's death (``kill -9``) is listed through another
replica with the bytes it carried each way, as its recording holds them, not 0/0."""

from __future__ import annotations

import pytest
from test_replicas import _shell_on, _wait, lab

from cloudremotecontrol.server.recorder import replay_bytes


@pytest.mark.timeout(600)  # a lease of a minute to expire, on a busy machine
def test_a_session_cut_by_a_killed_replica_is_listed_with_its_bytes(pg_url, tmp_path):
    with lab(tmp_path, pg_url, 2) as ((b, a), (via_b, via_a), _agent):
        shell = _shell_on(via_a, pg_url, "cut-me")
        cut = shell.id
        shell.send(b"typed")  # no newline: `read` waits on; the terminal echoes it
        shell.expect("typed", 60)
        # Wait until the recording in the database holds the echo (a chunk is written
        # at most 5 s after its bytes came).
        _wait(lambda: b"typed" in replay_bytes(via_b.recording(cut)), 60)
        recorded = replay_bytes(via_b.recording(cut))
        a.kill()
        shell.close()

        def listed() -> dict[str, dict]:
            return {r["stream"]: r for r in via_b.sessions("lab") if r["stream"] == cut}

        row = _wait(listed, 300)[cut]
        assert row["cut"] is True and row["recorded"] is True, row
        assert row["bytes_from_machine"] == len(recorded) > 0, (row, recorded)
        assert row["bytes_to_machine"] == len(b"typed"), row
        assert "Traceback" not in b.log_path.read_text()
