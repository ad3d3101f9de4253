"""Soak: a real server flooded with generated agent frames, honest agents beside it.

    .venv/bin/python bench/soak.py                    # 1,000,000 frames, writes RESULTS.md
    .venv/bin/python bench/soak.py --frames 20000 --no-write

One ``crc server run`` (SQLite, TLS, 127.0.0.1) and a group with ``--honest`` real agent
processes and ``--fake`` fake machines. Each fake machine enrolls with its own key
(a real credential), then speaks the agent WebSocket by hand and sends generated frames:

* ``valid``: a well-formed ``msg`` (progress, ``user.*`` to the master, facts) with the
  next sequence number, or an ``ack``;
* ``mutated``: a valid frame with one thing changed (a field's type or value, the frame
  type, the sequence number, a byte of the JSON text, a message type a machine may not
  send, a sender or group that is not its own);
* ``truncated``: a valid frame cut at a random byte;
* ``oversized``: a frame over the 1 MiB WebSocket limit (the server closes the
  connection; the fake machine reconnects);
* ``deep``: JSON nested 400 to 100,000 levels (as a frame, or as a message body).

Meanwhile the server's RSS is sampled every second. At the end: every honest agent must
still run a job, the server must still be the same process, and its log must hold no
traceback. The table says how many frames of each kind were sent and how the server
answered (error frames, acks, connections it closed), then the verdicts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import guarded, log, machine_info, mib, rss_kib, write_section

KINDS = ("valid", "mutated", "truncated", "oversized", "deep")
MAX_FRAME = 1 << 20


class Frames:
    """The generator of one fake machine's frames."""

    def __init__(
        self,
        rng: random.Random,
        group: str,
        name: str,
        mix: dict[str, float],
        peers: tuple[list[str], float] = ([], 0.0),
    ) -> None:
        self.rng, self.group, self.name = rng, group, name
        self.peers, self.peer_share = peers
        self.seq = 0  # the last sequence number the server took from us
        self.kinds = list(mix)
        self.weights = [mix[k] for k in self.kinds]

    def recipient(self) -> str:
        """Mostly the master; with ``--to-peers``, that share goes to honest agents."""
        if self.peers and self.rng.random() < self.peer_share:
            return self.rng.choice(self.peers)
        return "master"

    def envelope(self, type_: str, body: Any, to: str = "master") -> dict[str, Any]:
        return {
            "id": uuid.uuid4().hex,
            "group": self.group,
            "from": self.name,
            "to": to,
            "type": type_,
            "body": body,
            "correlation_id": None,
            "created": time.time(),
        }

    def valid(self) -> tuple[str, bool]:
        """A valid frame; True if it is a numbered message (the server acks it)."""
        r = self.rng.random()
        if r < 0.1:
            return json.dumps({"type": "ack", "seq": 0}), False
        if r < 0.5:
            body: dict[str, Any] = {"text": f"step {self.rng.randrange(10**6)}"}
            if self.rng.random() < 0.5:
                body["percent"] = self.rng.uniform(0, 100)
            env = self.envelope("progress", body)
        elif r < 0.95:
            body = {"n": self.rng.randrange(10**9), "s": "x" * self.rng.randrange(200)}
            env = self.envelope(f"user.soak{self.rng.randrange(5)}", body, self.recipient())
        else:
            env = self.envelope(
                "facts",
                {
                    "os": "linux",
                    "hostname": self.name,
                    "ips": [f"10.9.{self.rng.randrange(256)}.{self.rng.randrange(256)}"],
                },
            )
        return json.dumps({"type": "msg", "seq": self.seq + 1, "msg": env}), True

    def mutated(self) -> str:
        text, _ = self.valid()
        frame = json.loads(text)
        rng = self.rng
        choice = rng.randrange(10)
        msg = frame.get("msg")
        if choice == 0:
            frame["type"] = rng.choice(["hello", "welcome", "revoked", "error", "bogus", 7, None])
        elif choice == 1:
            frame["seq"] = rng.choice([-1, "1", 1.5, None, 2**70, True, self.seq + 50])
        elif choice == 2 and msg:
            frame["msg"] = rng.choice([None, [], "msg", 5])
        elif choice == 3 and msg:
            msg["type"] = rng.choice(
                ["job.run", "hosts.sync", "file.put", "revoke", "", "x" * 300, "user.", 5]
            )
        elif choice == 4 and msg:
            msg[rng.choice(["from", "group", "to"])] = rng.choice(
                ["someone-else", "", None, 12, "x" * 400]
            )
        elif choice == 5 and msg:
            msg["body"] = rng.choice([None, [], "text", 1e308, {"d": "\ud800"[:0] + "\x00"}])
        elif choice == 6 and msg:
            msg["type"] = "job.result"
            msg["body"] = {"job_id": rng.choice(["nope", "", 5]), "status": "succeeded"}
        elif choice == 7:
            frame = rng.choice([[], "frame", 5, None, {"no": "type"}])
        text = json.dumps(frame)
        if choice >= 8 and text:
            i = rng.randrange(len(text))
            text = text[:i] + chr(rng.randrange(32, 127)) + text[i + 1 :]
        return text

    def truncated(self) -> str:
        text, _ = self.valid()
        return text[: self.rng.randrange(len(text))]

    def oversized(self) -> str:
        return json.dumps(
            {
                "type": "msg",
                "seq": self.seq + 1,
                "msg": self.envelope("user.big", {"x": "y" * MAX_FRAME}),
            }
        )

    def deep(self) -> str:
        depth = self.rng.choice([400, 500, 900, 1000, 2000, 10_000, 100_000])
        nest = "[" * depth + "]" * depth
        if self.rng.random() < 0.5:
            return nest  # the frame itself
        env = self.envelope("user.deep", {"d": "__DEEP__"}, self.recipient())
        text = json.dumps({"type": "msg", "seq": self.seq + 1, "msg": env})
        return text.replace('"__DEEP__"', nest)

    def next(self) -> tuple[str, str, bool]:
        kind = self.rng.choices(self.kinds, self.weights)[0]
        if kind == "valid":
            text, numbered = self.valid()
            return kind, text, numbered
        return kind, getattr(self, kind)(), False


