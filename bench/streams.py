"""Shells and forwards: throughput of one forward, keystroke echo, server memory per stream.

One `crc server run` process (SQLite, TLS, 127.0.0.1) and one `crc agent run` process;
the master is this process (the SDK's ``AsyncClient``). What is measured:

* forward throughput: one TCP connection through ``forward()`` (master -> server ->
  agent -> a TCP source on the agent's side), ``--bytes`` of random data (1 GiB), the
  SHA-256 of what arrived compared with what was sent;
* keystroke echo: one byte sent into a shell running ``cat`` (the remote terminal
  echoes it) until it comes back, ``--keys`` times: median and p95;
* server memory per open stream: the server's VmRSS with ``--streams`` idle forward
  connections (and as many idle shells) open, minus before, per stream.

    .venv/bin/python bench/streams.py [--bytes 1073741824] [--keys 300] [--streams 100]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import log, machine_info, mib, one_machine, rss_kib, write_section  # noqa: E402

BEGIN, END = "<!-- streams.py: begin -->", "<!-- streams.py: end -->"
BLOCK = 1 << 20


class Source:
    """A TCP server on the agent's side: each connection gets ``size`` random bytes
    (a 1 MiB random block with a counter, so the content is never periodic)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.digests: list[str] = []
        self.block = os.urandom(BLOCK)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._send, args=(conn,), daemon=True).start()

    def _send(self, conn: socket.socket) -> None:
        digest = hashlib.sha256()
        left = self.size
        n = 0
        try:
            first = conn.recv(1)  # the probe connection closes without a byte
            if not first:
                return
            while left > 0:
                chunk = (n.to_bytes(8, "big") + self.block)[: min(left, BLOCK + 8)]
                conn.sendall(chunk)
                digest.update(chunk)
                left -= len(chunk)
                n += 1
            self.digests.append(digest.hexdigest())
        except OSError:
            pass
        finally:
            conn.close()


