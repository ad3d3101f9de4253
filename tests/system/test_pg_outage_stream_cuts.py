"""A database outage cuts every open event stream at once: the server log says so in
a bounded number of lines (the first cut, then one line with the count of the others),
not one line per stream."""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path

import httpx
from test_pg_outage import CLIENT_TIMEOUT, _allow, _back, server  # noqa: F401
from wire_helpers import bearer, pinned_http

from cloudremotecontrol.master.localrun import ServerProcess
from conftest import Env
from pg import PgCluster

STREAMS = 8


def test_an_outage_cutting_many_event_streams_is_logged_in_two_lines(
    server: ServerProcess,  # noqa: F811
    pg_url: str,
    pg_cluster: PgCluster,
    tmp_path: Path,
) -> None:
    env = Env(server, tmp_path)
    try:
        env.client.create_group("lab", ["a"])
        auth = {"Authorization": bearer(env.cli_env["CRC_TOKEN"])}
        with pinned_http(server) as http, contextlib.ExitStack() as streams:
            opened = [
                streams.enter_context(
                    http.stream(
                        "GET", "/v1/groups/lab/events", params={"follow": "true"}, headers=auth
                    )
                )
                for _ in range(STREAMS)
            ]
            assert [r.status_code for r in opened] == [200] * STREAMS
            _allow(pg_cluster, pg_url, False)
            start = time.monotonic()
            for r in opened:
                with contextlib.suppress(httpx.RemoteProtocolError):  # cut
                    for _ in r.iter_raw():
                        assert time.monotonic() - start < CLIENT_TIMEOUT
        # Every stream was cut; the count of the others is told within 10 s.
        deadline = time.monotonic() + 20
        while "event streams cut: " not in server.log_path.read_text():
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        _allow(pg_cluster, pg_url, True)
        _back(server)
    finally:
        env.close()
    log = server.log_path.read_text()
    lines = [x for x in log.splitlines() if re.search(r"event streams? cut: ", x)]
    # The first cut, then the count of the others (a cut later than 10 s after the
    # first, on a slow machine, may start a line of its own).
    assert 2 <= len(lines) <= 3, lines
    assert "event stream cut: " in lines[0], lines
    told = [int(m.group(1)) for x in lines if (m := re.search(r"cut: (\d+) more in", x))]
    assert len(lines) - len(told) + sum(told) == STREAMS, lines
    assert "Traceback" not in log and " ERROR " not in log, log[-6000:]
