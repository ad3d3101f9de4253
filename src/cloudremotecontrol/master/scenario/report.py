"""What ``crc up`` tells the server while it runs, so that the dashboard shows the run:
the step graph once (``PUT /v1/groups/G/run``), then every phase and step change
(``POST /v1/groups/G/run/report``).

Reporting never decides the run: a server without these endpoints (an older version)
or a report that fails is noted once, and the run goes on exactly as it would without.
Calls are made one at a time, in the order the runner makes them (a lock), so the server
sees a step's changes in order even when steps run on several threads.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from ...errors import CrcError, NotFound
from ..client import Client
from .model import Step

__all__ = ["RunReporter"]

MAX_MESSAGE = 1000
_STATES = {
    "started": "running",
    "retrying": "retrying",
    "succeeded": "succeeded",
    "failed": "failed",
    "skipped": "skipped",
    "done": "done",
}


class RunReporter:
    def __init__(self, client: Client, group: str, note: Callable[[str], None]) -> None:
        self.client = client
        self.group = group
        self.run_id = uuid.uuid4().hex
        self._note = note
        self._lock = threading.Lock()
        self._on = False

    def start(self, scenario: str, steps: Sequence[Step]) -> None:
        """Report the run and its step graph (every step pending)."""
        body = {
            "run_id": self.run_id,
            "scenario": scenario,
            "steps": [
                {
                    "name": s.name,
                    "kind": s.kind,
                    "to": s.to,
                    "needs": list(s.needs),
                    "retries": s.retries,
                }
                for s in steps
            ],
        }
        with self._lock:
            try:
                self.client.start_run(self.group, body)
            except NotFound as exc:
                if "no endpoint" in exc.message:  # a server from before the dashboard
                    return
                self._failed(exc)
                return
            except CrcError as exc:
                self._failed(exc)
                return
            self._on = True

    def phase(self, phase: str, message: str | None = None) -> None:
        self._send({"type": "phase", "phase": phase, "message": _cut(message)})

    def step(self, event: str, name: str, data: dict[str, Any]) -> None:
        """``event`` and ``data`` as graph.run_steps notifies them."""
        state = _STATES.get(event)
        if state is None:
            return
        seconds = data.get("seconds")
        self._send(
            {
                "type": "step",
                "step": name,
                "state": state,
                "attempt": int(data.get("attempt") or data.get("attempts") or 0),
                "seconds": round(float(seconds), 3) if seconds is not None else None,
                "message": _cut(data.get("message")),
            }
        )

    def end(self, ok: bool, message: str | None = None) -> None:
        self._send({"type": "end", "ok": ok, "message": _cut(message)})
        self._on = False

    def _send(self, report: dict[str, Any]) -> None:
        with self._lock:
            if not self._on:
                return
            try:
                self.client.report_run(self.group, {"run_id": self.run_id, **report})
            except CrcError as exc:
                self._failed(exc)

    def _failed(self, exc: CrcError) -> None:
        self._on = False
        self._note(f"the dashboard will not show this run: {exc.message}")


def _cut(text: object) -> str | None:
    if text is None or text == "":
        return None
    value = str(text)
    return value if len(value) <= MAX_MESSAGE else value[: MAX_MESSAGE - 1] + "…"
