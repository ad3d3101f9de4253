"""Rate control of a job's targets: which to start now, which to give up on (no I/O).

A job created with rate control keeps its targets *held* (no ``job.run`` queued for
them) and the server asks ``plan`` which to release whenever one of them ends and when
the time it named comes (a batch wait over, the delivery deadline). The rules:

- ``max_concurrency`` (N or P% of the targets): at most that many released and not
  yet ended, counting a target that ended less than ``batch_wait`` seconds ago.
- ``max_errors`` (N or P%): once that many targets ended ``failed``, ``timed_out`` or
  ``lost``, no other target starts: the held ones end ``skipped``.
- ``canary`` (N): the first N targets (in name order) run first; the others start only
  when all of them succeeded (and ``batch_wait`` later), else they end ``skipped``.
- ``deliver_within`` (seconds): a target not reached by its agent that long after the
  job was created (still ``queued``, held or sent but not acknowledged) ends ``expired``.

Percentages are of the job's targets, rounded up, at least 1. Values are checked here
for the API, the SDK, scenario files and the CLI alike: 0, negative, over 100% or not a
number are refused with a message that names the key as its user wrote it
(``max_errors`` in a request or a scenario step, ``--max-errors`` on the command line).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInput
from .states import JobStatus

__all__ = [
    "ERROR_STATUSES",
    "KEYS",
    "Limit",
    "Plan",
    "Rollout",
    "TargetState",
    "flag",
    "parse_limit",
    "parse_seconds",
    "plan",
]

#: The request/scenario keys of rate control (``max_concurrency`` ... in the API).
KEYS = ("max_concurrency", "max_errors", "batch_wait", "canary", "deliver_within")

#: What spends the error budget (and fails a canary, with every other non-success).
ERROR_STATUSES = frozenset({JobStatus.FAILED, JobStatus.TIMED_OUT, JobStatus.LOST})

MAX_COUNT = 1_000_000
MAX_SECONDS = 7 * 86400.0
_LIMIT = re.compile(r"\A\s*([0-9]{1,7})\s*(%?)\s*\Z")


@dataclass(frozen=True)
class Limit:
    """A count of targets, absolute (``5``) or relative to the job's targets (``10%``)."""

    value: int
    percent: bool = False

    def of(self, total: int) -> int:
        if not self.percent:
            return self.value
        return max(1, math.ceil(total * self.value / 100))

    def __str__(self) -> str:
        return f"{self.value}%" if self.percent else str(self.value)


def flag(key: str) -> str:
    """The command line's name of a key: ``max_errors`` -> ``--max-errors``."""
    return "--" + key.replace("_", "-")


def parse_limit(
    value: object, key: str, shown: str | None = None, *, percent_ok: bool = True
) -> Limit | None:
    """``N`` or ``P%`` (also an int); None stays None. 0, negative numbers, more than
    100% and anything else are refused (InvalidInput naming ``shown``, else ``key``).
    ``percent_ok=False``: only ``N`` (a percentage is refused, and no refusal
    suggests one)."""
    name = shown or key
    if value is None:
        return None
    if isinstance(value, bool):
        match = None
    elif isinstance(value, int):
        match = _LIMIT.match(str(value)) if value >= 0 else None
    elif isinstance(value, str):
        match = _LIMIT.match(value)
    else:
        match = None
    if match is None:
        wanted = (
            "a number of targets (e.g. 10) or a percentage of them (e.g. 25%)"
            if percent_ok
            else "a number of targets (e.g. 3)"
        )
        raise InvalidInput(f"{name} must be {wanted}, got {str(value)[:40]!r}", field=key)
    number, percent = int(match.group(1)), bool(match.group(2))
    if percent and not percent_ok:
        raise InvalidInput(f"{name} must be a number of targets, not a percentage", field=key)
    if number < 1:
        least = "1 (or 1%)" if percent_ok else "1"
        raise InvalidInput(f"{name} must be at least {least}, got {number}", field=key)
    if percent and number > 100:
        raise InvalidInput(f"{name} must be at most 100%, got {number}%", field=key)
    if number > MAX_COUNT:
        raise InvalidInput(f"{name} must be at most {MAX_COUNT}", field=key)
    return Limit(number, percent)


def parse_seconds(value: object, key: str, shown: str | None = None) -> float | None:
    """A positive number of seconds, at most a week; None stays None."""
    name = shown or key
    if value is None:
        return None
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int beyond any float (JSON has them)
            number = None
    elif isinstance(value, str):
        try:
            number = float(value.strip()) if len(value) <= 40 else None
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise InvalidInput(
            f"{name} must be a number of seconds, got {str(value)[:40]!r}", field=key
        )
    if number <= 0:
        raise InvalidInput(f"{name} must be more than 0 seconds, got {number:g}", field=key)
    if number > MAX_SECONDS:
        raise InvalidInput(f"{name} must be at most {MAX_SECONDS:g} seconds (a week)", field=key)
    return number


def _parse_count(value: object, key: str, shown: str | None = None) -> int | None:
    limit = parse_limit(value, key, shown, percent_ok=False)
    return None if limit is None else limit.value


