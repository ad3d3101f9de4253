"""A loopback TCP relay for system tests that put something between an agent and the
server (a proxy, a link that breaks): each accepted connection gets an upstream from
``connect`` and is then pumped both ways by two threads, through ``forward``."""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpRelay:
    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def connect(self, client: socket.socket) -> socket.socket | None:
        """The upstream for a new client connection (None: the client was answered)."""
        raise NotImplementedError

    def forward(self, data: bytes, upstream: bool) -> bool:
        """Whether ``data`` read from one end goes on (``upstream``: client to server)."""
        return True

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self._track(client):
                return
            threading.Thread(target=self._start, args=(client,), daemon=True).start()

    def _start(self, client: socket.socket) -> None:
        try:
            upstream = self.connect(client)
        except OSError:  # either end gone, or no upstream
            upstream = None
        if upstream is None:
            with contextlib.suppress(OSError):
                client.close()
            return
        if not self._track(upstream):
            return
        for src, dst, up in ((client, upstream, True), (upstream, client, False)):
            threading.Thread(target=self._pump, args=(src, dst, up), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while data := src.recv(65536):
                if self.forward(data, upstream):
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _track(self, sock: socket.socket) -> bool:
        """Keep ``sock`` for ``cut``; once the relay is closed, close it at once (a
        connection accepted, or an upstream opened, while ``close`` ran is never left
        open for the garbage collector)."""
        with self._lock:
            if not self._closed:
                self._socks.append(sock)
                return True
        sock.close()
        return False

    def cut(self) -> None:
        """Break every relayed connection (both ends see it close)."""
        with self._lock:
            socks, self._socks = self._socks, []
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.listener.close()
        self.cut()


class ConnectProxy(TcpRelay):
    """An HTTP proxy that does CONNECT only (what a WebSocket over TLS asks of it), and
    records each request line."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}"

    def connect(self, client: socket.socket) -> socket.socket | None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = client.recv(4096)
            if not data:
                return None
            head += data
        line = head.split(b"\r\n", 1)[0].decode()
        self.requests.append(line)
        method, target, _ = line.split(" ", 2)
        if method != "CONNECT":
            client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return None
        host, _, port = target.rpartition(":")
        upstream = socket.create_connection((host, int(port)), 5)
        try:
            upstream.settimeout(None)  # the 5 s were for connecting: a quiet link stays up
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            rest = head.split(b"\r\n\r\n", 1)[1]
            if rest:
                upstream.sendall(rest)
        except OSError:
            upstream.close()
            raise
        return upstream