class Stats:
    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()
        self.answers: Counter[str] = Counter()  # error codes, acks, close codes
        self.connections = 0
        self.lock = threading.Lock()


async def fake_machine(
    url: str,
    fingerprint: str,
    cred: str,
    group: str,
    name: str,
    quota: int,
    stats: Stats,
    mix: dict[str, float],
    seed: int,
    peers: tuple[list[str], float],
) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    from cloudremotecontrol.tlspin import client_context

    ctx, _ = client_context(url, fingerprint)
    ws_url = "wss://" + url.split("://", 1)[1].rstrip("/") + "/v1/agent/connect"
    gen = Frames(random.Random(seed), group, name, mix, peers)
    sent = 0
    while sent < quota:
        stats.connections += 1
        try:
            async with connect(
                ws_url,
                ssl=ctx,
                additional_headers={"Authorization": f"Bearer {cred}"},
                compression=None,
                max_size=None,
                open_timeout=60,
                ping_interval=None,
            ) as ws:
                await ws.send(json.dumps({"type": "hello", "ack": 0}))
                welcome = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if welcome.get("type") != "welcome":
                    stats.answers[f"hello refused: {welcome.get('type')}"] += 1
                    await asyncio.sleep(0.5)
                    continue
                gen.seq = int(welcome["ack"])  # what the server really took

                async def reader() -> None:
                    async for raw in ws:
                        frame = json.loads(raw)
                        kind = frame.get("type")
                        if kind == "ack":
                            stats.answers["ack"] += 1
                            gen.seq = max(gen.seq, int(frame["seq"]))
                        elif kind == "error":
                            err = frame.get("error") or {}
                            stats.answers[f"error {err.get('code') or frame.get('code')}"] += 1
                        elif kind == "msg":  # the server delivers something: ack it
                            await ws.send(json.dumps({"type": "ack", "seq": frame["seq"]}))

                read = asyncio.create_task(reader())
                try:
                    while sent < quota:
                        kind, text, numbered = gen.next()
                        # send() waits while the connection's buffer is full: the
                        # server's pace sets ours.
                        await asyncio.wait_for(ws.send(text), 120)
                        sent += 1
                        stats.sent[kind] += 1
                        if numbered:
                            gen.seq += 1  # the next valid message follows this one
                finally:
                    read.cancel()
                    with contextlib.suppress(asyncio.CancelledError, ConnectionClosed, Exception):
                        await read
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else "none"
            stats.answers[f"closed {code}"] += 1
        except (OSError, asyncio.TimeoutError) as exc:
            stats.answers[f"connection failed: {type(exc).__name__}"] += 1
            await asyncio.sleep(0.5)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from cloudremotecontrol.master.client import Client
    from cloudremotecontrol.master.localrun import AgentProcess, ServerProcess

    work = Path(tempfile.mkdtemp(prefix="crc-soak-"))
    server = ServerProcess(work / "srv")
    agents: list[AgentProcess] = []
    result: dict[str, Any] = {"work": str(work)}

    def body() -> None:
        server.start()
        token = server.add_user("soak")
        client = Client(server.url, token, server.fingerprint)
        names = [f"honest{i}" for i in range(args.honest)] + [f"fake{i}" for i in range(args.fake)]
        keys = {m["name"]: m["key"] for m in client.create_group("soak", names)["machines"]}
        for i in range(args.honest):
            agents.append(
                AgentProcess(
                    work / f"honest{i}", server.url, keys[f"honest{i}"], server.fingerprint
                ).start()
            )
        creds = {}
        import httpx

        from cloudremotecontrol.tlspin import client_context

        ctx, _ = client_context(server.url, server.fingerprint)
        with httpx.Client(base_url=server.url, verify=ctx, trust_env=False) as http:
            for i in range(args.fake):
                r = http.post("/v1/agent/enroll", json={"key": keys[f"fake{i}"]})
                r.raise_for_status()
                creds[f"fake{i}"] = r.json()["credential"]
        deadline = time.monotonic() + 60
        while True:
            states = {m["name"]: m["state"] for m in client.group("soak")["machines"]}
            if all(states[f"honest{i}"] == "ready" for i in range(args.honest)):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"honest agents not ready: {states}")
            time.sleep(0.2)
        assert server.proc is not None
        pid = server.proc.pid
        rss: list[int] = [rss_kib(pid)]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(1.0):
                rss.append(rss_kib(pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        stats = Stats()
        mix = {"valid": 0.4, "mutated": 0.3, "truncated": 0.18, "deep": 0.1195, "oversized": 0.0005}
        per = -(-args.frames // args.fake)
        log(f"sending {per * args.fake} frames from {args.fake} fake machines")
        t0 = time.perf_counter()

        async def flood() -> None:
            await asyncio.gather(
                *(
                    fake_machine(
                        server.url,
                        server.fingerprint,
                        creds[f"fake{i}"],
                        "soak",
                        f"fake{i}",
                        per,
                        stats,
                        mix,
                        args.seed + i,
                        ([f"honest{j}" for j in range(args.honest)], args.to_peers),
                    )
                    for i in range(args.fake)
                )
            )

        progress_stop = threading.Event()

        def progress() -> None:
            while not progress_stop.wait(15):
                n = sum(stats.sent.values())
                rate = n / (time.perf_counter() - t0)
                log(f"{n} frames, server RSS {mib(rss[-1]):.0f} MiB, {rate:.0f}/s")

        threading.Thread(target=progress, daemon=True).start()
        asyncio.run(flood())
        progress_stop.set()
        took = time.perf_counter() - t0
        stop.set()
        sampler.join(5)
        # After the flood: the same server process, and every honest agent runs a job.
        alive = server.proc.poll() is None and server.proc.pid == pid
        ran = 0
        for i in range(args.honest):
            job = client.start_job("soak", f"honest{i}", argv=["echo", "after the soak"])
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                status = client.job(job["job_id"])["targets"][0]["status"]
                if status in ("succeeded", "failed", "lost", "cancelled", "timed_out"):
                    break
                time.sleep(0.2)
            ran += status == "succeeded"
        log_text = server.log_path.read_text(errors="replace")
        result.update(
            frames=sum(stats.sent.values()),
            sent=dict(stats.sent),
            answers=dict(stats.answers),
            connections=stats.connections,
            seconds=took,
            rss_start=rss[0],
            rss_max=max(rss),
            rss_end=rss[-1],
            rss_after_warmup=rss[min(len(rss) - 1, 30)],
            alive=alive,
            honest_ran=ran,
            honest=args.honest,
            tracebacks=log_text.count("Traceback"),
            log_errors=sum(1 for ln in log_text.splitlines() if " ERROR " in ln),
        )
        client.close()

    def close() -> None:
        for a in agents:
            a.stop()
        server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    guarded("soak", args.max_seconds, body, close)
    return result


def table(r: dict[str, Any]) -> str:
    lines = ["kind        sent", "----------  ----------"]
    for kind in KINDS:
        lines.append(f"{kind:<10}  {r['sent'].get(kind, 0):>10,}")
    lines.append(f"{'total':<10}  {r['frames']:>10,}")
    lines += [
        "",
        "server answered                       count",
        "------------------------------------  ----------",
    ]
    for k, v in sorted(r["answers"].items(), key=lambda kv: -kv[1]):
        lines.append(f"{k[:36]:<36}  {v:>10,}")
    lines.append(f"{'WebSocket connections opened':<36}  {r['connections']:>10,}")
    ok = lambda b: "yes" if b else "NO"  # noqa: E731
    lines += [
        "",
        f"duration: {r['seconds']:.0f} s ({r['frames'] / r['seconds']:,.0f} frames/s)",
        f"server RSS: {mib(r['rss_start']):.0f} MiB at start, "
        f"{mib(r['rss_after_warmup']):.0f} MiB after 30 s, "
        f"{mib(r['rss_max']):.0f} MiB at most, {mib(r['rss_end']):.0f} MiB at the end",
        f"server process never restarted: {ok(r['alive'])}",
        f"tracebacks in the server log: {r['tracebacks']} (ERROR lines: {r['log_errors']})",
        f"honest agents that ran a job afterwards: {r['honest_ran']}/{r['honest']}",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=1_000_000)
    p.add_argument("--fake", type=int, default=16, help="fake machines (one connection each)")
    p.add_argument("--honest", type=int, default=3, help="real agent processes")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--to-peers",
        type=float,
        default=0.0,
        help="share of user messages (valid and deep) addressed to the honest agents",
    )
    p.add_argument("--max-seconds", type=int, default=3600)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    args = p.parse_args()
    r = run(args)
    text = table(r)
    print(text)
    good = r["alive"] and r["tracebacks"] == 0 and r["honest_ran"] == r["honest"]
    if not args.no_write:
        cmd = "`.venv/bin/python bench/soak.py" + (
            f" --frames {args.frames}`" if args.frames != 1_000_000 else "`"
        )
        body = (
            "<!-- soak.py: begin -->\n"
            f"Produced by {cmd} on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n"
            f"Machine: {machine_info()}.\n\n```\n{text}\n```\n<!-- soak.py: end -->"
        )
        write_section(
            Path(args.out),
            "<!-- soak.py: begin -->",
            "<!-- soak.py: end -->",
            body,
            lambda old: old.rstrip() + "\n\n# Soak: generated agent frames\n\n" + body + "\n",
        )
    sys.exit(0 if good else 1)


if __name__ == "__main__":
    main()
