"""A target whose machine never reports its end (its agent hung, the machine went away
mid-job) ends ``lost`` once its timeout and ``OVERDUE_GRACE`` have passed: a master
following the job is not left waiting for ever. The server's own operations on a real
SQLite store, frames fed as the agent writes them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ends import Server

from cloudremotecontrol.protocol.frames import Ack, Msg, write_frame
from cloudremotecontrol.protocol.messages import Envelope
from cloudremotecontrol.server.ops import delivery, files, jobs, overdue

GRACE = overdue.grace_for(120.0)  # the default agent silence timeout: 240 s


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path / "crc.db")
    s.connect(0, None)
    yield s
    s.close()


class Machine:
    """What machine m's agent sends: numbered messages, acks of the server's."""

    def __init__(self, server: Server) -> None:
        self.server, self.seq = server, 0

    def send(self, type: str, body: dict[str, Any]) -> None:
        self.seq += 1
        env = Envelope.make("lab", "m", "master", type, body).to_dict()
        assert self.server.receive(write_frame(Msg(seq=self.seq, msg=env))) is not None

    def ack_all(self) -> None:
        last = self.server.outbox_seqs()[-1]
        assert self.server.receive(write_frame(Ack(seq=last))) == []


def _target(server: Server, job_id: str) -> dict[str, Any]:
    row = server.run(
        lambda tx: tx.one(
            "SELECT status, reason, updated FROM job_targets WHERE job_id = ?", (job_id,)
        )
    )
    return dict(row)


def test_a_running_target_silent_past_its_timeout_ends_lost_and_stays_so(server: Server) -> None:
    spec = {"argv": ["sleep", "1000"], "timeout": 5}
    job_id = server.run(jobs.create_job, server.user, "lab", "m", spec)["job_id"]
    m = Machine(server)
    m.ack_all()
    m.send("job.started", {"job_id": job_id})
    started = _target(server, job_id)
    assert started["status"] == "running"
    t0 = float(started["updated"])
    # Within its timeout and the grace after it: nothing happens.
    assert server.run(overdue.overdue_targets, t0 + 5 + GRACE - 1, GRACE) == []
    assert server.run(overdue.end_overdue, t0 + 5 + GRACE - 1, GRACE) == []
    assert _target(server, job_id)["status"] == "running"
    # Past them: lost, with the reason, as a job.status event a follower sees.
    late = t0 + 5 + GRACE + 1
    assert server.run(overdue.overdue_targets, late, GRACE) == [(job_id, server.machine_id)]
    server.run(overdue.end_overdue, late, GRACE)
    ended = _target(server, job_id)
    assert ended["status"] == "lost"
    assert "reported no end 240 s after the job's timeout (5 s)" in ended["reason"]
    [event] = [e for e in server.events("job.status") if e["status"] == "lost"]
    assert event["job_id"] == job_id and event["reason"] == ended["reason"]
    # The machine coming back with its result changes nothing: the record is final.
    m.send("job.result", {"job_id": job_id, "status": "succeeded", "exit_code": 0})
    assert _target(server, job_id)["status"] == "lost"
    assert server.run(overdue.overdue_targets, late + 3600, GRACE) == []


def test_a_delivered_target_never_started_ends_lost_too(server: Server) -> None:
    job_id = server.run(jobs.create_job, server.user, "lab", "m", {"argv": ["true"], "timeout": 1})[
        "job_id"
    ]
    Machine(server).ack_all()
    assert _target(server, job_id)["status"] == "delivered"
    server.run(overdue.end_overdue, time.time() + 1 + GRACE + 1, GRACE)
    assert _target(server, job_id)["status"] == "lost"


def test_queued_targets_and_file_transfers_have_no_deadline_here(server: Server) -> None:
    """A queued target waits for its machine (``--deliver-within`` bounds that), and a
    file transfer runs as long as its bytes keep coming."""
    queued = server.run(jobs.create_job, server.user, "lab", "m", {"argv": ["true"], "timeout": 1})
    pull = server.run(files.create_pull, server.user, "lab", "m", "/etc/hostname")
    far = time.time() + 30 * 86400  # nothing acknowledged yet: both queued
    assert server.run(overdue.overdue_targets, far, GRACE) == []
    m = Machine(server)
    m.ack_all()
    m.send("job.started", {"job_id": pull["job_id"]})
    assert _target(server, pull["job_id"])["status"] == "running"
    assert _target(server, queued["job_id"])["status"] == "delivered"
    assert server.run(overdue.overdue_targets, far, GRACE) == [
        (queued["job_id"], server.machine_id)
    ]


def test_an_offline_machine_is_waited_for_and_given_the_grace_when_it_is_back(
    server: Server,
) -> None:
    """What a machine did while offline is delivered when it comes back: its targets
    are not given up meanwhile, and once back it has the grace to report them."""
    job_id = server.run(jobs.create_job, server.user, "lab", "m", {"argv": ["true"], "timeout": 1})[
        "job_id"
    ]
    m = Machine(server)
    m.ack_all()
    m.send("job.started", {"job_id": job_id})
    server.run(delivery.machine_disconnected, server.machine_id, "r1")
    far = time.time() + 30 * 86400
    assert server.run(overdue.overdue_targets, far, GRACE) == []
    server.connect(m.seq, None)  # back: its replay will come within the grace
    back = time.time()
    assert server.run(overdue.overdue_targets, back + GRACE - 1, GRACE) == []
    assert server.run(overdue.overdue_targets, back + GRACE + 1, GRACE) == [
        (job_id, server.machine_id)
    ]


def _age(server: Server, seconds: float) -> None:
    """As if everything so far had happened ``seconds`` earlier."""

    def age(tx: Any) -> None:
        tx.execute("UPDATE job_targets SET updated = updated - ?", (seconds,))
        tx.execute("UPDATE events SET created = created - ?", (seconds,))
        tx.execute("UPDATE machines SET last_in = last_in - ?", (seconds,))

    server.run(age)


def test_a_machine_still_sending_is_waited_for_until_it_falls_silent(server: Server) -> None:
    """An agent working through a backlog on a slow link sends its messages in order:
    the result of an old target is on its way while it sends others, so the target is
    not ended ``lost`` (its result would be acknowledged, then ignored) until the
    machine has sent nothing for the grace."""
    spec = {"argv": ["sleep", "1000"], "timeout": 5}
    job_id = server.run(jobs.create_job, server.user, "lab", "m", spec)["job_id"]
    m = Machine(server)
    m.ack_all()
    m.send("job.started", {"job_id": job_id})
    _age(server, 2 * GRACE)  # started long ago, connected since
    assert server.run(overdue.overdue_targets, time.time(), GRACE) == [(job_id, server.machine_id)]
    # The machine sends something else first (a message to the master).
    m.send("user.backlog", {"n": 1})
    assert server.run(overdue.overdue_targets, time.time(), GRACE) == []
    assert server.run(overdue.end_overdue, time.time(), GRACE) == []
    # Its result comes in turn, and is recorded.
    m.send("job.result", {"job_id": job_id, "status": "succeeded", "exit_code": 0})
    assert _target(server, job_id)["status"] == "succeeded"


def test_a_machine_silent_for_the_grace_after_sending_is_given_up(server: Server) -> None:
    spec = {"argv": ["sleep", "1000"], "timeout": 5}
    job_id = server.run(jobs.create_job, server.user, "lab", "m", spec)["job_id"]
    m = Machine(server)
    m.ack_all()
    m.send("job.started", {"job_id": job_id})
    _age(server, 2 * GRACE)
    m.send("progress", {"text": "still here"})
    assert server.run(overdue.overdue_targets, time.time(), GRACE) == []
    _age(server, GRACE + 1)  # then nothing for the grace
    server.run(overdue.end_overdue, time.time(), GRACE)
    assert _target(server, job_id)["status"] == "lost"


def test_a_machine_that_keeps_sending_other_things_ends_its_hung_target_at_last(
    server: Server,
) -> None:
    """A hung job beside an agent that keeps sending (progress lines, other jobs) ends
    ``lost`` once ``OVERDUE_MAX_GRACES`` graces have passed after the job's timeout."""
    spec = {"argv": ["sleep", "1000"], "timeout": 5}
    job_id = server.run(jobs.create_job, server.user, "lab", "m", spec)["job_id"]
    m = Machine(server)
    m.ack_all()
    m.send("job.started", {"job_id": job_id})
    _age(server, 5 + (overdue.OVERDUE_MAX_GRACES - 1) * GRACE)
    m.send("progress", {"text": "tail of a log"})
    assert server.run(overdue.overdue_targets, time.time(), GRACE) == []
    _age(server, GRACE + 1)  # past the cap, though it sends all the time
    m.send("progress", {"text": "tail of a log"})
    server.run(overdue.end_overdue, time.time(), GRACE)
    ended = _target(server, job_id)
    assert ended["status"] == "lost"
    assert "no end 1200 s after the job's timeout (5 s), while it kept sending" in ended["reason"]


def test_a_machine_silent_past_the_cap_too_is_said_to_be_silent(server: Server) -> None:
    spec = {"argv": ["sleep", "1000"], "timeout": 5}
    job_id = server.run(jobs.create_job, server.user, "lab", "m", spec)["job_id"]
    m = Machine(server)
    m.ack_all()
    m.send("job.started", {"job_id": job_id})
    _age(server, 5 + (overdue.OVERDUE_MAX_GRACES + 1) * GRACE)  # e.g. a server down long
    server.run(overdue.end_overdue, time.time(), GRACE)
    ended = _target(server, job_id)
    assert ended["status"] == "lost"
    assert "reported no end 240 s after the job's timeout (5 s): its agent hung" in ended["reason"]
