"""What the SDK hands back: small frozen dataclasses with typed fields.

Each one is also a read-only mapping with the same keys as the API's JSON (``ev.type``
and ``ev["type"]`` are the same thing), and ``to_dict()`` gives that JSON: what
``--json`` prints and scripts parse. docs/sdk.md lists the fields; the ``data`` of each
event type is in docs/reference.md ("Events").
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..protocol.states import JobStatus

__all__ = [
    "Event",
    "JobResult",
    "Message",
    "RunResult",
    "exit_code_of",
    "is_final",
    "job_accepted",
    "shell_exit_code",
]

T = TypeVar("T", bound="_Record")


class _Record(Mapping[str, Any]):
    """The mapping side of a record: its JSON keys (``_keys`` renames fields)."""

    _keys: dict[str, str] = {}  # JSON key -> field name, where they differ

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (what the API sends and ``--json`` prints)."""
        return {key: _plain(self[key]) for key in self}

    def __getitem__(self, key: str) -> Any:
        name = self._keys.get(key, key)
        if name not in self._names():
            raise KeyError(key)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        back = {v: k for k, v in self._keys.items()}
        return (back.get(n, n) for n in self._names())

    def __len__(self) -> int:
        return len(self._names())

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        # Every record class is a dataclass; this base (a Mapping) cannot say so to mypy.
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]


def _plain(value: Any) -> Any:
    if isinstance(value, _Record):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True, eq=True)
class Event(_Record):
    """One event of a group's stream (``Client.events``, ``follow_job``).

    ``type`` is e.g. ``machine.state``, ``progress``, ``facts``, ``job.created``,
    ``job.output``, ``job.status``, ``message``, ``kv.set``, ``group.deleted``; ``data``
    depends on it (docs/reference.md). ``cursor`` resumes the stream after this event.
    """

    cursor: int
    time: float
    type: str
    machine: str | None = None
    job_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Event:
        return cls(
            cursor=int(doc.get("cursor") or 0),
            time=float(doc.get("time") or 0.0),
            type=str(doc["type"]),
            machine=doc.get("machine"),
            job_id=doc.get("job_id"),
            data=dict(doc.get("data") or {}),
        )

    @property
    def result(self) -> JobResult | None:
        """For a ``job.status`` event with a final status: that target's result."""
        if self.type != "job.status" or self.machine is None:
            return None
        if not JobStatus(self.data["status"]).terminal:
            return None
        return JobResult.from_dict({"machine": self.machine, **self.data})


@dataclass(frozen=True, eq=True)
class JobResult(_Record):
    """How a job ended on one machine. ``status``: succeeded, failed, timed_out,
    cancelled or lost; ``exit_code`` is the command's (None when it did not end by
    itself); ``reason`` says why it did not succeed, when known."""

    machine: str
    status: str
    exit_code: int | None = None
    reason: str | None = None
    job_id: str | None = None

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> JobResult:
        code = doc.get("exit_code")
        return cls(
            machine=str(doc["machine"]),
            status=str(doc["status"]),
            exit_code=int(code) if code is not None else None,
            reason=doc.get("reason"),
            job_id=doc.get("job_id"),
        )

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    @property
    def code(self) -> int:
        """This target's share of ``crc run``'s exit code (see ``exit_code_of``)."""
        return exit_code_of(self.status, self.exit_code)


@dataclass(frozen=True, eq=True)
class Message(_Record):
    """A data message a machine sent to the master (``crc agent emit TYPE``).
    ``cursor`` is its place in the group's event stream: wait with ``since=cursor``
    for the next one."""

    _keys = {"from": "sender"}

    type: str
    sender: str
    body: dict[str, Any]
    cursor: int
    time: float = 0.0

    @classmethod
    def from_event(cls, ev: Mapping[str, Any]) -> Message:
        data = ev["data"]
        return cls(
            type=str(data["type"]),
            sender=str(data["from"]),
            body=dict(data.get("body") or {}),
            cursor=int(ev["cursor"]),
            time=float(ev.get("time") or 0.0),
        )


@dataclass(frozen=True, eq=True)
class RunResult(_Record):
    """A finished job: one ``JobResult`` per target, and the exit code ``crc run``
    would give (0 when every target succeeded)."""

    job_id: str
    results: dict[str, JobResult]

    @property
    def exit_code(self) -> int:
        return max((r.code for r in self.results.values()), default=0)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results.values())

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "exit_code": self.exit_code, "ok": self.ok}


def job_accepted(started: Mapping[str, Any]) -> Event:
    """The first event ``run`` yields: the job ``start_job`` started (``started``, its
    answer), as an ``Event`` like those that follow. The server has no such event, so
    it has no cursor of its own: 0, from where the job's events are read
    (``job_events(ev.job_id, since=ev.cursor)`` gives all of them)."""
    return Event(
        cursor=0,
        time=time.time(),
        type="job.accepted",
        job_id=str(started["job_id"]),
        data={"targets": list(started["targets"])},
    )


def run_result(job_id: str, targets: list[str], results: dict[str, JobResult]) -> RunResult:
    """The ``RunResult`` of a job followed to its end; ``Unavailable`` (code ``halted``)
    if its stream ended first (``halt()``): a result without those targets would count
    as a success."""
    from ..errors import Unavailable

    missing = [t for t in targets if t not in results]
    if missing:
        raise Unavailable(
            f"job {job_id}: following it was halted before {', '.join(missing)} ended; "
            f"the job goes on at the server (`job_results({job_id!r})` reads its "
            "results, `cancel_job` cancels it)",
            code="halted",
            job_id=job_id,
        )
    return RunResult(job_id, results)


def is_final(status: str) -> bool:
    """Whether a target's status is final (an unknown one, from a newer server: no)."""
    try:
        return JobStatus(status).terminal
    except ValueError:
        return False


def shell_exit_code(code: int) -> int:
    """A remote program's exit code as a local process can exit with it (0-255).

    0-255 stay as they are; a negative code -N (-1 to -127: how Python reports a
    process killed by signal N, and the agents report it as 128 + N already) becomes
    128 + N, as a shell shows it; any other code, which a shell cannot show (256 or
    more, such as a Windows NTSTATUS like 3221225477, or below -127), becomes 1: still
    a failure, where the code modulo 256 could have been 0. The real code stays in the
    job's results and in ``--json``."""
    if 0 <= code <= 255:
        return code
    if -127 <= code <= -1:
        return 128 - code
    return 1


def exit_code_of(status: str, exit_code: int | None) -> int:
    """A target's exit code as ``crc run`` reports it: its own when it failed (as
    ``shell_exit_code`` maps it: 1 when it is 0, missing, or one a shell cannot show),
    124 timed out, 125 lost, skipped or expired (never ran: rate control gave up on
    it), 130 cancelled."""
    if status == "succeeded":
        return 0
    if status == "failed":
        return (shell_exit_code(exit_code) if exit_code is not None else 0) or 1
    if status == "timed_out":
        return 124
    if status == "cancelled":
        return 130
    return 125  # lost, or anything unexpected
