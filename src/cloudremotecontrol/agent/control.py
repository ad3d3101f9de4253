"""The local control channel: scripts on the machine talk to the running agent.

Linux: a Unix socket ``STATE_DIR/control.sock`` (mode 0600 in a 0700 directory, so only
root - the agent's user - can use it). Windows: a loopback TCP port plus a random token,
both in ``STATE_DIR\\control.json`` readable only by SYSTEM and Administrators.

One request per connection: a JSON line in, a JSON line out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import CrcError, InvalidInput, Unavailable, error_from_payload

__all__ = ["ControlServer", "call"]

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_REQUEST = 512 << 10


class ControlServer:
    def __init__(
        self, state_dir: Path, handler: Handler, protect: Callable[[str], None] | None = None
    ) -> None:
        self.state_dir = state_dir
        self.handler = handler
        self.protect = protect
        self.token = secrets.token_urlsafe(24)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        if sys.platform != "win32":
            path = self.state_dir / "control.sock"
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            old = os.umask(0o177)
            try:
                with _short_path(path) as short:
                    self._server = await asyncio.start_unix_server(
                        self._serve, path=short, limit=MAX_REQUEST
                    )
            finally:
                os.umask(old)
        else:
            self._server = await asyncio.start_server(
                self._serve, "127.0.0.1", 0, limit=MAX_REQUEST
            )
            port = self._server.sockets[0].getsockname()[1]
            info = self.state_dir / "control.json"
            info.write_text(json.dumps({"port": port, "token": self.token}))
            if self.protect is not None:
                self.protect(str(info))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            request = json.loads(line)
            if not isinstance(request, dict):
                raise InvalidInput("request must be a JSON object")
            if sys.platform == "win32" and not secrets.compare_digest(
                str(request.get("token", "")), self.token
            ):
                raise InvalidInput("bad control token")
            reply = {"ok": True, **await self.handler(request)}
        except CrcError as exc:
            reply = {"ok": False, "status": exc.http_status, **exc.to_payload()}
        except (ValueError, asyncio.TimeoutError, asyncio.LimitOverrunError):
            reply = {
                "ok": False,
                "status": 400,
                "error": {"code": "invalid_input", "message": "malformed request"},
            }
        with contextlib.suppress(ConnectionError):
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
            writer.close()


@contextlib.contextmanager
def _short_path(path: Path) -> Iterator[str]:
    """A socket path short enough for ``sun_path`` (108 bytes on Linux): a long state
    directory is reached through ``/proc/self/fd/N/``, N being an open descriptor of it."""
    if len(os.fsencode(str(path))) < 100 or not os.path.isdir("/proc/self/fd"):
        yield str(path)
        return
    try:
        fd = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except FileNotFoundError:
        yield str(path)  # connect() below reports the missing agent clearly
        return
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def call(state_dir: Path, request: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Send one request to the agent running with ``state_dir``; raise its error."""
    try:
        if sys.platform != "win32":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            with _short_path(state_dir / "control.sock") as short:
                sock.connect(short)
        else:
            info = json.loads((state_dir / "control.json").read_text())
            request = {**request, "token": info["token"]}
            sock = socket.create_connection(("127.0.0.1", info["port"]), timeout=timeout)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise Unavailable(
            f"no agent is running with state dir {state_dir} ({exc.strerror}): "
            "start it with `crc agent run` or give --state-dir"
        ) from None
    except PermissionError:
        raise Unavailable(
            f"permission denied on the agent's control socket in {state_dir}: "
            "run as root (or the agent's user)"
        ) from None
    with sock:
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    try:
        reply: dict[str, Any] = json.loads(data)
    except ValueError:
        raise Unavailable("the agent closed the control connection without an answer") from None
    if not reply.get("ok"):
        raise error_from_payload(int(reply.get("status", 500)), reply)
    return reply
