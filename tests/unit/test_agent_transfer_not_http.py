"""A push or pull whose answer is not HTTP as the server speaks it (a proxy or another
program in the server's place, a link that cuts a chunked body): the transfer ends
with the agent's error for an unreachable server, never with http.client's exception
escaping (the job would stay without a result). Against a real socket server on
loopback that answers each request with the same misbehaving bytes."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudremotecontrol.agent import files
from cloudremotecontrol.errors import Unavailable

SHA = "a" * 64

ANSWERS = {
    # http.client.BadStatusLine
    "bad status line": b"HELLO THERE\r\n\r\n",
    # http.client.LineTooLong
    "header too long": b"HTTP/1.1 200 OK\r\nX-Long: " + b"x" * 70000 + b"\r\n\r\n",
    # http.client.IncompleteRead: a chunked body cut in a chunk
    "chunk cut": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Type: application/json\r\n\r\n100\r\nabc",
    # ValueError inside http.client: a chunk size that is not hexadecimal
    "chunk size not hex": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Type: application/json\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    # http.client.RemoteDisconnected (an OSError)
    "closed without answer": b"",
}


class Misbehaving:
    def __init__(self, answer: bytes) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.answer = answer
        self.requests = 0
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                got = b""
                try:
                    while b"\r\n\r\n" not in got:
                        data = conn.recv(65536)
                        if not data:
                            break
                        got += data
                    self.requests += 1
                    conn.sendall(self.answer)
                    conn.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=sorted(ANSWERS))
def server(request: pytest.FixtureRequest) -> Iterator[Misbehaving]:
    s = Misbehaving(ANSWERS[request.param])
    yield s
    s.close()


def test_a_push_answered_with_something_not_http_fails_unavailable(
    server: Misbehaving, tmp_path: Path
) -> None:
    dest = tmp_path / "dest.bin"
    with pytest.raises(Unavailable, match="download of aaaaaaaaaaaa failed"):
        files.fetch_blob(
            lambda: (server.url, None), "cred", SHA, 1000, str(dest), None, None, lambda _: None
        )
    assert server.requests == files.ATTEMPTS  # tried again as for a cut connection
    assert not dest.exists()


def test_a_pull_answered_with_something_not_http_fails_unavailable(
    server: Misbehaving, tmp_path: Path
) -> None:
    path = tmp_path / "payload.bin"
    path.write_bytes(b"x" * 5000)
    with pytest.raises(Unavailable, match="cannot reach"):
        files.upload_file(lambda: (server.url, None), "cred", "job1", str(path), lambda _: None)


def test_a_push_never_writes_more_than_the_blobs_size(tmp_path: Path) -> None:
    """An answer going on past the blob (a proxy appending to it, another program
    streaming) is read no further than the blob's size: the machine's disk gets the
    blob, verified by its hash, and nothing more."""
    import hashlib

    blob = b"listen 80\n"
    sha = hashlib.sha256(blob).hexdigest()
    head = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
    server = Misbehaving(head + blob + b"x" * (8 << 20))
    try:
        dest = tmp_path / "app.conf"
        files.fetch_blob(lambda: (server.url, None), "cred", sha, len(blob), str(dest), None, None)
    finally:
        server.close()
    assert dest.read_bytes() == blob
    assert [p.name for p in tmp_path.iterdir()] == ["app.conf"]
