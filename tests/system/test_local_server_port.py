"""A local server (``crc demo``'s, every test's) on a port picked for it: free_port()
cannot hold the port until the server binds it, and another program (another test run
beside this one, another demo) may take it meanwhile. The server then moves to another
port, before anyone was given its URL; a port given is never moved."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudremotecontrol.errors import Unavailable
from cloudremotecontrol.master import localrun
from cloudremotecontrol.master.client import Client
from cloudremotecontrol.master.localrun import ServerProcess


def _picks(monkeypatch: pytest.MonkeyPatch, first: int) -> list[int]:
    """free_port() answers ``first`` once (a port someone takes), then as before."""
    real, given = localrun.free_port, [first]

    def pick() -> int:
        return given.pop() if given else real()

    monkeypatch.setattr(localrun, "free_port", pick)
    return given


@pytest.fixture
def taken() -> Iterator[socket.socket]:
    """A port another program listens on."""
    with socket.create_server(("127.0.0.1", 0)) as s:
        yield s


def _works(srv: ServerProcess) -> None:
    token = srv.add_user("alice")
    with Client(srv.url, token, srv.fingerprint) as c:
        assert c.list_groups() == []
    cfg = json.loads((srv.data_dir / "server.json").read_text())
    assert (cfg["url"], cfg["listen"]) == (srv.url, f"127.0.0.1:{srv.port}")


def test_a_picked_port_taken_by_another_program_is_exchanged(monkeypatch, tmp_path, taken):
    port = taken.getsockname()[1]
    _picks(monkeypatch, port)
    srv = ServerProcess(tmp_path / "srv")
    assert srv.port == port
    srv.start()
    try:
        assert srv.port != port and srv.url == f"https://127.0.0.1:{srv.port}"
        _works(srv)
        log = srv.log_path.read_text()
        assert f"127.0.0.1:{port} is in use by another process" in log
    finally:
        srv.stop()


def test_a_picked_port_another_server_took_is_exchanged(monkeypatch, tmp_path: Path):
    other = ServerProcess(tmp_path / "other").start()
    try:
        _picks(monkeypatch, other.port)
        srv = ServerProcess(tmp_path / "srv")
        srv.start()
        try:
            assert srv.port != other.port and srv.fingerprint != other.fingerprint
            _works(srv)
            _works(other)  # the other one is left alone
        finally:
            srv.stop()
    finally:
        other.stop()


def test_a_port_given_is_not_exchanged(tmp_path, taken):
    port = taken.getsockname()[1]
    srv = ServerProcess(tmp_path / "srv", port=port)
    with pytest.raises(Unavailable, match=f"port {port} is taken: .*is in use by another"):
        srv.start()
    assert srv.port == port and srv.proc is not None and srv.proc.poll() is not None
    # A server initialised before keeps its port on a later start (its URL is known).
    taken.close()
    srv.start()
    try:
        assert srv.port == port
        _works(srv)
    finally:
        srv.stop()
