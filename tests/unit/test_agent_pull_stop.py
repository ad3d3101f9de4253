"""A pull the master cancels stops its upload (agent/files.py ``upload_file``'s
``stopped``): cancelled before it began, nothing is read or sent; cancelled while its
body is sent, the rest of the file is not. Against a real socket server on loopback
that counts the bytes it is sent."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from cloudremotecontrol.agent import files


class Counting:
    """Takes one connection and counts what it is sent until the sender closes it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.received = 0
        self.done = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(30)
            try:
                while data := conn.recv(1 << 20):
                    self.received += len(data)
            except OSError:
                pass
        self.done.set()

    def close(self) -> None:
        self.sock.close()


def test_a_pull_cancelled_before_it_began_reads_and_sends_nothing(tmp_path: Path) -> None:
    path = tmp_path / "payload.bin"
    path.write_bytes(b"x" * 5000)
    asked: list[str] = []

    def where() -> tuple[str, None]:
        asked.append("where")
        return "http://127.0.0.1:9", None

    with pytest.raises(files.Stopped):
        files.upload_file(where, "cred", "job1", str(path), lambda _: None, lambda: True)
    assert asked == []  # no server was even looked up


def test_a_pull_cancelled_while_its_body_is_sent_sends_no_more(tmp_path: Path) -> None:
    size = 12 * files.CHUNK  # above files.SMALL: streamed from the file as it is sent
    assert size > files.SMALL
    path = tmp_path / "payload.bin"
    with path.open("wb") as fh:
        for _ in range(12):
            fh.write(b"y" * files.CHUNK)
    server = Counting()
    checks = 0

    def stopped() -> bool:
        # False while the file is hashed (12 chunks) and the upload begins, then for
        # two chunks of the body: the master's cancel arrives there.
        nonlocal checks
        checks += 1
        return checks > 12 + 1 + 2

    try:
        with pytest.raises(files.Stopped):
            files.upload_file(
                lambda: (server.url, None), "cred", "job1", str(path), lambda _: None, stopped
            )
        assert server.done.wait(30), "the connection was never closed"
    finally:
        server.close()
    assert 0 < server.received < size // 2, server.received
