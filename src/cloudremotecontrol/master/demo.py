"""The demo scenario on the embedded defaults: mysql, web and dev on this computer."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from .client import Client, worst_exit_code
from .localrun import AgentProcess, ServerProcess

__all__ = ["run_demo"]

MACHINES = ["mysql", "web", "dev"]


def _say(text: str, as_json: bool, **doc: Any) -> None:
    if as_json:
        from ..cli.output import emit_json

        emit_json({"step": text, **doc})
    else:
        click.echo(text)


def run_demo(keep: bool = False, as_json: bool = False) -> int:
    t0 = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="crc-demo-"))
    server = ServerProcess(root / "server")
    agents: list[AgentProcess] = []
    rc = 1
    try:
        server.start()
        token = server.add_user("demo")
        _say(f"server  {server.url}  ({server.fingerprint[:23]}…)", as_json, url=server.url)
        with Client(server.url, token, server.fingerprint) as crc:
            group = crc.create_group("demo", [{"name": "mysql", "labels": {"role": "db"}},
                                              {"name": "web", "labels": {"role": "web"}},
                                              {"name": "dev", "labels": {"role": "dev"}}])
            for m in group["machines"]:
                agents.append(AgentProcess(root / "agents" / m["name"], server.url, m["key"],
                                           server.fingerprint).start())
            _wait_ready(crc, "demo", as_json)
            results: dict[str, dict[str, Any]] = {}
            for title, to, cmd in [
                ("install MySQL (stand-in) on mysql", "mysql",
                 "echo 'mysql-server 8.0 (stand-in) installed'; echo success"),
                ("check every machine", "all", "echo \"$(hostname) up, $(uname -s)\""),
            ]:
                _say(f"step: {title}", as_json)
                for ev in crc.run("demo", to, command=cmd, shell="sh", timeout=60):  # noqa: S604
                    if ev["type"] == "job.output":
                        for line in ev["data"]["data"].splitlines():
                            _say(f"  [{ev['machine']}] {line}", as_json, machine=ev["machine"])
                    elif ev["type"] == "job.status" and ev["data"]["status"] not in (
                            "queued", "delivered", "running"):
                        results[f"{title}/{ev['machine']}"] = ev["data"]
            rc = worst_exit_code(results)
            _say("summary", as_json, results=results)
            if not as_json:
                for k, v in results.items():
                    click.echo(f"  {k:<48} {v['status']}")
            crc.delete_group("demo")
        for a in agents:
            try:
                a.wait(15)
            except Exception:  # noqa: BLE001 -- stopped below anyway
                a.stop()
    finally:
        for a in agents:
            a.stop()
        server.stop()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            click.echo(f"kept {root}", err=True)
    _say(f"done in {time.monotonic() - t0:.1f} s; nothing left running", as_json,
         seconds=round(time.monotonic() - t0, 1))
    return rc


def _wait_ready(crc: Client, group: str, as_json: bool, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    while time.monotonic() < deadline:
        g = crc.group(group)
        for m in g["machines"]:
            if seen.get(m["name"]) != m["state"]:
                seen[m["name"]] = m["state"]
                _say(f"  {m['name']:<6} {m['state']}", as_json, machine=m["name"],
                     state=m["state"])
        if all(m["state"] == "ready" for m in g["machines"]):
            return
        time.sleep(0.2)
    print("machines did not become ready in time", file=sys.stderr)
    raise SystemExit(6)
