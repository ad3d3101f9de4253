"""Machine and job-target lifecycles: every transition, in one table each.

Anything not in a table is refused (``None``), and callers decide whether a refused
transition is an error or a harmless duplicate (a result delivered twice, say).
"""

from __future__ import annotations

from enum import Enum

__all__ = [
    "JobEvent",
    "JobStatus",
    "MachineEvent",
    "MachineState",
    "job_next",
    "machine_next",
]


class MachineState(str, Enum):
    PENDING = "pending"  # key issued, never used
    ENROLLED = "enrolled"  # key exchanged for a credential
    READY = "ready"  # agent said SystemReady
    OFFLINE = "offline"  # connection lost / heartbeat missed
    REVOKED = "revoked"  # credential and key revoked; terminal


class MachineEvent(str, Enum):
    ENROLL = "enroll"
    CONNECT = "connect"  # agent connected, not (yet) ready
    CONNECT_READY = "connect_ready"  # agent connected and says it is ready
    SAY_READY = "say_ready"
    DISCONNECT = "disconnect"
    REVOKE = "revoke"


_M = MachineState
_ME = MachineEvent
MACHINE_TRANSITIONS: dict[tuple[MachineState, MachineEvent], MachineState] = {
    (_M.PENDING, _ME.ENROLL): _M.ENROLLED,
    (_M.PENDING, _ME.REVOKE): _M.REVOKED,
    (_M.ENROLLED, _ME.CONNECT): _M.ENROLLED,
    (_M.ENROLLED, _ME.CONNECT_READY): _M.READY,
    (_M.ENROLLED, _ME.SAY_READY): _M.READY,
    (_M.ENROLLED, _ME.DISCONNECT): _M.OFFLINE,
    (_M.ENROLLED, _ME.REVOKE): _M.REVOKED,
    (_M.READY, _ME.CONNECT): _M.ENROLLED,
    (_M.READY, _ME.CONNECT_READY): _M.READY,
    (_M.READY, _ME.SAY_READY): _M.READY,
    (_M.READY, _ME.DISCONNECT): _M.OFFLINE,
    (_M.READY, _ME.REVOKE): _M.REVOKED,
    (_M.OFFLINE, _ME.CONNECT): _M.ENROLLED,
    (_M.OFFLINE, _ME.CONNECT_READY): _M.READY,
    (_M.OFFLINE, _ME.SAY_READY): _M.READY,
    (_M.OFFLINE, _ME.DISCONNECT): _M.OFFLINE,
    (_M.OFFLINE, _ME.REVOKE): _M.REVOKED,
}


def machine_next(state: MachineState, event: MachineEvent) -> MachineState | None:
    """The state after ``event``, or None when the table does not allow it."""
    return MACHINE_TRANSITIONS.get((state, event))


class JobStatus(str, Enum):
    QUEUED = "queued"
    DELIVERED = "delivered"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    LOST = "lost"
    SKIPPED = "skipped"  # held back by rate control, then given up (error budget, canary)
    EXPIRED = "expired"  # not reached by its agent within the job's delivery deadline

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.TIMED_OUT,
        JobStatus.CANCELLED,
        JobStatus.LOST,
        JobStatus.SKIPPED,
        JobStatus.EXPIRED,
    }
)


class JobEvent(str, Enum):
    DELIVER = "deliver"  # the agent acknowledged the job.run message
    START = "start"  # the agent started the process
    SUCCEED = "succeed"
    FAIL = "fail"
    TIME_OUT = "time_out"
    CANCEL = "cancel"  # the master cancelled it (or the agent reports it cancelled)
    LOSE = "lose"  # the agent crashed/rebooted mid-job, or the machine went away
    SKIP = "skip"  # rate control gave up on a held target (error budget spent, canary)
    EXPIRE = "expire"  # not reached within the job's delivery deadline


_J = JobStatus
_JE = JobEvent
_ENDINGS = {
    _JE.SUCCEED: _J.SUCCEEDED,
    _JE.FAIL: _J.FAILED,
    _JE.TIME_OUT: _J.TIMED_OUT,
    _JE.CANCEL: _J.CANCELLED,
    _JE.LOSE: _J.LOST,
}

JOB_TRANSITIONS: dict[tuple[JobStatus, JobEvent], JobStatus] = {
    (_J.QUEUED, _JE.DELIVER): _J.DELIVERED,
    (_J.QUEUED, _JE.START): _J.RUNNING,
    (_J.DELIVERED, _JE.START): _J.RUNNING,
    (_J.QUEUED, _JE.CANCEL): _J.CANCELLED,
    (_J.QUEUED, _JE.LOSE): _J.LOST,
    (_J.QUEUED, _JE.SKIP): _J.SKIPPED,
    (_J.QUEUED, _JE.EXPIRE): _J.EXPIRED,
    # A result can overtake the start notice's effect (both arrive in one batch), and
    # an agent reports a job it never started (cancelled before start, refused) as ended.
    **{(_J.DELIVERED, e): s for e, s in _ENDINGS.items()},
    **{(_J.RUNNING, e): s for e, s in _ENDINGS.items()},
}


def job_next(status: JobStatus, event: JobEvent) -> JobStatus | None:
    """The status after ``event``, or None when the table does not allow it."""
    return JOB_TRANSITIONS.get((status, event))


def result_event(status: str) -> JobEvent | None:
    """Map a terminal status reported by an agent to the event that produces it."""
    for event, target in _ENDINGS.items():
        if target.value == status:
            return event
    return None
