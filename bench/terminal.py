"""The dashboard's terminal in a real headless Chromium: opening it, and keystroke echo.

One `crc server run` process (SQLite, TLS, 127.0.0.1) and one `crc agent run` process;
Debian's Chromium (Playwright, ``executable_path``) logs in and opens a machine's
terminal page (xterm.js over `crc shell`'s stream). What is measured:

* open: navigation start until the page says ``connected`` (the page loaded, xterm.js
  started, the stream POSTed, its WebSocket dialed, the machine dialed back), median of
  ``--loads`` loads;
* keystroke echo: in a shell running ``cat``, one key given to xterm.js as typed input
  until its echo has moved the terminal's cursor one cell on (parsed into the buffer,
  the page's clock), ``--keys`` times: median and p95. bench/streams.py's figure, plus
  the browser.

    .venv/bin/python bench/terminal.py [--keys 300] [--loads 5] [--no-write]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import log, machine_info, one_machine, write_section  # noqa: E402

BEGIN, END = "<!-- terminal.py: begin -->", "<!-- terminal.py: end -->"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]

OPEN = """() => new Promise((resolve) => {
  const status = document.getElementById("term-status");
  const done = () => status.dataset.state === "open" && resolve(performance.now());
  new MutationObserver(done).observe(status, {attributes: true});
  done();
})"""

ECHO = """async (n) => {
  const t = window.crcTerminal;
  const out = [];
  for (let i = 0; i < n; i++) {
    const key = "abcdefghij"[i % 10];
    const b = t.buffer.active;
    const pos = () => (b.baseY + b.cursorY) * t.cols + b.cursorX;
    const want = pos() + 1;  // the echo moves the cursor one cell on
    const t0 = performance.now();
    await new Promise((resolve) => {
      const d = t.onWriteParsed(() => { if (pos() >= want) { d.dispose(); resolve(); } });
      t.input(key, true);
    });
    out.push(performance.now() - t0);
  }
  return out;
}"""


def spki_pin(cert_pem: bytes) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    spki = (
        x509.load_pem_x509_certificate(cert_pem)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def measure(url: str, token: str, pin: str, keys: int, loads: int, tmp: Path) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=[*ARGS, f"--ignore-certificate-errors-spki-list={pin}"],
            viewport={"width": 1280, "height": 900},
        )
        ctx.set_default_timeout(60_000)
        page = ctx.new_page()
        page.goto(url + "/dashboard/login")
        page.fill("#token", token)
        page.click("#login")
        page.wait_for_selector("#who")
        terminal = url + "/dashboard/groups/bench/machines/m/terminal"
        opens = []
        for _ in range(loads):
            page.goto(terminal)
            opened = page.evaluate(OPEN)
            opens.append(opened / 1000)  # performance.now() counts from navigation start
        page.locator("#terminal .xterm-helper-textarea").focus()
        page.keyboard.type("exec cat")
        page.keyboard.press("Enter")
        time.sleep(1.0)  # the shell becomes cat
        times = [t / 1000 for t in page.evaluate(ECHO, keys)]
        ctx.close()
    return {"opens": opens, "echo": times}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--keys", type=int, default=300)
    p.add_argument("--loads", type=int, default=5)
    p.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="crc-bench-terminal-"))
    load_before = os.getloadavg()[0]
    with one_machine(tmp) as (server, token):
        pin = spki_pin((tmp / "srv" / "cert.pem").read_bytes())
        log(f"terminal page: {args.loads} loads, then {args.keys} keys")
        r = measure(server.url.rstrip("/"), token, pin, args.keys, args.loads, tmp)
    echo = sorted(r["echo"])
    p50 = statistics.median(echo) * 1000
    p95 = echo[int(len(echo) * 0.95) - 1] * 1000
    opened = statistics.median(r["opens"])
    rows = [
        (
            f"terminal page to 'connected', median of {args.loads}",
            f"{opened:.2f} s (min {min(r['opens']):.2f}, max {max(r['opens']):.2f})",
        ),
        (f"keystroke echo in the page, median / p95 ({args.keys})", f"{p50:.1f} / {p95:.1f} ms"),
    ]
    width = max(len(a) for a, _ in rows)
    table = "\n".join(f"{a:<{width}}  {b}" for a, b in rows)
    print(table)
    if not args.no_write:
        body = (
            f"{BEGIN}\n## The dashboard's terminal\n\n"
            f"Produced by `.venv/bin/python bench/terminal.py` on "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n"
            f"Machine: {machine_info()}; server, agent and Chromium share it. "
            f"Load average (1 min): {load_before:.2f} before.\n\n"
            f"```\n{table}\n```\n\nEcho: a key given to xterm.js as typed input until "
            "its echo is in the terminal's buffer (the next animation frame draws it).\n"
            f"{END}\n"
        )
        write_section(args.out, BEGIN, END, body, lambda old: old.rstrip() + "\n\n" + body)
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
