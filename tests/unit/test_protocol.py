"""Exhaustive tests of the pure protocol: state tables, names, frames, secrets, and a
hypothesis state machine driving Inbox/Outbox over a hostile link."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from cloudremotecontrol.errors import InvalidInput, TooLarge
from cloudremotecontrol.protocol import tokens
from cloudremotecontrol.protocol.delivery import Inbox, Outbox, Receipt
from cloudremotecontrol.protocol.limits import (
    MAX_COMMAND_BYTES,
    MAX_FRAME_BYTES,
    MAX_TIMEOUT_SECONDS,
)
from cloudremotecontrol.protocol.messages import (
    SHELLS,
    Envelope,
    JobRun,
    decode_frame,
    encode_frame,
)
from cloudremotecontrol.protocol.names import (
    Target,
    check_label,
    check_message_type,
    check_name,
    parse_labels,
    parse_target,
)
from cloudremotecontrol.protocol.states import (
    JOB_TRANSITIONS,
    MACHINE_TRANSITIONS,
    JobEvent,
    JobStatus,
    MachineEvent,
    MachineState,
    job_next,
    machine_next,
    result_event,
)

# -- states.py -------------------------------------------------------------------------

M, ME = MachineState, MachineEvent
J, JE = JobStatus, JobEvent

# The lifecycle docs/delivery.md promises ("Machine states"), written out independently of
# the code's table.
EXPECTED_MACHINE = {
    (M.PENDING, ME.ENROLL): M.ENROLLED,
    (M.PENDING, ME.REVOKE): M.REVOKED,
    **{(s, ME.CONNECT): M.ENROLLED for s in (M.ENROLLED, M.READY, M.OFFLINE)},
    **{(s, ME.CONNECT_READY): M.READY for s in (M.ENROLLED, M.READY, M.OFFLINE)},
    **{(s, ME.SAY_READY): M.READY for s in (M.ENROLLED, M.READY, M.OFFLINE)},
    **{(s, ME.DISCONNECT): M.OFFLINE for s in (M.ENROLLED, M.READY, M.OFFLINE)},
    **{(s, ME.REVOKE): M.REVOKED for s in (M.ENROLLED, M.READY, M.OFFLINE)},
}
ENDINGS = {
    JE.SUCCEED: J.SUCCEEDED,
    JE.FAIL: J.FAILED,
    JE.TIME_OUT: J.TIMED_OUT,
    JE.CANCEL: J.CANCELLED,
    JE.LOSE: J.LOST,
}
EXPECTED_JOB = {
    (J.QUEUED, JE.DELIVER): J.DELIVERED,
    (J.QUEUED, JE.START): J.RUNNING,
    (J.QUEUED, JE.CANCEL): J.CANCELLED,
    (J.QUEUED, JE.LOSE): J.LOST,
    (J.DELIVERED, JE.START): J.RUNNING,
    **{(J.DELIVERED, e): s for e, s in ENDINGS.items()},
    **{(J.RUNNING, e): s for e, s in ENDINGS.items()},
}
TERMINAL = {J.SUCCEEDED, J.FAILED, J.TIMED_OUT, J.CANCELLED, J.LOST}


@pytest.mark.parametrize("state", list(MachineState))
@pytest.mark.parametrize("event", list(MachineEvent))
def test_every_machine_state_event_pair_is_in_the_table_or_refused(state, event):
    assert machine_next(state, event) == EXPECTED_MACHINE.get((state, event))


@pytest.mark.parametrize("status", list(JobStatus))
@pytest.mark.parametrize("event", list(JobEvent))
def test_every_job_status_event_pair_is_in_the_table_or_refused(status, event):
    assert job_next(status, event) == EXPECTED_JOB.get((status, event))


def test_tables_hold_only_known_pairs():
    assert set(MACHINE_TRANSITIONS) == set(EXPECTED_MACHINE)
    assert set(JOB_TRANSITIONS) == set(EXPECTED_JOB)


def test_revoked_is_terminal_and_reachable_from_every_other_state():
    assert all(machine_next(M.REVOKED, e) is None for e in MachineEvent)
    assert all(machine_next(s, ME.REVOKE) == M.REVOKED for s in MachineState if s != M.REVOKED)


def test_no_machine_event_leads_back_to_pending():
    assert M.PENDING not in MACHINE_TRANSITIONS.values()


def test_terminal_job_statuses_have_no_exits():
    assert {s for s in JobStatus if s.terminal} == TERMINAL
    for status in TERMINAL:
        assert all(job_next(status, e) is None for e in JobEvent)


def test_job_statuses_only_move_forward():
    order = [J.QUEUED, J.DELIVERED, J.RUNNING]
    for (status, _), nxt in JOB_TRANSITIONS.items():
        assert nxt != J.QUEUED
        if nxt in order:
            assert order.index(nxt) > order.index(status)


def test_every_status_is_reachable_from_queued():
    seen, todo = {J.QUEUED}, [J.QUEUED]
    while todo:
        s = todo.pop()
        for e in JobEvent:
            n = job_next(s, e)
            if n is not None and n not in seen:
                seen.add(n)
                todo.append(n)
    assert seen == set(JobStatus)


def test_result_event_maps_terminal_statuses_only():
    for event, status in ENDINGS.items():
        assert result_event(status.value) == event
    for status in ("queued", "delivered", "running", "", "SUCCEEDED", "ok"):
        assert result_event(status) is None


# -- names.py --------------------------------------------------------------------------

NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


@pytest.mark.parametrize("name", ["a", "0", "web-1", "a--b", "x" * 63, "0db", "m1-2-3"])
def test_valid_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "A",
        "Web",
        "a_b",
        "-a",
        "a-",
        "x" * 64,
        "a.b",
        "a b",
        " a",
        "a\n",
        "é",
        "a/b",
        None,
        3,
        b"a",
        ["a"],
    ],
)
def test_invalid_names_are_refused_with_the_field(name):
    with pytest.raises(InvalidInput) as exc:
        check_name(name, "machine")
    assert exc.value.details == {"field": "machine"}


@given(st.text(max_size=70))
def test_check_name_agrees_with_rfc1123_labels(text):
    if NAME_RE.match(text) and "\n" not in text:
        assert check_name(text) == text
    else:
        with pytest.raises(InvalidInput):
            check_name(text)


def test_labels():
    assert check_label("role", "db") == ("role", "db")
    assert check_label("k8s.io_x-y", "") == ("k8s.io_x-y", "")
    assert parse_labels("role=db, tier=1,") == {"role": "db", "tier": "1"}
    assert parse_labels("") == {}
    for bad in ["role", "=db", "Role=db", "role=d b", "role=" + "x" * 64, "_r=1"]:
        with pytest.raises(InvalidInput):
            parse_labels(bad)


@pytest.mark.parametrize("value", ["user.x", "user.a.b-c_D9", "user." + "x" * 64])
def test_valid_message_types(value):
    assert check_message_type(value) == value


@pytest.mark.parametrize(
    "value",
    ["user.", "job.run", "system.ready", "x", "user.a b", "user." + "x" * 65, "User.x", None, 1],
)
def test_invalid_message_types(value):
    with pytest.raises(InvalidInput):
        check_message_type(value)


def test_targets_all_names_and_selectors():
    assert parse_target("all") == Target(all=True) == parse_target(" * ")
    assert parse_target("a").names == ("a",)
    assert parse_target("b, a,b").names == ("b", "a")  # order kept, duplicates dropped
    sel = parse_target("tier=1,role=db")
    assert sel.selector == (("role", "db"), ("tier", "1"))
    assert sel.matches("x", {"role": "db", "tier": "1", "more": "y"})
    assert not sel.matches("x", {"role": "db"})
    names = parse_target("a,b")
    assert names.matches("a", {}) and not names.matches("c", {"role": "db"})
    assert parse_target("all").matches("anything", {})
    assert parse_target(" a ,b\n").names == ("a", "b")  # surrounding blanks are trimmed
    assert parse_target("role=").selector == (("role", ""),)  # label values may be empty
    for text in ["all", "a,b", "role=db,tier=1"]:
        assert str(parse_target(text)) == text


@pytest.mark.parametrize(
    "text", ["", "   ", None, 5, "A", "a,,b", "a,B", "=x", "role=db,x", "a b", "a\tb", "Role=db"]
)
def test_invalid_targets(text):
    with pytest.raises(InvalidInput):
        parse_target(text)


@given(st.text(max_size=80))
def test_parse_target_raises_only_invalid_input(text):
    try:
        target = parse_target(text)
    except InvalidInput:
        return
    assert target.all or target.names or target.selector


# -- messages.py -----------------------------------------------------------------------


def test_job_run_round_trips():
    run = JobRun.from_body(
        {"job_id": "j", "argv": ["echo", "hi"], "env": {"A": "1"}, "cwd": "/tmp", "timeout": 5}
    )
    assert run.argv == ("echo", "hi") and run.timeout == 5.0
    assert JobRun.from_body(json.loads(json.dumps(run.to_body()))) == run
    for shell in SHELLS:
        assert JobRun.from_body({"job_id": "j", "command": "x", "shell": shell}).shell == shell


@pytest.mark.parametrize(
    "body,field",
    [
        ({}, None),
        ({"job_id": ""}, None),
        ({"job_id": 7, "argv": ["a"]}, None),
        ({"job_id": "j"}, None),
        ({"job_id": "j", "argv": ["a"], "command": "b"}, None),
        ({"job_id": "j", "argv": []}, "argv"),
        ({"job_id": "j", "argv": "echo"}, "argv"),
        ({"job_id": "j", "argv": [1]}, "argv"),
        ({"job_id": "j", "argv": ["a\x00b"]}, "argv"),
        ({"job_id": "j", "command": ""}, "command"),
        ({"job_id": "j", "command": "   "}, "command"),
        ({"job_id": "j", "command": 3}, "command"),
        ({"job_id": "j", "command": "a\x00"}, "command"),
        ({"job_id": "j", "command": "x", "shell": "zsh"}, "shell"),
        ({"job_id": "j", "command": "x", "env": ["A"]}, "env"),
        ({"job_id": "j", "command": "x", "env": {"A=B": "c"}}, "env"),
        ({"job_id": "j", "command": "x", "env": {"": "c"}}, "env"),
        ({"job_id": "j", "command": "x", "env": {"A": 1}}, "env"),
        ({"job_id": "j", "command": "x", "env": {"A": "\x00"}}, "env"),
        ({"job_id": "j", "command": "x", "cwd": ""}, "cwd"),
        ({"job_id": "j", "command": "x", "cwd": 1}, "cwd"),
        ({"job_id": "j", "command": "x", "timeout": 0}, "timeout"),
        ({"job_id": "j", "command": "x", "timeout": -1}, "timeout"),
        ({"job_id": "j", "command": "x", "timeout": True}, "timeout"),
        ({"job_id": "j", "command": "x", "timeout": "5"}, "timeout"),
        ({"job_id": "j", "command": "x", "timeout": MAX_TIMEOUT_SECONDS + 1}, "timeout"),
    ],
)
def test_job_run_validation_errors(body, field):
    with pytest.raises(InvalidInput) as exc:
        JobRun.from_body(body)
    assert not isinstance(exc.value, TooLarge)
    if field:
        assert exc.value.details.get("field") == field


def test_job_run_size_limit():
    assert JobRun.from_body({"job_id": "j", "command": "x" * MAX_COMMAND_BYTES}).command
    with pytest.raises(TooLarge):
        JobRun.from_body({"job_id": "j", "command": "x" * (MAX_COMMAND_BYTES + 1)})
    with pytest.raises(TooLarge):  # counted in bytes, not characters
        JobRun.from_body({"job_id": "j", "argv": ["é" * (MAX_COMMAND_BYTES // 2 + 1)]})


@given(
    st.dictionaries(
        st.sampled_from(["job_id", "argv", "command", "shell", "env", "cwd", "timeout"]),
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats()
        | st.text()
        | st.lists(st.text(max_size=5), max_size=3)
        | st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
    )
)
def test_job_run_from_body_raises_only_invalid_input(body):
    try:
        JobRun.from_body(body)
    except InvalidInput:
        pass


def test_envelope_round_trip_and_errors():
    env = Envelope.make("lab", "a", "master", "progress", {"text": "x"}, "c1")
    assert Envelope.from_dict(json.loads(json.dumps(env.to_dict()))) == env
    assert env.to_dict()["from"] == "a" and "sender" not in env.to_dict()
    good = env.to_dict()
    for bad in [
        None,
        [],
        "x",
        {**good, "id": ""},
        {**good, "from": None},
        {**good, "type": 5},
        {**good, "to": "x" * 257},
        {**good, "body": [1]},
        {**good, "correlation_id": 5},
        {**good, "created": "soon"},
    ]:
        with pytest.raises(InvalidInput):
            Envelope.from_dict(bad)


def test_frames_round_trip():
    for frame in [
        {"type": "hello", "ack": 3, "ready": True},
        {"type": "welcome", "ack": 0},
        {"type": "msg", "seq": 1, "msg": {}},
        {"type": "ack", "seq": 0},
        {"type": "revoked", "reason": "x"},
        {"type": "error", "error": {}},
    ]:
        assert decode_frame(encode_frame(frame)) == frame
    assert decode_frame('{"type": "hello"}')["ack"] == 0  # absent ack means none processed
    assert decode_frame(b'{"type": "ack", "seq": 2}')["seq"] == 2


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "nope",
        "null",
        "[]",
        "1",
        '"msg"',
        "{",
        b"\xff\xfe\x00",
        b"\x80",
        '{"type": "bogus"}',
        '{"type": null}',
        '{"seq": 1}',
        '{"type": "msg"}',
        '{"type": "msg", "seq": 1}',
        '{"type": "msg", "seq": 1, "msg": 3}',
        '{"type": "msg", "seq": 1, "msg": []}',
        '{"type": "ack", "seq": -1}',
        '{"type": "ack", "seq": true}',
        '{"type": "ack", "seq": 1.0}',
        '{"type": "ack"}',
        '{"type": "ack", "seq": "1"}',
        '{"type": "hello", "ack": -1}',
        '{"type": "welcome", "ack": false}',
        '{"type": "hello", "ack": 1e400}',
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 50_000 + "1" + "}" * 50_000,
    ],
)
def test_garbage_frames_are_refused(text):
    with pytest.raises(InvalidInput):
        decode_frame(text)


@given(st.text(max_size=300) | st.binary(max_size=300))
def test_decode_frame_raises_only_invalid_input(data):
    try:
        frame = decode_frame(data)
    except InvalidInput:
        return
    assert frame["type"] in ("hello", "welcome", "msg", "ack", "revoked", "error")


def test_oversized_frames_are_refused():
    pad = MAX_FRAME_BYTES - len('{"type":"error","x":""}')
    assert decode_frame('{"type":"error","x":"' + "x" * pad + '"}')["type"] == "error"
    with pytest.raises(TooLarge):
        decode_frame('{"type":"error","x":"' + "x" * (pad + 1) + '"}')
    with pytest.raises(TooLarge):
        decode_frame(b" " * (MAX_FRAME_BYTES + 1))


# -- tokens.py -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(tokens.KINDS))
def test_secret_format_and_round_trip(kind):
    for _ in range(50):
        s = tokens.new_secret(kind)
        text = str(s)
        assert re.fullmatch(rf"crc{kind}_[0-9a-f]{{16}}_[A-Za-z0-9_-]{{32}}", text), text
        assert len(s.secret) * 6 >= 128  # >= 128 bits of randomness (24 bytes: 192)
        assert tokens.parse_secret(text, kind) == s
        assert tokens.verify_secret(tokens.parse_secret(text, kind), s.hash)
        for other in set(tokens.KINDS) - {kind}:
            assert tokens.parse_secret(text, other) is None
    assert s.hash == tokens.hash_secret(s.secret) and re.fullmatch(r"[0-9a-f]{64}", s.hash)
    assert s.secret not in s.hash


def test_new_secret_refuses_unknown_kinds():
    with pytest.raises(ValueError):
        tokens.new_secret("x")


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "_",
        "crck",
        "crck_",
        "crck__",
        "crck__x",
        "crck_id_",
        "crcm_id_x",
        "CRCK_id_x",
        "xcrck_id_x",
        "crck_" + "x" * 200,
    ],
)
def test_parse_garbage_secrets(text):
    assert tokens.parse_secret(text, "k") is None


@given(st.text(max_size=250))
def test_parse_secret_never_raises(text):
    parsed = tokens.parse_secret(text, "a")
    if parsed is not None:
        assert str(parsed) == text


def test_wrong_secret_does_not_verify():
    s = tokens.new_secret("a")
    forged = tokens.Secret("a", s.id, s.secret[:-1] + ("A" if s.secret[-1] != "A" else "B"))
    assert not tokens.verify_secret(forged, s.hash)


def test_verify_uses_a_constant_time_comparison(monkeypatch):
    calls: list[tuple[Any, Any]] = []
    real = tokens.hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tokens.hmac, "compare_digest", spy)
    s = tokens.new_secret("m")
    assert tokens.verify_secret(s, s.hash)
    assert calls == [(s.hash, s.hash)]


# -- delivery.py -----------------------------------------------------------------------


def test_inbox_receipts():
    inbox = Inbox()
    assert inbox.receive(0) == Receipt.DUPLICATE
    assert inbox.receive(2) == Receipt.GAP
    assert inbox.receive(1) == Receipt.NEW
    assert inbox.receive(1) == Receipt.NEW  # not processed until marked
    inbox.mark_processed(1)
    assert inbox.receive(1) == Receipt.DUPLICATE and inbox.receive(2) == Receipt.NEW
    with pytest.raises(ValueError):
        inbox.mark_processed(3)
    with pytest.raises(ValueError):
        inbox.mark_processed(1)


def test_outbox_ack_replay_and_restore():
    out = Outbox()
    assert [out.add(p) for p in "abc"] == [1, 2, 3] and len(out) == 3
    assert out.ack(1) == [1]
    assert out.ack(1) == []  # a late or duplicate ack is harmless
    assert out.replay(0) == [(2, "b"), (3, "c")]  # an older peer ack drops nothing new
    assert out.replay(2) == [(3, "c")]
    again = Outbox(next_seq=out.next_seq)
    again.restore(3, "c")
    assert again.replay(2) == [(3, "c")] and again.add("d") == 4
    fresh = Outbox()
    fresh.restore(7, "x")
    assert fresh.next_seq == 8


class LossyLink(RuleBasedStateMachine):
    """A sender (Outbox, persisted) and a receiver (Inbox, persisted) joined by a link
    that drops, duplicates and reorders messages and acks, breaks at will, and whose
    ends crash and restart from what they persisted.

    Protocol followed, as server and agent do: a NEW message is processed then acked; a
    DUPLICATE is acked again; a GAP makes the receiver drop the connection. On connect
    the receiver's ``hello`` carries its high-water mark and the sender replays the rest.
    """

    @initialize()
    def setup(self) -> None:
        self.disk: dict[int, int] = {}  # the sender's persisted outbox
        self.disk_next = 1  # and its persisted next seq (agent: out_last, server: out_next)
        self.out = Outbox()
        self.inbox = Inbox()
        self.sent: list[int] = []  # payloads, in order of sending
        self.processed: list[int] = []  # payloads, in order of processing
        self.wire: list[tuple[int, int]] = []  # (seq, payload) towards the receiver
        self.acks: list[int] = []  # acks towards the sender
        self.connected = False

    # -- the sender --------------------------------------------------------------------
    @rule()
    def send(self) -> None:
        payload = len(self.sent) + 1
        seq = self.out.add(payload)
        self.disk[seq] = payload
        self.disk_next = self.out.next_seq
        self.sent.append(payload)
        if self.connected:
            self.wire.append((seq, payload))

    # -- the link ----------------------------------------------------------------------
    @precondition(lambda self: self.wire)
    @rule(i=st.integers(0, 100))
    def drop(self, i: int) -> None:
        del self.wire[i % len(self.wire)]

    @precondition(lambda self: self.wire)
    @rule(i=st.integers(0, 100), j=st.integers(0, 100))
    def duplicate(self, i: int, j: int) -> None:
        self.wire.insert(j % (len(self.wire) + 1), self.wire[i % len(self.wire)])

    @precondition(lambda self: len(self.wire) > 1)
    @rule(i=st.integers(0, 100), j=st.integers(0, 100))
    def reorder(self, i: int, j: int) -> None:
        i, j = i % len(self.wire), j % len(self.wire)
        self.wire[i], self.wire[j] = self.wire[j], self.wire[i]

    @precondition(lambda self: self.acks)
    @rule(i=st.integers(0, 100), dup=st.booleans())
    def mangle_acks(self, i: int, dup: bool) -> None:
        i %= len(self.acks)
        if dup:
            self.acks.append(self.acks[i])
        else:
            del self.acks[i]

    @precondition(lambda self: len(self.acks) > 1)
    @rule()
    def reorder_acks(self) -> None:
        self.acks.reverse()

    @precondition(lambda self: self.connected)
    @rule(what=st.sampled_from(["link", "sender", "receiver"]))
    def crash(self, what: str) -> None:
        """The link breaks, or one end crashes and restarts from what it persisted."""
        self._disconnect()
        if what == "sender":
            self.out = Outbox(next_seq=self.disk_next)
            for seq in sorted(self.disk):
                self.out.restore(seq, self.disk[seq])
        elif what == "receiver":
            self.inbox = Inbox(self.inbox.processed)  # its mark is persisted before acking

    @precondition(lambda self: not self.connected)
    @rule()
    def connect(self) -> None:
        """hello(ack = receiver's mark) -> the sender replays everything after it."""
        self._disconnect()
        self.connected = True
        self._ack(self.inbox.processed)
        self.wire = self.out.replay(self.inbox.processed)

    # -- the receiver ------------------------------------------------------------------
    @precondition(lambda self: self.wire)
    @rule(i=st.integers(0, 100), count=st.integers(1, 4))
    def deliver(self, i: int, count: int = 1) -> None:
        for _ in range(count):
            if self.wire:
                self._receive(*self.wire.pop(i % len(self.wire)))

    @precondition(lambda self: self.acks)
    @rule(i=st.integers(0, 100), count=st.integers(1, 4))
    def deliver_ack(self, i: int, count: int = 1) -> None:
        for _ in range(count):
            if self.acks:
                self._ack(self.acks.pop(i % len(self.acks)))

    # -- helpers -----------------------------------------------------------------------
    def _disconnect(self) -> None:
        self.connected = False
        self.wire.clear()
        self.acks.clear()

    def _receive(self, seq: int, payload: int) -> None:
        mark = self.inbox.processed
        receipt = self.inbox.receive(seq)
        assert receipt == (
            Receipt.DUPLICATE if seq <= mark else Receipt.NEW if seq == mark + 1 else Receipt.GAP
        )
        if receipt == Receipt.GAP:
            self._disconnect()  # server: close 4400; agent: reconnect to resume
            return
        if receipt == Receipt.NEW:
            self.inbox.mark_processed(seq)
            self.processed.append(payload)
        self.acks.append(seq)

    def _ack(self, seq: int) -> None:
        for done in self.out.ack(seq):
            del self.disk[done]

    # -- invariants --------------------------------------------------------------------
    @invariant()
    def processed_exactly_once_in_order(self) -> None:
        assert self.processed == self.sent[: len(self.processed)]
        assert self.inbox.processed == len(self.processed)

    @invariant()
    def nothing_unprocessed_is_forgotten(self) -> None:
        pending = [seq for seq, _ in self.out.replay(0)]
        assert pending == sorted(self.disk)
        assert pending == list(range(pending[0], self.out.next_seq)) if pending else True
        # Everything the receiver has not processed is still kept by the sender.
        assert set(range(self.inbox.processed + 1, len(self.sent) + 1)) <= set(pending)

    def teardown(self) -> None:
        if not hasattr(self, "out"):
            return
        # A final reconnect over a clean link: everything sent gets processed.
        self.connect()
        while self.wire:
            self.deliver(0)
            while self.acks:
                self.deliver_ack(0)
        assert self.processed == self.sent
        assert len(self.out) == 0 and not self.disk


LossyLink.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
TestLossyLink = LossyLink.TestCase


@given(st.integers(1, 30), st.data())
def test_replay_after_any_ack_resends_exactly_the_rest(n, data):
    out = Outbox()
    for p in range(1, n + 1):
        out.add(p)
    peer = data.draw(st.integers(0, n))
    assert [s for s, _ in out.replay(peer)] == list(range(peer + 1, n + 1))
