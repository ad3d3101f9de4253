"""Real server and agent processes on this computer: used by `crc demo`, the local
provider and the system tests (one harness, so what the tests prove is what users run).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from ..errors import TlsPinMismatch, Unavailable
from ..tlspin import client_context

__all__ = ["AgentProcess", "ServerProcess", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: Tries of ``ServerProcess.start`` at a port of its own picking.
PORT_TRIES = 3
#: What ``crc server run`` says when its port is taken (server/runner.py).
PORT_IN_USE = "is in use by another process"


class PortTaken(Unavailable):
    """The server's port turned out to be another program's."""


def crc_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "cloudremotecontrol", *args]


class ServerProcess:
    """``crc server init`` + ``crc server run`` in ``data_dir`` on a loopback port."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        database: str | None = None,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        # A port picked here may be taken before the server binds it (free_port()
        # cannot hold it): the first start then moves to another (``start``).
        self.port_picked = not port
        self.port = port or free_port()
        self.database = database
        self.args = list(args or [])  # further `crc server run` options
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.fingerprint = ""
        self.log_path = self.data_dir / "server.log"
        self.log_start = 0  # where the log of the latest start begins

    def init(self) -> bool:
        """``crc server init`` unless done already; True if done now."""
        if (self.data_dir / "server.json").exists():
            cfg = json.loads((self.data_dir / "server.json").read_text())
            self.url, self.fingerprint = cfg["url"], cfg["fingerprint"]
            return False
        out = subprocess.run(
            crc_argv(
                "server",
                "init",
                "--data-dir",
                str(self.data_dir),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--url",
                f"https://127.0.0.1:{self.port}",
                "--json",
            ),
            check=True,
            capture_output=True,
            env=self.env,
        )
        cfg = json.loads(out.stdout)
        self.url, self.fingerprint = cfg["url"], cfg["fingerprint"]
        return True

    def _move(self, port: int) -> None:
        """Serve on ``port`` instead: a server initialised a moment ago, whose URL no
        one was given yet."""
        path = self.data_dir / "server.json"
        cfg = json.loads(path.read_text())
        cfg.update(url=f"https://127.0.0.1:{port}", listen=f"127.0.0.1:{port}")
        path.write_text(json.dumps(cfg))
        self.port, self.url = port, cfg["url"]

    def replica(self, data_dir: Path) -> ServerProcess:
        """Another server on this one's database, certificate and teardown key (as behind
        a load balancer), on its own port and data dir (made now; this one is initialised
        first)."""
        self.init()
        d = Path(data_dir)
        d.mkdir(parents=True)
        for name in ("cert.pem", "key.pem", "teardown.key"):
            shutil.copy2(self.data_dir / name, d / name)
        port = free_port()
        cfg = json.loads((self.data_dir / "server.json").read_text())
        cfg.update(url=f"https://127.0.0.1:{port}", listen=f"127.0.0.1:{port}")
        (d / "server.json").write_text(json.dumps(cfg))
        return ServerProcess(d, port=port, database=self.database, env=self.env)

    def start(self, timeout: float = 30.0) -> ServerProcess:
        """Run the server (initialised first if need be) and wait until it answers. A
        port this object picked and initialised the server with just now, taken by
        another program meanwhile, is exchanged for another (up to ``PORT_TRIES``
        times); a port given, or one a server was started on before, is not."""
        movable = self.init() and self.port_picked
        for tries_left in range(PORT_TRIES - 1, -1, -1):
            try:
                self._run(timeout)
                return self
            except PortTaken:
                if not movable or not tries_left:
                    raise
                self._move(free_port())
        raise AssertionError("unreachable")  # pragma: no cover

    def _run(self, timeout: float) -> None:
        args = ["server", "run", "--data-dir", str(self.data_dir), *self.args]
        if self.database:
            args += ["--database", self.database]
        log = open(self.log_path, "ab")
        self.log_start = log.tell()
        self.proc = subprocess.Popen(
            crc_argv(*args),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        log.close()
        try:
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()  # a server that never answered is not left running
            raise
        self._wait_start_line()

    def _wait_start_line(self, timeout: float = 5.0) -> None:
        """Let the server print its start line (printed once its listener is up, which
        can be just after the first health answer), so the log reads whole to whoever
        looks at it next."""
        assert self.proc is not None
        mark = f"pid {self.proc.pid})".encode()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            with open(self.log_path, "rb") as fh:
                if mark in fh.read():
                    return
            time.sleep(0.02)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        ctx = None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raw = self.log_path.read_bytes()
                said = raw.decode(errors="replace")
                if PORT_IN_USE.encode() in raw[self.log_start :]:
                    raise PortTaken(f"port {self.port} is taken: {said[-500:].strip()}")
                raise Unavailable(f"server exited with {self.proc.returncode}: {said[-2000:]}")
            try:
                if ctx is None:
                    ctx, _ = client_context(self.url, self.fingerprint)
                health = self.url + "/v1/health"
                with urllib.request.urlopen(health, timeout=2, context=ctx) as r:  # noqa: S310
                    if r.status == 200:
                        return
            except TlsPinMismatch:  # another server answers on this port
                raise PortTaken(f"another server answers on port {self.port}") from None
            except (OSError, Unavailable):
                pass
            if time.monotonic() > deadline:
                raise Unavailable(f"server did not start within {timeout:g} s")
            time.sleep(0.05)

    def admin(self, *args: str) -> dict[str, Any]:
        extra = ["--database", self.database] if self.database else []
        out = subprocess.run(
            crc_argv("server", *args, "--data-dir", str(self.data_dir), *extra, "--json"),
            check=True,
            capture_output=True,
            env=self.env,
        )
        answer: dict[str, Any] = json.loads(out.stdout)
        return answer

    def add_user(self, name: str) -> str:
        return str(self.admin("add-user", name)["token"])

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(15)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class AgentProcess:
    """``crc agent run`` with its own state dir (and optionally a command prefix, e.g.
    ``ip netns exec NS`` to put it on its own network)."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        url: str | None = None,
        key: str | None = None,
        fingerprint: str | None = None,
        prefix: list[str] | None = None,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.url, self.key, self.fingerprint = url, key, fingerprint
        self.prefix = prefix or []
        self.extra = extra or []
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.state_dir.with_name(self.state_dir.name + ".log")

    def start(self) -> AgentProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        args = ["agent", "run", "--state-dir", str(self.state_dir), *self.extra]
        if self.url:
            args += ["--url", self.url]
        if self.fingerprint:
            args += ["--fingerprint", self.fingerprint]
        env = dict(self.env)
        if self.key:
            env["CRC_KEY"] = self.key  # not on the command line, where `ps` shows it
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*self.prefix, *crc_argv(*args)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)
            self.proc.wait(15)

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
