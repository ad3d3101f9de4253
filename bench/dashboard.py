"""Dashboard benchmark: a group of 1,000 machines in a real headless Chromium.

One `crc server run` (SQLite, TLS, 127.0.0.1) and N machines speaking the agent's wire
protocol (enrolled with their own keys, one TLS WebSocket each, all in one asyncio loop
on a thread of this process: the server cannot tell them from agents, and the bench
controls exactly when each progress line leaves). Every machine reports facts and a
progress line, then Debian's Chromium (Playwright, ``executable_path``) opens the
group's page:

* first render: navigation start to the machines table drawn (the page's own
  ``crc-machines-rendered`` performance mark), and the HTML's size and server time;
* update latency: a progress line sent by a machine in view until its text is in that
  row (a MutationObserver, same clock), idle and during a storm of progress from every
  machine at ``--storm-rate`` lines per second;
* freezing: during the storm, the longest main-thread task (Long Tasks API) and the
  longest gap between animation frames.

    .venv/bin/python bench/dashboard.py [--machines 1000] [--storm-rate 400] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import guarded, log, machine_info, raise_fd_limit, write_section

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- dashboard.py: begin -->", "<!-- dashboard.py: end -->"
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class Machines:
    """N machines on the raw wire protocol, driven from a thread with its own loop."""

    def __init__(self, server: Any, group: str, keys: dict[str, str]) -> None:
        self.server, self.group, self.keys = server, group, keys
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.conns: dict[str, Any] = {}
        self.seq: dict[str, int] = {}
        self.readers: list[asyncio.Task[None]] = []

    def call(self, coro: Any, timeout: float = 600) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _connect_all(self) -> None:
        import httpx
        from websockets.asyncio.client import connect

        from cloudremotecontrol.tlspin import client_context

        ctx, _ = client_context(self.server.url, self.server.fingerprint)
        ws_url = "wss://" + self.server.url.split("://", 1)[1] + "/v1/agent/connect"
        gate = asyncio.Semaphore(40)

        async with httpx.AsyncClient(base_url=self.server.url, verify=ctx, timeout=60) as http:

            async def one(name: str, key: str) -> None:
                async with gate:
                    r = await http.post("/v1/agent/enroll", json={"key": key})
                    r.raise_for_status()
                    cred = r.json()["credential"]
                    ws = await connect(
                        ws_url,
                        ssl=ctx,
                        additional_headers={"Authorization": f"Bearer {cred}"},
                        compression=None,
                        open_timeout=60,
                        max_size=1 << 20,
                    )
                    await ws.send(json.dumps({"type": "hello", "ack": 0, "ready": True}))
                    welcome = json.loads(await ws.recv())
                    assert welcome["type"] == "welcome", welcome
                    self.conns[name] = ws
                    self.seq[name] = int(welcome["ack"])
                    self.readers.append(asyncio.create_task(self._drain(name, ws)))
                    n = int(name[1:])
                    await self._send(
                        name,
                        "facts",
                        {
                            "hostname": f"vm-{name}",
                            "os": "linux",
                            "os_release": "Debian GNU/Linux 12 (bookworm)",
                            "arch": "x86_64",
                            "ips": [f"10.{n // 65536}.{n // 256 % 256}.{n % 256}"],
                            "private_ips": [],
                            "public_ips": [],
                            "agent_version": "bench",
                            "boot_id": str(uuid.uuid4()),
                            "python": "3.11.2",
                        },
                    )
                    await self._send(name, "progress", {"text": "provisioned", "percent": 100})

            await asyncio.gather(*(one(n, k) for n, k in self.keys.items()))

    async def _drain(self, name: str, ws: Any) -> None:
        """Read what the server sends (acks; messages are acknowledged back)."""
        try:
            async for raw in ws:
                frame = json.loads(raw)
                if frame.get("type") == "msg":
                    await ws.send(json.dumps({"type": "ack", "seq": frame["seq"]}))
        except Exception:  # noqa: BLE001 -- the connection closed: the bench ends
            pass

    async def _send(self, name: str, kind: str, body: dict[str, Any]) -> None:
        self.seq[name] += 1
        env = {
            "id": uuid.uuid4().hex,
            "group": self.group,
            "from": name,
            "to": "master",
            "type": kind,
            "body": body,
            "correlation_id": None,
            "created": time.time(),
        }
        await self.conns[name].send(json.dumps({"type": "msg", "seq": self.seq[name], "msg": env}))

    def connect_all(self) -> None:
        self.call(self._connect_all())

    def progress(self, name: str, text: str, percent: float | None = None) -> float:
        """Send a progress line now; return when it left (ms since the epoch)."""

        async def go() -> float:
            t = time.time() * 1000
            await self._send(name, "progress", {"text": text, "percent": percent})
            return t

        return float(self.call(go()))

    def storm(self, rate: float, seconds: float, but: str) -> int:
        """Progress lines from every machine in turn but ``but`` (the probed one: a storm
        line of its own a moment after a probe's would replace it before it is drawn,
        and the probe would never be seen), ``rate`` per second in total."""

        async def go() -> int:
            names = [n for n in self.conns if n != but]
            sent, t0 = 0, time.monotonic()
            while (elapsed := time.monotonic() - t0) < seconds:
                due = int(elapsed * rate) + 1
                while sent < due:
                    name = names[sent % len(names)]
                    await self._send(
                        name, "progress", {"text": f"storm {sent}", "percent": sent % 101}
                    )
                    sent += 1
                await asyncio.sleep(0.01)
            return sent

        return int(self.call(go(), timeout=seconds + 120))

    def close(self) -> None:
        async def go() -> None:
            for ws in self.conns.values():
                await ws.close()
            for t in self.readers:
                t.cancel()

        try:
            self.call(go(), timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


#: When the probe's line was shown; an error, not a hang, if it never is.
SEEN = """Promise.race([window.__seen, new Promise((_, no) => setTimeout(
  () => no(new Error('the progress line was not shown within 60 s')), 60000))])"""

PROBE = """(args) => {
  const [name, text] = args;
  window.__seen = new Promise((resolve) => {
    const body = document.getElementById('machines-body');
    const check = () => {
      const row = body.querySelector(`.vrow[data-name="${name}"] .ptext`);
      if (row && row.textContent.includes(text)) { obs.disconnect(); resolve(Date.now()); }
    };
    const obs = new MutationObserver(check);
    obs.observe(body, {subtree: true, childList: true, characterData: true});
  });
}"""

WATCH = """() => {
  window.__longtasks = [];
  window.__maxGap = 0;
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) window.__longtasks.push(e.duration);
  }).observe({type: 'longtask', buffered: false});
  let last = performance.now();
  window.__watching = true;
  const frame = (t) => {
    window.__maxGap = Math.max(window.__maxGap, t - last);
    last = t;
    if (window.__watching) requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
}"""


def spki_pin(cert_pem: bytes) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = x509.load_pem_x509_certificate(cert_pem).public_key()
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    from cloudremotecontrol.master.client import Client
    from cloudremotecontrol.master.localrun import ServerProcess

    server = ServerProcess(work / "srv").start()
    closers: list[Any] = [server.stop]
    result: dict[str, Any] = {"machines": args.machines}
    try:
        token = server.add_user("bench")
        client = Client(server.url, token, server.fingerprint)
        closers.append(client.close)
        names = [f"m{i:04d}" for i in range(args.machines)]
        made = client.create_group("bench", names, ttl=86400)
        keys = {m["name"]: m["key"] for m in made["machines"]}
        t = time.perf_counter()
        machines = Machines(server, "bench", keys)
        closers.insert(0, machines.close)
        machines.connect_all()
        log(f"{args.machines} machines enrolled and connected in {time.perf_counter() - t:.1f} s")
        deadline = time.monotonic() + 120
        while client.list_groups()[0]["ready"] < args.machines:
            if time.monotonic() > deadline:
                raise RuntimeError("machines did not all turn ready")
            time.sleep(0.2)

        pin = spki_pin((work / "srv" / "cert.pem").read_bytes())
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                str(work / "profile"),
                executable_path=args.chromium,
                headless=True,
                args=[*ARGS, f"--ignore-certificate-errors-spki-list={pin}"],
                viewport={"width": 1280, "height": 900},
            )
            try:
                page = ctx.new_page()
                page.goto(server.url + "/dashboard/login")
                page.fill("#token", token)
                page.click("#login")
                page.wait_for_selector("#groups")
                log("browser started and logged in")
                url = server.url + "/dashboard/groups/bench"
                renders, server_ms, sizes = [], [], []
                for _ in range(args.loads):
                    page.goto(url)
                    page.wait_for_function(
                        "() => performance.getEntriesByName('crc-machines-rendered').length > 0"
                    )
                    nav = page.evaluate(
                        "(() => { const n = performance.getEntriesByType('navigation')[0];"
                        " const m = performance.getEntriesByName('crc-machines-rendered')[0];"
                        " return {rendered: m.startTime, server: n.responseStart - n.requestStart,"
                        " size: n.decodedBodySize}; })()"
                    )
                    renders.append(nav["rendered"])
                    server_ms.append(nav["server"])
                    sizes.append(nav["size"])
                result["first_render_ms"] = renders
                result["server_ms"] = server_ms
                result["html_bytes"] = sizes[-1]
                result["rows_in_dom"] = page.locator("#machines .vrow:not([hidden])").count()
                page.wait_for_function(
                    "() => document.getElementById('live-text').textContent === 'live'"
                )
                first = names[0]

                def probe(i: int, tag: str) -> float:
                    text = f"{tag}-{i}-{uuid.uuid4().hex[:6]}"
                    page.evaluate(PROBE, [first, text])
                    sent = machines.progress(first, text, 50)
                    seen = float(page.evaluate(SEEN))
                    return seen - sent

                log("group page rendered and live")
                idle = [probe(i, "idle") for i in range(args.probes)]
                log(f"{args.probes} idle probes seen")
                result["idle_ms"] = idle
                page.evaluate(WATCH)
                storm_lat: list[float] = []
                done = threading.Event()
                sent_box: list[int] = []

                def storm() -> None:
                    try:
                        sent_box.append(machines.storm(args.storm_rate, args.storm_seconds, first))
                    finally:
                        done.set()

                threading.Thread(target=storm, daemon=True).start()
                i = 0
                while not done.is_set():
                    storm_lat.append(probe(i, "storm"))
                    i += 1
                    time.sleep(0.3)
                page.evaluate("window.__watching = false")
                result["storm_ms"] = storm_lat
                result["storm_sent"] = sent_box[0] if sent_box else 0
                result["longtasks"] = page.evaluate("window.__longtasks")
                result["max_frame_gap_ms"] = page.evaluate("window.__maxGap")
            finally:
                ctx.close()
    finally:
        for close in closers:
            try:
                close()
            except Exception as exc:  # noqa: BLE001 -- closing best effort
                log(f"closing: {exc}")
    return result


def table(r: dict[str, Any], args: argparse.Namespace) -> str:
    med = statistics.median
    long = r["longtasks"]

    def spread(xs: list[float]) -> str:
        return f"{med(xs):.0f} / {pct(xs, 0.95):.0f} / {max(xs):.0f} ms"

    storm = f"update latency during the storm ({args.storm_rate:g} lines/s), median / p95 / max"
    rows = [
        ("machines in the group", f"{r['machines']}"),
        ("first render (navigation to table drawn), median", f"{med(r['first_render_ms']):.0f} ms"),
        ("  all loads", ", ".join(f"{x:.0f}" for x in r["first_render_ms"]) + " ms"),
        ("  server time for the page, median", f"{med(r['server_ms']):.0f} ms"),
        ("  page size (HTML with the machines' data)", f"{r['html_bytes'] / 1024:.0f} KiB"),
        ("  rows in the DOM (virtualised)", f"{r['rows_in_dom']}"),
        ("update latency idle, median / p95 / max", spread(r["idle_ms"])),
        (storm, spread(r["storm_ms"])),
        ("  progress lines sent in the storm", f"{r['storm_sent']} in {args.storm_seconds:g} s"),
        ("  long tasks (> 50 ms) during the storm",
         f"{len(long)}, longest {max(long, default=0):.0f} ms"),
        ("  longest gap between animation frames", f"{r['max_frame_gap_ms']:.0f} ms"),
    ]  # fmt: skip
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)


def targets(r: dict[str, Any]) -> str:
    """The issue's targets against what was measured."""
    render = statistics.median(r["first_render_ms"])
    late = max(r["storm_ms"] + r["idle_ms"])
    worst = max(r["longtasks"], default=0)

    def met(ok: bool) -> str:
        return "met" if ok else "MISSED"

    return "\n".join(
        [
            "Targets (from the issue):",
            "",
            f"- first render with {r['machines']} machines <= 2 s: {render:.0f} ms, "
            f"{met(render <= 2000)}",
            f"- an update visible within 1 s of its event: slowest {late:.0f} ms, "
            f"{met(late <= 1000)}",
            f"- updates without freezing the page: longest task {worst:.0f} ms, longest frame "
            f"gap {r['max_frame_gap_ms']:.0f} ms, {met(worst < 200)}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--machines", type=int, default=1000)
    p.add_argument("--loads", type=int, default=5, help="page loads for the first render")
    p.add_argument("--probes", type=int, default=20, help="idle update probes")
    p.add_argument("--storm-rate", type=float, default=400, help="progress lines per second")
    p.add_argument("--storm-seconds", type=float, default=10)
    p.add_argument("--chromium", default=CHROMIUM)
    p.add_argument("--max-seconds", type=int, default=900)
    p.add_argument("--no-write", action="store_true", help="do not write bench/RESULTS.md")
    p.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    args = p.parse_args(argv)
    raise_fd_limit()
    work = Path(tempfile.mkdtemp(prefix="crc-bench-dashboard-"))
    box: dict[str, Any] = {}
    # The work dir (the server's data, Chromium's profile) goes once both have stopped.
    close = lambda: shutil.rmtree(work, ignore_errors=True)  # noqa: E731
    guarded("dashboard", args.max_seconds, lambda: box.update(run(args, work)), close)
    text = table(box, args)
    print(text)
    if not args.no_write:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        body = (
            f"{BEGIN}\n## Dashboard: {args.machines} machines in a browser\n\n"
            f"Produced by `.venv/bin/python bench/dashboard.py` on {stamp}.\n\n"
            f"Machine: {machine_info()}; server, machines and Chromium share it.\n\n"
            f"```\n{text}\n```\n\n{targets(box)}\n{END}"
        )
        write_section(
            Path(args.out), BEGIN, END, body, lambda old: old.rstrip() + "\n\n" + body + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
