"""Running a scenario's steps: each starts as soon as everything it ``needs`` succeeded.

The scheduler knows nothing about jobs or servers: it calls ``execute(step, attempt)``
on worker threads (at most ``max_parallel`` at once) and decides what runs next:

* a step runs when every step it needs has succeeded (now, or in an earlier ``crc up``:
  those are passed in ``done`` and not run again);
* a step that fails is retried ``retries`` times, ``retry_delay`` apart;
* a step whose dependency failed (or was skipped) is skipped, while independent branches
  go on, so one broken machine does not hide what the others would have done;
* ``stop`` (set on Ctrl-C) lets running steps end and starts nothing new.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Literal

from ...errors import CrcError
from .model import Step

__all__ = ["Outcome", "StepResult", "plan", "run_steps"]

Status = Literal["succeeded", "failed", "skipped", "done"]


@dataclass
class Outcome:
    """What one attempt of a step achieved (``detail``: per machine results)."""

    ok: bool
    message: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepResult:
    name: str
    status: Status  # "done": succeeded in an earlier run, not run again
    attempts: int = 0
    message: str = ""
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in ("succeeded", "done")


Execute = Callable[[Step, int], Outcome]
Notify = Callable[[str, Step, dict[str, Any]], None]


def plan(steps: Sequence[Step]) -> list[list[str]]:
    """The steps in waves: each wave needs only earlier waves (what may run together)."""
    level: dict[str, int] = {}
    by_name = {s.name: s for s in steps}

    def depth(name: str) -> int:
        if name not in level:
            needs = [n for n in by_name[name].needs if n in by_name]
            level[name] = 1 + max((depth(n) for n in needs), default=-1)
        return level[name]

    waves: list[list[str]] = []
    for s in steps:
        d = depth(s.name)
        while len(waves) <= d:
            waves.append([])
        waves[d].append(s.name)
    return waves


def _attempts(
    step: Step, execute: Execute, notify: Notify, stop: threading.Event, clock: Callable[[], float]
) -> StepResult:
    t0 = clock()
    outcome = Outcome(False, "not run")
    attempt = 0
    for attempt in range(1, step.retries + 2):
        if stop.is_set():
            outcome = Outcome(False, "interrupted")
            break
        notify("started", step, {"attempt": attempt})
        try:
            outcome = execute(step, attempt)
        except CrcError as exc:
            outcome = Outcome(False, exc.message)
        except Exception as exc:  # noqa: BLE001 -- one broken step must not hang the others
            outcome = Outcome(False, f"internal error: {type(exc).__name__}: {exc}")
        if outcome.ok:
            break
        if attempt <= step.retries:
            notify(
                "retrying",
                step,
                {"attempt": attempt, "message": outcome.message, "delay": step.retry_delay},
            )
            if stop.wait(step.retry_delay):
                outcome = Outcome(False, "interrupted")
                break
    return StepResult(
        step.name,
        "succeeded" if outcome.ok else "failed",
        attempt,
        outcome.message,
        clock() - t0,
        outcome.detail,
    )


def _ended(step: Step, result: StepResult, results: dict[str, StepResult], notify: Notify) -> None:
    results[step.name] = result
    notify(
        result.status,
        step,
        {
            "attempts": result.attempts,
            "message": result.message,
            "seconds": round(result.seconds, 2),
        },
    )


def _interrupted(
    running: Iterable[Step],
    pending: Iterable[Step],
    begun: dict[str, tuple[int, float]],
    results: dict[str, StepResult],
    notify: Notify,
    clock: Callable[[], float],
) -> None:
    """Ctrl-C: the steps running (and not awaited) failed, the others are skipped. Every
    result is in place before anything is said, so that a further Ctrl-C while it is
    said loses none."""
    said: list[tuple[str, Step]] = []
    for step in running:
        if step.name not in results:
            attempts, since = begun.get(step.name, (1, clock()))
            results[step.name] = StepResult(
                step.name, "failed", attempts, "interrupted", clock() - since
            )
            said.append(("failed", step))
    for step in pending:
        if step.name not in results:
            results[step.name] = StepResult(step.name, "skipped", message="interrupted")
            said.append(("skipped", step))
    for status, step in said:
        r = results[step.name]
        data: dict[str, Any] = {"message": r.message}
        if status == "failed":
            data.update(attempts=r.attempts, seconds=r.seconds)
        notify(status, step, data)


def run_steps(
    steps: Sequence[Step],
    execute: Execute,
    *,
    done: Iterable[str] = (),
    max_parallel: int = 8,
    notify: Notify | None = None,
    stop: threading.Event | None = None,
    on_interrupt: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    results: dict[str, StepResult] | None = None,
) -> dict[str, StepResult]:
    """Run ``steps`` by their ``needs``; return every step's result, in file order.

    ``notify(event, step, data)`` is called with ``started``, ``retrying``,
    ``succeeded``, ``failed``, ``skipped`` (from worker threads too: make it
    thread-safe). On KeyboardInterrupt, ``stop`` is set, ``on_interrupt`` runs (cancel
    what is running), running steps are awaited and reported, the others are skipped
    ("interrupted"), and the interrupt is re-raised: ``results`` (filled as steps end)
    then holds what happened.
    """
    told: Notify = notify or (lambda event, step, data: None)
    # The attempt each running step is at, and when it started (for a Ctrl-C).
    begun: dict[str, tuple[int, float]] = {}

    def tracked(event: str, step: Step, data: dict[str, Any]) -> None:
        if event == "started":
            begun[step.name] = (data["attempt"], begun.get(step.name, (0, clock()))[1])
        told(event, step, data)

    notify = tracked

    stop = stop or threading.Event()
    results = {} if results is None else results
    finished = set(done)
    pending = {s.name: s for s in steps}
    for name in list(pending):
        if name in finished:
            results[name] = StepResult(name, "done")
            notify("done", pending.pop(name), {})
    running: dict[Future[StepResult], Step] = {}
    with ThreadPoolExecutor(
        max_workers=max(1, max_parallel), thread_name_prefix="crc-step"
    ) as pool:
        try:
            while pending or running:
                changed = True
                while changed:
                    changed = False
                    for name, step in list(pending.items()):
                        needs = [results.get(n) for n in step.needs]
                        blocked = [r for r in needs if r is not None and not r.ok]
                        if blocked or stop.is_set():
                            why = (
                                f"needs {blocked[0].name}, which {blocked[0].status}"
                                if blocked
                                else "interrupted"
                            )
                            results[name] = StepResult(name, "skipped", message=why)
                            notify("skipped", step, {"message": why})
                            del pending[name]
                            changed = True
                        elif all(r is not None for r in needs) and len(running) < max_parallel:
                            begun[name] = (1, clock())
                            fut = pool.submit(_attempts, step, execute, notify, stop, clock)
                            running[fut] = step
                            del pending[name]
                if not running:
                    break
                finished_now, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished_now:
                    _ended(running.pop(fut), fut.result(), results, notify)
        except KeyboardInterrupt:
            stop.set()
            try:
                if on_interrupt is not None:
                    on_interrupt()
                for fut, step in list(running.items()):
                    result = fut.result()
                    del running[fut]
                    _ended(step, result, results, notify)
            finally:
                # A second Ctrl-C stops waiting for them: the steps still running are
                # reported failed all the same, so that every step has its result.
                _interrupted(running.values(), pending.values(), begun, results, notify, clock)
            raise
    for name, step in pending.items():  # only if ``needs`` had a cycle (model forbids it)
        results[name] = StepResult(name, "skipped", message="its needs never finished")
        notify("skipped", step, {"message": results[name].message})
    return {s.name: results[s.name] for s in steps if s.name in results}
