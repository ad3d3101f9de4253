"""After the TLS handshake the server sends nothing a client did not ask for: no TLS 1.3
session tickets. A threaded client (websockets' sync client, which the SDK's shell
uses) reads in one thread while it writes its upgrade request in another; a ticket
arriving then has two threads inside one OpenSSL connection and can lose the request.
Tickets would buy nothing anyway: no client of this server resumes sessions."""

from __future__ import annotations

import socket
import ssl

from cloudremotecontrol.tlspin import client_context, host_port


def test_the_server_sends_no_session_tickets(server) -> None:
    ctx, _ = client_context(server.url, server.fingerprint)
    assert ctx is not None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    host, port = host_port(server.url)
    with (
        socket.create_connection((host, port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        assert tls.version() == "TLSv1.3"
        tls.settimeout(1.0)
        try:  # a read lets OpenSSL take in what the server sent after its handshake
            data = tls.recv(1)
        except TimeoutError:
            data = b""
        assert data == b"", "the server sent application data unasked"
        session = tls.session
        assert session is not None
        assert not session.has_ticket, "the server sent a TLS 1.3 session ticket"
