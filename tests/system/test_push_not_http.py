"""A push whose download reaches something that does not speak HTTP as the server does
(a proxy or another program answering in the server's place): the job ends, failed,
with the reason, instead of waiting for a result that never comes. A real agent
(plain HTTP on loopback, as `--insecure` allows) reaches the server through a relay
that answers every blob download with a line that is not HTTP."""

from __future__ import annotations

import socket
import time

from tcp_relay import TcpRelay
from test_insecure import plain_server  # noqa: F401 -- the fixture

from cloudremotecontrol.master.client import Client
from cloudremotecontrol.master.localrun import AgentProcess


class NotHttpForBlobs(TcpRelay):
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        super().__init__()

    def connect(self, client: socket.socket) -> socket.socket | None:
        """The server for every request but a blob download, answered here."""
        client.settimeout(10)
        head = client.recv(4096, socket.MSG_PEEK)
        while head and b"\r\n" not in head and len(head) < 4096:
            time.sleep(0.01)  # the request line is not all in yet
            head = client.recv(4096, socket.MSG_PEEK)
        client.settimeout(None)
        if head.startswith(b"GET /v1/agent/blobs/"):
            client.recv(65536)
            client.sendall(b"HELLO THERE\r\n\r\n")
            return None
        return socket.create_connection(("127.0.0.1", self.upstream_port))


def test_a_push_answered_with_something_not_http_ends_failed(plain_server, tmp_path):  # noqa: F811
    url, token, _ = plain_server
    relay = NotHttpForBlobs(int(url.rsplit(":", 1)[1]))
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    with Client(url, token) as client:
        out = client.create_group("lab", ["a"])
        agent = AgentProcess(
            tmp_path / "a",
            url=f"http://127.0.0.1:{relay.port}",
            key=out["machines"][0]["key"],
            env={"CRC_AGENT_HOSTS_FILE": str(hosts)},
        ).start()
        try:
            client.wait_ready("lab", timeout=30)
            src = tmp_path / "app.conf"
            src.write_text("listen 80\n")
            started = client.push("lab", "a", str(src), str(tmp_path / "dest.conf"))
            deadline = time.monotonic() + 60  # its attempts take 8 s
            while True:
                target = client.job(started["job_id"])["targets"][0]
                if target["status"] not in ("queued", "delivered", "running"):
                    break
                assert time.monotonic() < deadline, f"the push never ended: {target}"
                time.sleep(0.2)
        finally:
            agent.stop()
            relay.close()
    assert target["status"] == "failed", target
    assert "BadStatusLine" in (target["reason"] or ""), target
    assert not (tmp_path / "dest.conf").exists()
