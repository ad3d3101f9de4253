"""Pure protocol logic: state tables, names and targets, frames, sequence/ack/resume."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloudremotecontrol.errors import InvalidInput, TooLarge
from cloudremotecontrol.protocol.delivery import Inbox, Outbox, Receipt
from cloudremotecontrol.protocol.messages import JobRun, decode_frame
from cloudremotecontrol.protocol.names import check_name, parse_target
from cloudremotecontrol.protocol.states import (
    JobEvent,
    JobStatus,
    MachineEvent,
    MachineState,
    job_next,
    machine_next,
)
from cloudremotecontrol.protocol.tokens import new_secret, parse_secret, verify_secret


def test_revoked_is_terminal_and_every_live_state_can_be_revoked():
    for event in MachineEvent:
        assert machine_next(MachineState.REVOKED, event) is None
    for state in MachineState:
        if state != MachineState.REVOKED:
            assert machine_next(state, MachineEvent.REVOKE) == MachineState.REVOKED


def test_only_pending_machines_enroll_and_offline_machines_come_back():
    assert [s for s in MachineState if machine_next(s, MachineEvent.ENROLL)] == [
        MachineState.PENDING]
    assert machine_next(MachineState.OFFLINE, MachineEvent.CONNECT_READY) == MachineState.READY
    assert machine_next(MachineState.PENDING, MachineEvent.CONNECT) is None


def test_terminal_job_statuses_have_no_exit():
    for status in JobStatus:
        for event in JobEvent:
            nxt = job_next(status, event)
            if status.terminal:
                assert nxt is None
    assert job_next(JobStatus.QUEUED, JobEvent.DELIVER) == JobStatus.DELIVERED
    assert job_next(JobStatus.RUNNING, JobEvent.LOSE) == JobStatus.LOST


@pytest.mark.parametrize("name", ["a", "web-1", "x" * 63, "0db"])
def test_valid_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "A", "a_b", "-a", "a-", "x" * 64, None, 3, "a.b"])
def test_invalid_names(name):
    with pytest.raises(InvalidInput):
        check_name(name)


def test_targets():
    assert parse_target("all").all and parse_target("*").all
    assert parse_target("a,b,a").names == ("a", "b")
    sel = parse_target("role=db")
    assert sel.matches("x", {"role": "db"}) and not sel.matches("y", {"role": "web"})
    for bad in ["", "A", "=x", "a,,B", None]:
        with pytest.raises(InvalidInput):
            parse_target(bad)


def test_job_run_validation():
    assert JobRun.from_body({"job_id": "j", "argv": ["echo", "hi"]}).argv == ("echo", "hi")
    for body in [{"job_id": "j"}, {"job_id": "j", "argv": ["a"], "command": "b"},
                 {"job_id": "j", "argv": []}, {"job_id": "j", "argv": [1]},
                 {"job_id": "j", "command": "x", "shell": "zsh"},
                 {"job_id": "j", "command": "x", "timeout": 0},
                 {"job_id": "j", "command": "x", "timeout": True},
                 {"job_id": "j", "command": "x", "env": {"A=B": "c"}},
                 {"job_id": "", "command": "x"}]:
        with pytest.raises(InvalidInput):
            JobRun.from_body(body)
    with pytest.raises(TooLarge):
        JobRun.from_body({"job_id": "j", "command": "x" * (200 << 10)})


@pytest.mark.parametrize("text", ["", "nope", "[]", '{"type": "bogus"}', '{"type": "msg"}',
                                  '{"type": "ack", "seq": -1}', '{"type": "ack", "seq": true}',
                                  '{"type": "msg", "seq": 1, "msg": 3}'])
def test_garbage_frames_are_refused(text):
    with pytest.raises(InvalidInput):
        decode_frame(text)


def test_oversized_frame_is_refused():
    with pytest.raises(TooLarge):
        decode_frame("x" * ((1 << 20) + 1))


def test_secrets_round_trip_and_refuse_garbage():
    s = new_secret("k")
    parsed = parse_secret(str(s), "k")
    assert parsed == s and verify_secret(parsed, s.hash)
    assert parse_secret(str(s), "m") is None
    assert not verify_secret(parse_secret(f"crck_{s.id}_wrong", "k"), s.hash)
    for bad in [None, "", "crck_", "crck__x", "x" * 300]:
        assert parse_secret(bad, "k") is None


@given(st.lists(st.tuples(st.sampled_from(["send", "drop", "dup", "reconnect", "ack"]),
                          st.integers(0, 5)), max_size=60))
def test_lossy_link_with_resume_delivers_each_message_once_in_order(ops):
    """A link that drops, duplicates and reconnects: after a final resume the receiver
    has processed every message exactly once, in order."""
    out, inbox = Outbox(), Inbox()
    processed: list[int] = []
    sent = 0
    in_flight: list[int] = []
    for op, _n in ops:
        if op == "send":
            sent += 1
            in_flight.append(out.add(sent))
        elif op == "drop" and in_flight:
            in_flight.pop(0)
        elif op == "dup" and in_flight:
            in_flight.insert(0, in_flight[0])
        elif op == "ack":
            out.ack(inbox.processed)
        elif op == "reconnect":
            in_flight = [seq for seq, _ in out.replay(inbox.processed)]
        while in_flight:
            seq = in_flight.pop(0)
            receipt = inbox.receive(seq)
            if receipt == Receipt.NEW:
                inbox.mark_processed(seq)
                processed.append(seq)
            elif receipt == Receipt.GAP:
                in_flight.clear()  # the receiver drops the connection; resume later
    for seq, _ in out.replay(inbox.processed):
        if inbox.receive(seq) == Receipt.NEW:
            inbox.mark_processed(seq)
            processed.append(seq)
    assert processed == list(range(1, sent + 1))
