"""What the benchmarks share: /proc measurements, the machine's description, the swarm of
simulated agents, the SDK job timing and the writing of a RESULTS.md section.

The *swarm*: N instances of the real ``cloudremotecontrol.agent.core.Agent`` class, each
with its own ``AgentState`` (own state dir, own SQLite outbox), enrolled with its own
single-use key over HTTPS and holding its own TLS WebSocket, many per process in one
asyncio loop, spread over a few worker processes. A worker is this file run as a script
(``python bench/_common.py SPEC``); it reports one JSON line on stdout once its agents are
connected, then answers commands, one JSON line each way on stdin/stdout:

    {"cmd": "emit", "type": "user.bench", "warmup": 1, "seconds": 10, "window": 4}
        every connected agent sends ``type`` messages to the master through
        ``Agent.emit`` (persisted in its outbox, then sent) for ``warmup + seconds``,
        keeping at most ``window`` of its own unacknowledged; answers
        ``{"acked": n, "seconds": s, "pending": p}``: the messages the server
        acknowledged during the last ``seconds`` (after the warm-up), and how many were
        still unacknowledged after waiting for the rest (``drain`` seconds at most).

It stops when its stdin closes (the parent ended, even by SIGKILL) or on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "Swarm",
    "add_swarm_options",
    "cpu_seconds",
    "crc_exe",
    "guarded",
    "log",
    "machine_info",
    "mib",
    "pss_kib",
    "raise_fd_limit",
    "rss_kib",
    "sdk_job",
    "swarm_worker",
    "write_section",
]


# -- small helpers ------------------------------------------------------------------------
def raise_fd_limit(want: int = 65536) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = min(want, hard) if hard != resource.RLIM_INFINITY else want
    if new > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return max(new, soft)


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """``field`` (VmRSS, VmHWM) of process ``pid`` from /proc, in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size of ``pid`` (shared library pages divided among their users)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system CPU time of process ``pid`` so far (all its threads); with
    ``children``, plus that of its children it waited for (an agent's jobs)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def mib(kib: float) -> float:
    return kib / 1024.0


def add_swarm_options(
    p: argparse.ArgumentParser, *, connect_timeout: float, max_seconds: int, out: Path
) -> None:
    """The options every swarm benchmark takes (processes, time limits, where to write)."""
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 2,
        help="swarm processes for large swarms (default: one per core)",
    )
    p.add_argument("--wave", type=int, default=100, help="agents started at once per worker")
    p.add_argument(
        "--fold-window",
        type=float,
        default=5.0,
        help="the simulated agents' job.fold window (seconds; the agent's own is 0.2): "
        "hundreds of agents sharing a core take seconds for what one VM does in "
        "milliseconds, so the server gets the messages it would get from real machines",
    )
    p.add_argument("--connect-timeout", type=float, default=connect_timeout)
    p.add_argument(
        "--max-seconds", type=int, default=max_seconds, help="stop everything after this long"
    )
    p.add_argument("--no-write", action="store_true", help="do not write bench/RESULTS.md")
    p.add_argument("--out", default=str(out))
    p.add_argument("--keep", action="store_true", help="keep the work directory")