@dataclass(frozen=True)
class Rollout:
    """A job's rate control (every field optional)."""

    max_concurrency: Limit | None = None
    max_errors: Limit | None = None
    batch_wait: float | None = None
    canary: int | None = None
    deliver_within: float | None = None

    @classmethod
    def from_body(cls, body: Mapping[str, Any], *, flags: bool = False) -> Rollout | None:
        """From the API's (or a scenario step's) keys; None when none is set. ``flags``:
        a refusal names the command line's option (``--max-errors``), not the key."""

        def shown(key: str) -> str:
            return flag(key) if flags else key

        rollout = cls(
            max_concurrency=parse_limit(
                body.get("max_concurrency"), "max_concurrency", shown("max_concurrency")
            ),
            max_errors=parse_limit(body.get("max_errors"), "max_errors", shown("max_errors")),
            batch_wait=parse_seconds(body.get("batch_wait"), "batch_wait", shown("batch_wait")),
            canary=_parse_count(body.get("canary"), "canary", shown("canary")),
            deliver_within=parse_seconds(
                body.get("deliver_within"), "deliver_within", shown("deliver_within")
            ),
        )
        return None if rollout == cls() else rollout

    def to_body(self) -> dict[str, Any]:
        """The stored (and shown) form: only what is set; limits as ``"N"``/``"P%"``."""
        out: dict[str, Any] = {}
        if self.max_concurrency is not None:
            out["max_concurrency"] = str(self.max_concurrency)
        if self.max_errors is not None:
            out["max_errors"] = str(self.max_errors)
        if self.batch_wait is not None:
            out["batch_wait"] = self.batch_wait
        if self.canary is not None:
            out["canary"] = self.canary
        if self.deliver_within is not None:
            out["deliver_within"] = self.deliver_within
        return out

    @property
    def holds(self) -> bool:
        """Whether targets are released one by one (else all at once, at creation)."""
        return (
            self.max_concurrency is not None
            or self.max_errors is not None
            or self.canary is not None
            or self.batch_wait is not None
        )


@dataclass(frozen=True)
class TargetState:
    """One target as the plan sees it. ``held``: never released to its agent;
    ``updated``: when its status last changed (for a final status: when it ended)."""

    machine: str
    status: JobStatus
    held: bool
    updated: float


@dataclass(frozen=True)
class Plan:
    release: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    expire: tuple[str, ...] = ()
    skip_reason: str | None = None
    #: When to plan again even if no target ends (a batch wait, the deadline); None:
    #: only when a target ends (or never, when nothing is left to decide).
    next_check: float | None = None


def plan(rollout: Rollout, targets: Sequence[TargetState], created: float, now: float) -> Plan:
    """What to do now with a job's targets (given in the order they start in)."""
    total = len(targets)
    expire: list[str] = []
    deadline = created + rollout.deliver_within if rollout.deliver_within is not None else None
    if deadline is not None and now >= deadline:
        expire = [t.machine for t in targets if t.status is JobStatus.QUEUED]
    gone = set(expire)
    live = [t for t in targets if t.machine not in gone]
    held = [t for t in live if t.held and t.status is JobStatus.QUEUED]
    waits: list[float] = []

    def result(
        release: Sequence[str] = (), skip: Sequence[str] = (), why: str | None = None
    ) -> Plan:
        skipped = set(skip)
        queued_left = any(t.status is JobStatus.QUEUED and t.machine not in skipped for t in live)
        checks = list(waits)
        if deadline is not None and queued_left and now < deadline:
            checks.append(deadline)
        later = [c for c in checks if c > now]
        return Plan(
            release=tuple(release),
            skip=tuple(skip),
            expire=tuple(expire),
            skip_reason=why if skip else None,
            next_check=min(later) if later else None,
        )

    if not held:
        return result()
    errors = sum(1 for t in targets if t.status in ERROR_STATUSES)
    if rollout.max_errors is not None:
        budget = rollout.max_errors.of(total)
        if errors >= budget:
            why = (
                f"error budget spent: {errors} of {total} targets failed"
                f" (--max-errors {rollout.max_errors})"
            )
            return result(skip=[t.machine for t in held], why=why)
    eligible = held
    limit = rollout.max_concurrency.of(total) if rollout.max_concurrency is not None else total
    if rollout.canary is not None:
        canaries = targets[: min(rollout.canary, total)]
        names = {t.machine for t in canaries}
        bad = [t for t in canaries if t.status.terminal and t.status is not JobStatus.SUCCEEDED]
        if bad:
            why = (
                f"canary failed: {bad[0].machine} ended {bad[0].status.value}"
                f" (--canary {rollout.canary})"
            )
            return result(skip=[t.machine for t in held], why=why)
        if all(t.status is JobStatus.SUCCEEDED for t in canaries):
            if rollout.batch_wait is not None:
                gate = max(t.updated for t in canaries) + rollout.batch_wait
                if now < gate:
                    waits.append(gate)
                    return result()
        else:
            eligible = [t for t in held if t.machine in names]
            limit = min(limit, len(canaries))
    active = sum(1 for t in live if not t.held and not t.status.terminal)
    if rollout.batch_wait is not None:
        for t in live:
            if not t.held and t.status.terminal and t.updated + rollout.batch_wait > now:
                active += 1
                waits.append(t.updated + rollout.batch_wait)
    free = max(0, limit - active)
    return result(release=[t.machine for t in eligible[:free]])
