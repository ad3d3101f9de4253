"""What ``crc up`` / ``crc down`` show: a live view on a terminal, plain lines in a pipe,
JSON lines with ``--json``. All three take the same calls, from any thread: the
``View`` interface of master/scenario/view.py, which the runner calls.

The live view (rich ``Live``) keeps one line per machine — state and latest progress
line — and one per running step at the bottom of the terminal, while output and notes
scroll above it. Without a terminal the same information is printed as lines, once per
change, so logs of CI runs stay readable.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import click

from ..master.scenario.view import View
from .output import emit_json, print_table

__all__ = ["JsonView", "TextView", "make_view"]

_STATE_STYLE = {
    "ready": "green",
    "pending": "yellow",
    "enrolled": "cyan",
    "offline": "red",
    "revoked": "red",
    "booting": "yellow",
}


class JsonView(View):
    """JSON lines on stdout: ``{"event": ..., ...}``, one per change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._machines: dict[str, dict[str, Any]] = {}  # the last line of each machine

    def _emit(self, doc: dict[str, Any]) -> None:
        with self._lock:
            emit_json(doc)

    def info(self, text: str, **doc: Any) -> None:
        self._emit({"event": "info", "text": text, **doc})

    def machine(
        self, name: str, state: str | None = None, progress: str | None = None, **doc: Any
    ) -> None:
        line = {"event": "machine", "machine": name, "state": state, "progress": progress, **doc}
        with self._lock:
            if self._machines.get(name) == line:
                return  # no change (the runner says where machines stand at each phase)
            self._machines[name] = line
        self._emit(line)

    def step(self, event: str, name: str, **doc: Any) -> None:
        self._emit({"event": "step", "step": name, "status": event, **doc})

    def output(self, step: str, machine: str | None, stream: str, text: str) -> None:
        self._emit(
            {"event": "output", "step": step, "machine": machine, "stream": stream, "data": text}
        )

    def summary(self, doc: dict[str, Any]) -> None:
        self._emit({"event": "summary", **doc})


class TextView(View):
    """For people: rich Live on a terminal (``live=True``), else plain lines."""

    def __init__(self, live: bool) -> None:
        self._lock = threading.RLock()
        self._machines: dict[str, tuple[str, str]] = {}
        self._running: dict[str, float] = {}
        self._live: Any = None
        self._console: Any = None
        if live:
            from rich.console import Console
            from rich.live import Live

            self._console = Console()
            self._live = Live(
                console=self._console,
                auto_refresh=True,
                refresh_per_second=8,
                transient=True,
                get_renderable=self._render,
            )
            self._live.start()

    def close(self) -> None:
        with self._lock:
            if self._live is not None:
                self._live.stop()
                self._live = None

    def _print(self, text: str, style: str | None = None, err: bool = False) -> None:
        with self._lock:
            if self._console is not None:
                self._console.print(
                    text, style=style, markup=False, highlight=False, soft_wrap=True
                )
            else:
                click.echo(text, err=err)

    def _render(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        table = Table.grid(padding=(0, 2))
        with self._lock:
            for name, (state, progress) in self._machines.items():
                table.add_row(
                    Text(name, style="bold"),
                    Text(state, style=_STATE_STYLE.get(state, "")),
                    Text(progress, overflow="ellipsis", no_wrap=True),
                )
            now = time.monotonic()
            for name, t0 in self._running.items():
                table.add_row(
                    Text(f"step {name}", style="bold"),
                    Text("running", style="cyan"),
                    Text(f"{now - t0:.0f}s"),
                )
        return table

    def info(self, text: str, **doc: Any) -> None:
        from ..terminal import safe

        self._print(safe(text), style="dim" if self._console else None)

    def machine(
        self, name: str, state: str | None = None, progress: str | None = None, **doc: Any
    ) -> None:
        from ..terminal import safe

        progress = safe(progress) if progress is not None else None  # a machine's text
        with self._lock:
            old_state, old_progress = self._machines.get(name, ("-", ""))
            if state == "ready" and old_state != "ready" and progress is None:
                old_progress = ""  # what it said while starting is over
            new = (state or old_state, progress if progress is not None else old_progress)
            self._machines[name] = new
            if self._console is None and new != (old_state, old_progress):
                click.echo(f"  {name:<12} {new[0]:<9} {new[1]}".rstrip())

    def step(self, event: str, name: str, **doc: Any) -> None:
        from ..terminal import safe

        # A step's message can quote a machine (a job's reason): escaped, as its output.
        message = safe(doc.get("message") or "")
        with self._lock:
            if event == "started":
                self._running[name] = time.monotonic()
            elif event != "retrying":
                self._running.pop(name, None)
        attempt = doc.get("attempt") or 1
        if event == "started":
            self._print(
                f"step {name}" + (f" (attempt {attempt})" if attempt > 1 else ""), style="bold"
            )
        elif event == "retrying":
            self._print(
                f"step {name}: attempt {attempt} failed ({message}); "
                f"retrying in {doc.get('delay', 0):g}s",
                style="yellow",
            )
        elif event in ("failed", "skipped"):
            self._print(f"step {name} {event}: {message}".rstrip(": "), style="red")
        elif event == "succeeded":
            self._print(f"step {name} succeeded ({doc.get('seconds', 0):.1f}s)", style="green")
        elif event == "done":
            self._print(f"step {name}: done in an earlier run", style="dim")

    def output(self, step: str, machine: str | None, stream: str, text: str) -> None:
        from ..terminal import safe

        prefix = f"  [{machine}] " if machine else "  "
        for line in text.splitlines() or [""]:
            # Between the view's own lines, a machine's bytes are escaped: they must not
            # move the cursor or rewrite the live table.
            self._print(prefix + safe(line), style="red" if stream == "stderr" else None)

    def summary(self, doc: dict[str, Any]) -> None:
        self.close()
        if doc.get("refused") or doc.get("unreachable"):
            # Refused before it started, or the server not reached: the error says why; a
            # table would show machines without their addresses or instances (never
            # looked up).
            return
        if doc.get("group_deleted"):
            # Nothing is left (said above): a table would list machines never made.
            click.echo(f"\nscenario {doc.get('scenario')}: FAILED in {doc.get('seconds', 0):.1f}s")
            return
        click.echo("")
        print_table(
            ["MACHINE", "STATE", "ADDRESS", "INSTANCE"],
            [
                [m["name"], m["state"], m.get("ip") or "-", m.get("instance") or "-"]
                for m in doc.get("machines", [])
            ],
        )
        if doc.get("steps"):
            click.echo("")
            print_table(
                ["STEP", "STATUS", "TRIES", "TIME", "DETAIL"],
                [
                    [
                        s["name"],
                        s["status"],
                        str(s.get("attempts") or "-"),
                        f"{s.get('seconds', 0):.1f}s",
                        (s.get("message") or "")[:80],
                    ]
                    for s in doc["steps"]
                ],
            )
        verdict = "ok" if doc.get("ok") else "INTERRUPTED" if doc.get("interrupted") else "FAILED"
        click.echo(f"\nscenario {doc.get('scenario')}: {verdict} in {doc.get('seconds', 0):.1f}s")


def make_view(as_json: bool) -> View:
    if as_json:
        return JsonView()
    return TextView(live=sys.stdout.isatty())