def guarded(
    name: str, max_seconds: int, work: Callable[[], None], close: Callable[[], None]
) -> None:
    """Run ``work``, then ``close`` whatever happens: SIGTERM, SIGINT or ``max_seconds``
    passing end ``work`` with SystemExit, and a second Ctrl-C cannot interrupt ``close``
    (whose waits must be bounded), so nothing the benchmark started is left behind."""

    def bail(signum: int, _frame: Any) -> None:
        raise SystemExit(f"{name}: stopped by signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):
        signal.signal(sig, bail)
    signal.alarm(max_seconds)
    try:
        work()
    finally:
        signal.alarm(0)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        close()


def machine_info() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // (1024 * 1024)
    return (
        f"{os.cpu_count()} cores ({model}), {mem} GiB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


@contextlib.contextmanager
def one_machine(tmp: Path, group: str = "bench") -> Iterator[tuple[Any, str]]:
    """A server in ``tmp`` and one agent enrolled in ``group`` (machine ``m``), ready:
    yields the server and user bench's token; both stopped at the end."""
    from cloudremotecontrol.master.client import Client
    from cloudremotecontrol.master.localrun import AgentProcess, ServerProcess

    server = ServerProcess(tmp / "srv").start()
    agent = None
    try:
        token = server.add_user("bench")
        with Client(server.url, token, server.fingerprint) as c:
            key = c.create_group(group, ["m"])["machines"][0]["key"]
            agent = AgentProcess(tmp / "agent", server.url, key, server.fingerprint).start()
            deadline = time.monotonic() + 60
            while c.group(group)["machines"][0]["state"] != "ready":
                if time.monotonic() > deadline:
                    raise RuntimeError("the agent did not become ready")
                time.sleep(0.1)
        yield server, token
    finally:
        if agent is not None:
            agent.stop()
        server.stop()


def crc_exe() -> str:
    """The installed `crc` entry point next to this interpreter (what users run)."""
    exe = Path(sys.executable).with_name("crc")
    return str(exe) if exe.exists() else shutil.which("crc") or "crc"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sdk_job(client: Any, group: str, n: int) -> float:
    """Wall time of ``Client.run(group, "all", argv=["echo", "hi"])`` until all ``n``
    targets succeeded (their results are at the master)."""
    t = time.perf_counter()
    done = sum(
        1
        for ev in client.run(group, "all", argv=["echo", "hi"])
        if ev["type"] == "job.status" and ev["data"]["status"] == "succeeded"
    )
    took = time.perf_counter() - t
    if done != n:
        raise RuntimeError(f"SDK run: {done}/{n} succeeded")
    return took


def write_section(
    path: Path, begin: str, end: str, body: str, missing: Callable[[str], str]
) -> None:
    """Replace what lies between the ``begin`` and ``end`` markers of ``path`` (both
    included, ``body`` carries them) and keep the rest, written by hand; without the
    markers, write ``missing(old text)`` instead."""
    old = path.read_text() if path.exists() else ""
    if begin in old and end in old:
        new = old[: old.index(begin)] + body + old[old.index(end) + len(end) :]
    else:
        new = missing(old)
    path.write_text(new)


# -- the swarm worker (a separate process) -------------------------------------------------
def swarm_worker(spec_path: str) -> None:
    """Enroll and run the agents listed in the spec file until stdin closes (see the
    module docstring for what it prints and the commands it answers)."""
    raise_fd_limit()
    spec = json.loads(Path(spec_path).read_text())
    import logging

    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s swarm %(levelname)s %(message)s",
    )
    from cloudremotecontrol.agent.core import Agent, enroll
    from cloudremotecontrol.agent.platform import current
    from cloudremotecontrol.agent.state import AgentState

    class CountingState(AgentState):
        """The agent's real state, noting the last message it queued and the last one
        the server acknowledged (``acked`` is called from the agent's frame handler)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.last_seq = int(self.get("out_last", "0") or 0)
            self.last_acked = 0
            self.ack_arrived = asyncio.Event()

        def enqueue(self, env: Any, **kwargs: Any) -> tuple[int, str]:
            seq, frame = super().enqueue(env, **kwargs)
            self.last_seq = seq
            return seq, frame

        def acked(self, seq: int) -> None:
            super().acked(seq)
            self.last_acked = max(self.last_acked, seq)
            self.ack_arrived.set()

    base_rss = rss_kib(os.getpid())
    plat = current()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        buf = bytearray()
        fd = sys.stdin.fileno()

        def readable() -> None:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:  # EOF: the parent closed our stdin or is gone
                loop.remove_reader(fd)
                stop.set()
                return
            buf.extend(chunk)
            while b"\n" in buf:
                line, _, rest = bytes(buf).partition(b"\n")
                buf[:] = rest
                if line.strip():
                    commands.put_nowait(json.loads(line))

        loop.add_reader(fd, readable)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        states: list[CountingState] = []
        agents: list[Agent] = []
        limit = asyncio.Semaphore(8)

        def enrolled(name: str, key: str) -> Any:
            # On a thread, through a state of its own: a state's database is used by the
            # thread that opened it (the agent's below, by this loop's).
            own = AgentState(Path(spec["dir"]) / name, protect=plat.protect_file)
            try:
                return enroll(own, spec["url"], key, spec["fingerprint"])
            finally:
                own.close()

        async def make(name: str, key: str) -> Agent:
            state = CountingState(Path(spec["dir"]) / name, protect=plat.protect_file)
            states.append(state)
            async with limit:
                cred = await asyncio.to_thread(enrolled, name, key)
            kw = {"facts_interval": spec["facts_seconds"]} if spec.get("facts_seconds") else {}
            return Agent(state, cred, plat, fold_seconds=spec.get("fold_seconds", 0.2), **kw)

        async def pump(
            agent: Agent, state: CountingState, end: float, window: int, kind: str
        ) -> None:
            n = 0
            while loop.time() < end:
                if state.last_seq - state.last_acked >= window:
                    state.ack_arrived.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(
                            state.ack_arrived.wait(), max(0.0, end - loop.time())
                        )
                    continue
                await agent.emit(kind, {"n": n})
                n += 1

        async def emit(cmd: dict[str, Any]) -> dict[str, Any]:
            busy = [(a, s) for a, s in zip(agents, states, strict=True) if a.connected.is_set()]
            start = loop.time()
            end = start + cmd["warmup"] + cmd["seconds"]
            pumps = [
                loop.create_task(pump(a, s, end, int(cmd["window"]), cmd["type"])) for a, s in busy
            ]
            try:
                await asyncio.sleep(cmd["warmup"])
                first, t0 = sum(s.last_acked for _, s in busy), loop.time()
                await asyncio.sleep(max(0.0, end - loop.time()))
                last, t1 = sum(s.last_acked for _, s in busy), loop.time()
                await asyncio.gather(*pumps)
            finally:
                for p in pumps:
                    p.cancel()
            deadline = loop.time() + float(cmd.get("drain", 30))
            while any(s.last_acked < s.last_seq for _, s in busy) and loop.time() < deadline:
                await asyncio.sleep(0.05)
            return {
                "acked": last - first,
                "seconds": t1 - t0,
                "senders": len(busy),
                "pending": sum(s.last_seq - s.last_acked for _, s in busy),
            }

        async def serve() -> None:
            while True:
                cmd = await commands.get()
                if cmd.get("cmd") == "emit":
                    out = await emit(cmd)
                else:
                    out = {"error": f"unknown command {cmd.get('cmd')!r}"}
                print(json.dumps(out), flush=True)

        tasks: list[asyncio.Task[None]] = []
        server: asyncio.Task[None] | None = None
        try:
            agents = list(await asyncio.gather(*(make(n, k) for n, k in spec["keys"])))
            deadline = loop.time() + spec["connect_timeout"]
            # Start in waves so a thousand TLS handshakes do not all land at once.
            for i in range(0, len(agents), spec["wave"]):
                wave = agents[i : i + spec["wave"]]
                tasks += [loop.create_task(a.run()) for a in wave]
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(
                        asyncio.gather(*(a.connected.wait() for a in wave)),
                        max(0.1, deadline - loop.time()),
                    )
            n = sum(a.connected.is_set() for a in agents)
            print(
                json.dumps(
                    {
                        "connected": n,
                        "agents": len(agents),
                        "base_rss_kib": base_rss,
                        "rss_kib": rss_kib(os.getpid()),
                    }
                ),
                flush=True,
            )
            server = loop.create_task(serve())
            await stop.wait()
        finally:
            if server is not None:
                server.cancel()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for s in states:
                s.close()

    asyncio.run(main())


class Swarm:
    """Worker processes that each run a share of the simulated agents."""

    def __init__(
        self,
        work: Path,
        url: str,
        fingerprint: str,
        keys: list[tuple[str, str]],
        workers: int,
        wave: int,
        connect_timeout: float,
        fold_seconds: float = 0.2,
        facts_seconds: float | None = None,
    ) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.reports: list[dict[str, Any]] = []
        self.logs: list[Path] = []
        work.mkdir(parents=True, exist_ok=True)
        shares = [keys[i::workers] for i in range(workers)]
        for i, share in enumerate(s for s in shares if s):
            spec = work / f"swarm{i}.json"
            spec.write_text(
                json.dumps(
                    {
                        "url": url,
                        "fingerprint": fingerprint,
                        "keys": share,
                        "dir": str(work / f"swarm{i}"),
                        "wave": wave,
                        "connect_timeout": connect_timeout,
                        "fold_seconds": fold_seconds,
                        # How often each agent looks at its addresses again (a process
                        # each time; None: the agent's own 30 s). Thousands of agents
                        # sharing a machine have the same addresses.
                        "facts_seconds": facts_seconds,
                    }
                )
            )
            log = work / f"swarm{i}.log"
            self.logs.append(log)
            with open(log, "ab") as fh:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, str(Path(__file__).resolve()), str(spec)],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=fh,
                        text=True,
                        start_new_session=True,
                    )
                )

    def _replies(self, timeout: float) -> list[dict[str, Any]]:
        """One JSON line from every worker, within ``timeout`` seconds overall."""
        deadline = time.monotonic() + timeout
        out = []
        for p in self.procs:
            assert p.stdout is not None
            with selectors.DefaultSelector() as sel:
                sel.register(p.stdout, selectors.EVENT_READ)
                if not sel.select(max(0.1, deadline - time.monotonic())):
                    raise TimeoutError(f"swarm worker {p.pid} did not answer in {timeout} s")
            line = p.stdout.readline()
            if not line:
                tail = "\n".join(log.read_text()[-2000:] for log in self.logs)
                raise RuntimeError(f"swarm worker {p.pid} died: {tail}")
            out.append(json.loads(line))
        return out

    def wait_connected(self, timeout: float) -> None:
        self.reports = self._replies(timeout)

    def send(self, cmd: dict[str, Any]) -> None:
        """Send ``cmd`` to every worker; collect their answers with ``replies``."""
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(json.dumps(cmd) + "\n")
            p.stdin.flush()

    def replies(self, timeout: float) -> list[dict[str, Any]]:
        return self._replies(timeout)

    @property
    def connected(self) -> int:
        return sum(r["connected"] for r in self.reports)

    def rss_kib(self) -> tuple[int, int]:
        """(total RSS of the workers now, their RSS before any agent existed)."""
        return (
            sum(rss_kib(p.pid) for p in self.procs),
            sum(r["base_rss_kib"] for r in self.reports),
        )

    def stop(self) -> None:
        for p in self.procs:
            if p.stdin is not None:
                with contextlib.suppress(OSError):
                    p.stdin.close()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(15)
            if p.stdout is not None:
                p.stdout.close()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()


if __name__ == "__main__":
    swarm_worker(sys.argv[1])