class Sink:
    """A TCP server on the agent's side that holds connections open (idle streams)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)


async def throughput(client: Any, size: int) -> tuple[float, bool]:
    source = Source(size)
    async with client.forward("bench", "m", source.port) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        writer.write(b"g")
        await writer.drain()
        digest = hashlib.sha256()
        got = 0
        t = time.perf_counter()
        while got < size:
            data = await reader.read(1 << 20)
            if not data:
                break
            digest.update(data)
            got += len(data)
        took = time.perf_counter() - t
        writer.close()
    for _ in range(100):
        if source.digests:
            break
        await asyncio.sleep(0.1)
    same = got == size and bool(source.digests) and source.digests[-1] == digest.hexdigest()
    source.sock.close()
    return size / took / 1e6, same


async def echo(client: Any, keys: int) -> list[float]:
    from cloudremotecontrol.protocol.streams import StreamControl

    stream = await client.shell("bench", "m", argv=["cat"])
    times: list[float] = []
    try:

        async def until(wanted: bytes) -> None:
            seen = b""
            while wanted not in seen:
                message = await stream.recv()
                if isinstance(message, StreamControl):
                    raise RuntimeError(f"shell ended: {message!r}")
                seen += message

        await stream.send(b"ready\r")
        await until(b"ready\r\n")
        for i in range(keys):
            key = bytes([ord("a") + i % 26])
            t = time.perf_counter()
            await stream.send(key)
            await until(key)
            times.append(time.perf_counter() - t)
            await asyncio.sleep(0.005)
    finally:
        await stream.close()
    return times


async def memory(client: Any, server_pid: int, n: int) -> tuple[float, float]:
    """KiB of server RSS per idle forward connection, then per idle shell."""
    sink = Sink()
    base = rss_kib(server_pid)
    async with client.forward("bench", "m", sink.port) as port:
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(n)]
        for _ in range(300):
            if len(sink.conns) >= n + 1:  # the probe's too
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)
        per_forward = (rss_kib(server_pid) - base) / n
        for _, w in conns:
            w.close()
    await asyncio.sleep(2)
    base = rss_kib(server_pid)
    shells = [await client.shell("bench", "m", argv=["sleep", "600"]) for _ in range(n)]
    await asyncio.sleep(2)
    per_shell = (rss_kib(server_pid) - base) / n
    for s in shells:
        await s.close()
    for c in sink.conns:
        c.close()
    sink.sock.close()
    return per_forward, per_shell


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bytes", type=int, default=1 << 30)
    p.add_argument("--keys", type=int, default=300)
    p.add_argument("--streams", type=int, default=100)
    p.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)

    from cloudremotecontrol.master.aclient import AsyncClient

    tmp = Path(tempfile.mkdtemp(prefix="crc-bench-streams-"))
    load_before = os.getloadavg()[0]
    with one_machine(tmp) as (server, token):

        async def run() -> dict[str, Any]:
            async with AsyncClient(server.url, token, server.fingerprint) as client:
                log(f"forward throughput: {args.bytes} bytes")
                mbs, same = await throughput(client, args.bytes)
                log(f"keystroke echo: {args.keys} keys")
                times = await echo(client, args.keys)
                log(f"memory: {args.streams} idle forwards, then shells")
                idle = rss_kib(server.proc.pid)
                per_fwd, per_shell = await memory(client, server.proc.pid, args.streams)
                return {
                    "mbs": mbs,
                    "same": same,
                    "p50": statistics.median(times) * 1000,
                    "p95": sorted(times)[int(len(times) * 0.95) - 1] * 1000,
                    "idle": idle,
                    "per_fwd": per_fwd,
                    "per_shell": per_shell,
                }

        r = asyncio.run(run())
    rows = [
        (
            f"forward throughput, one connection ({args.bytes / 2**30:.2f} GiB)",
            f"{r['mbs']:.0f} MB/s, sha256 {'equal' if r['same'] else 'DIFFERENT'}",
        ),
        ("keystroke echo, median / p95", f"{r['p50']:.1f} / {r['p95']:.1f} ms"),
        ("server RSS before the streams", f"{mib(r['idle']):.0f} MiB"),
        (
            f"server RSS per idle forward connection ({args.streams} open)",
            f"{r['per_fwd']:.0f} KiB",
        ),
        (
            f"server RSS per idle shell ({args.streams} open, after)",
            f"{r['per_shell']:.0f} KiB",
        ),
    ]
    width = max(len(a) for a, _ in rows)
    table = "\n".join(f"{a:<{width}}  {b}" for a, b in rows)
    print(table)
    targets = [
        f"- forward >= 50 MB/s for one connection: {r['mbs']:.0f} MB/s, "
        + ("met" if r["mbs"] >= 50 and r["same"] else "MISSED"),
        f"- keystroke echo p50 <= 30 ms: {r['p50']:.1f} ms, "
        + ("met" if r["p50"] <= 30 else "MISSED"),
    ]
    print("\n".join(targets))
    if not args.no_write:
        body = (
            f"{BEGIN}\n## Shells and forwards\n\n"
            f"Produced by `.venv/bin/python bench/streams.py` on "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n"
            f"Machine: {machine_info()}; server, agent, master and the TCP source share it. "
            f"Load average (1 min): {load_before:.2f} before.\n\n"
            f"```\n{table}\n```\n\nTargets (from the issue):\n\n" + "\n".join(targets) + "\n"
            "\n*after*: measured after the forwards closed, so partly in memory they freed "
            "(the allocator reuses it): the forward figure is the one to plan with.\n"
            "\nThe memory a stream costs the server is bounded whatever its peers do: one "
            "message in flight per direction (at most 1 MiB, senders make 256 KiB) plus "
            "the sockets' buffers (server/streams.py; tested with a reader that stops).\n"
            f"{END}"
        )
        write_section(args.out, BEGIN, END, body, lambda old: old.rstrip("\n") + "\n" + body + "\n")
    return 0 if r["same"] else 1


if __name__ == "__main__":
    sys.exit(main())
