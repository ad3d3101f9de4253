"""A TCP service for a `crc forward` to reach in tests: it takes connections and holds
them (``held``) until ``close()``, which shuts its listener down (waking the
``accept()`` under way), ends its thread and closes them all: a socket left for the
garbage collector would warn in whichever later test it is collected."""

from __future__ import annotations

import contextlib
import socket
import threading


class HeldService:
    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._take, daemon=True)
        self.thread.start()

    def _take(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # shut down: the test is over
            self.held.append(conn)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(10)
        self.sock.close()
        for conn in self.held:
            conn.close()
