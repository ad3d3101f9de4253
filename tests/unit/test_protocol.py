"""Exhaustive tests of the protocol: state tables, names, frames, secrets, and a
hypothesis state machine driving the real server and the real agent (each on its own
SQLite) over a hostile link, through the delivery core they share."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ends import AgentEnd, Server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from cloudremotecontrol.agent.state import AgentState
from cloudremotecontrol.errors import InvalidInput, TooLarge
from cloudremotecontrol.protocol import delivery as delivery_rules
from cloudremotecontrol.protocol import tokens
from cloudremotecontrol.protocol.frames import (
    Ack,
    Welcome,
    decode_frame,
    encode_frame,
    read_frame,
    write_frame,
)
from cloudremotecontrol.protocol.limits import (
    MAX_COMMAND_BYTES,
    MAX_FRAME_BYTES,
    MAX_TIMEOUT_SECONDS,
)
from cloudremotecontrol.protocol.messages import SHELLS, Envelope, JobRun, Progress
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
from cloudremotecontrol.server.ops import delivery
from cloudremotecontrol.server.ops import messages as msg_ops

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
    (J.QUEUED, JE.SKIP): J.SKIPPED,  # rate control: only a target not yet reached
    (J.QUEUED, JE.EXPIRE): J.EXPIRED,
    (J.DELIVERED, JE.START): J.RUNNING,
    **{(J.DELIVERED, e): s for e, s in ENDINGS.items()},
    **{(J.RUNNING, e): s for e, s in ENDINGS.items()},
}
TERMINAL = {J.SUCCEEDED, J.FAILED, J.TIMED_OUT, J.CANCELLED, J.LOST, J.SKIPPED, J.EXPIRED}


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


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("role=db,role=web", "role"),
        ("role=web,role=db", "role"),
        ("zone=b,zone=a", "zone"),
        ("role=db,role=db", "role"),
        ("role=db, zone=a ,role=", "role"),
    ],
)
def test_a_selector_names_each_label_once(text, key):
    # Every pair must match: a second value for a key is refused, never kept instead.
    with pytest.raises(InvalidInput) as exc:
        parse_target(text)
    assert exc.value.message == (
        f"selector {text.strip()!r} names label {key} twice: a selector matches machines "
        "that have every KEY=VALUE it lists"
    )
    assert exc.value.details.get("field") == "to"
    # Different keys combine: a machine must have every one.
    sel = parse_target("role=db,zone=a")
    assert sel.matches("x", {"role": "db", "zone": "a"})
    assert not sel.matches("y", {"role": "web", "zone": "a"})
    assert not sel.matches("z", {"role": "db", "zone": "b"})


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


@pytest.mark.parametrize(
    "key,shown", [("A=B", "'A=B'"), ("", "''"), ("A\x00B", "'A\\x00B'"), ("=C:", "'=C:'")]
)
def test_a_job_env_name_no_agent_can_set_is_refused_by_name(key, shown):
    with pytest.raises(InvalidInput) as exc:
        JobRun.from_body({"job_id": "j", "command": "x", "env": {"OK": "1", key: "1"}})
    assert exc.value.message.startswith(f"invalid variable name {shown} in env: "), exc.value
    assert exc.value.details.get("field") == "env"
    with pytest.raises(InvalidInput, match="the value of 'B' is not one"):
        JobRun.from_body({"job_id": "j", "command": "x", "env": {"A": "1", "B": "\x00"}})


def test_job_env_names_real_programs_use_are_kept():
    """Not only POSIX's portable names: lowercase, dotted, dashed, `ProgramFiles(x86)`,
    one with a space or starting with a digit can all be set by execve and CreateProcess."""
    names = ["http_proxy", "npm_config_cache", "java.home", "x-y", "ProgramFiles(x86)", "A B", "1A"]
    run = JobRun.from_body({"job_id": "j", "command": "x", "env": dict.fromkeys(names, "v")})
    assert list(run.env) == names


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
    # No body, or null, is an empty one; no time, or null, is 0; an int time is a time.
    bare = {k: v for k, v in env.to_dict().items() if k not in ("body", "created")}
    assert Envelope.from_dict(bare).body == {} and Envelope.from_dict(bare).created == 0.0
    nulls = {**bare, "body": None, "created": None}
    assert Envelope.from_dict(nulls).body == {} and Envelope.from_dict(nulls).created == 0.0
    assert Envelope.from_dict({**bare, "created": 17}).created == 17.0
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
        # A falsy body that is no object is refused as any other (not taken for {}).
        {**good, "body": 0},
        {**good, "body": False},
        {**good, "body": ""},
        {**good, "body": []},
        {**good, "correlation_id": 5},
        {**good, "created": "soon"},
        {**good, "created": ""},
        {**good, "created": "12.5"},
        {**good, "created": False},
        {**good, "created": True},
        {**good, "created": 10**400},  # an int beyond any float: bad input, not a fault
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
        "crck_0123\x00cdef_x",  # a NUL (PostgreSQL text cannot hold one)
        "crck_0123456789abcdef_x\x00y",
        "crck_0123456789ABCDEF_x",  # ids are lowercase hex
        "crck_0123456789abcdef_\ud800",  # a lone surrogate does not encode
        "crck_0123456789abcdef_x y",
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


# -- delivery.py: the core, run by the real server and the real agent ---------------------


@pytest.fixture
def ends(tmp_path: Path) -> Iterator[tuple[Server, AgentEnd]]:
    server = Server(tmp_path / "crc.db")
    agent = AgentEnd(tmp_path / "agent", server.credential["credential"])
    yield server, agent
    agent.close()
    server.close()


def _progress(agent: AgentEnd, *texts: str) -> None:
    for text in texts:
        agent.run(agent.agent.send(Progress(text=text)))


def _user(server: Server, n: int) -> list[str]:
    out = server.run(msg_ops.send_message, server.user, "lab", "m", "user.n", {"n": n})
    return [frame for _, _, frame in out["deliveries"]]


def test_receipts_at_both_ends(ends):
    server, agent = ends
    welcome, _ = server.connect(0, None)
    agent.connect(welcome)
    _progress(agent, "one", "two")
    one, two = agent.take_sent()
    assert server.receive(two) is None  # a gap: the server drops the connection
    assert server.receive(one) == [write_frame(Ack(seq=1))]
    assert server.receive(one) == [write_frame(Ack(seq=1))]  # a duplicate: acked again
    assert server.receive(two) == [write_frame(Ack(seq=2))]
    assert [e["text"] for e in server.events("progress")] == ["one", "two"]
    [first], [second] = _user(server, 1), _user(server, 2)
    assert agent.receive(second) is None  # a gap: the agent reconnects to resume
    assert agent.receive(first) == [write_frame(Ack(seq=1))]
    assert agent.receive(first) == [write_frame(Ack(seq=1))]
    assert agent.state.processed == 1
    with pytest.raises(InvalidInput):  # an ack for a message never sent
        server.run(delivery.ack_outbox, server.machine_id, 3)
    with pytest.raises(InvalidInput):
        agent.state.acked(3)
    assert server.run(delivery.ack_outbox, server.machine_id, 1) == 1
    assert server.outbox_seqs() == [2]


def test_an_ack_beyond_what_was_sent_renumbers_what_is_kept_at_both_ends(ends):
    """A side whose state was rolled back meets a peer that processed more than it
    numbered: it continues after the peer's ack and renumbers what it still holds, so
    the peer takes nothing for a duplicate."""
    server, agent = ends
    _user(server, 1)  # kept (never sent): seq 1
    _, replay = server.connect(hello_ack=5, resume_from=None)
    assert [read_frame(f).seq for f in replay] == [6]  # renumbered after the agent's ack
    resync = server.events("machine.resync")
    assert [(r["agent_ack"], r["server_sent"], r["renumbered"]) for r in resync] == [(5, 1, 1)]
    assert read_frame(_user(server, 2)[0]).seq == 7
    # The agent side: the server says it processed 9; the agent numbered only 2, and
    # still holds both: they move after 9, and numbering goes on from there.
    _progress(agent, "a", "b")
    resend = agent.connect(Welcome(ack=9, resume_from=1))
    assert [(read_frame(f).seq, read_frame(f).msg["body"]["text"]) for f in resend] == [
        (10, "a"),
        (11, "b"),
    ]
    _progress(agent, "c")
    [frame] = agent.take_sent()
    assert read_frame(frame).seq == 12


def test_an_ack_too_far_beyond_anything_sent_is_refused_at_both_ends(ends):
    """No rolled-back state is behind by half the number range: an ack beyond
    ``MAX_PEER_ACK`` is refused and changes nothing (numbering after it would leave no
    numbers for the messages to come, and 64-bit columns would overflow)."""
    server, agent = ends
    _user(server, 1)
    for ack in (delivery_rules.MAX_PEER_ACK + 1, 2**63 - 1):
        with pytest.raises(InvalidInput, match="beyond any message sent"):
            server.connect(hello_ack=ack, resume_from=None)
    assert server.events("machine.resync") == []
    _, replay = server.connect(hello_ack=0, resume_from=None)
    assert [read_frame(f).seq for f in replay] == [1]
    _progress(agent, "a")
    agent.take_sent()
    with pytest.raises(InvalidInput, match="beyond any message sent"):
        agent.connect(Welcome(ack=2**63 - 1, resume_from=1))
    resend = agent.connect(Welcome(ack=0, resume_from=1))
    assert [read_frame(f).seq for f in resend] == [1]


def test_a_resume_too_far_beyond_anything_processed_is_refused_at_both_ends(ends):
    """A ``resume_from`` beyond ``MAX_PEER_ACK + 1`` is refused and changes nothing: the
    receiver would take nearly every number for processed, and every message of a peer
    numbering from where it really is for a duplicate."""
    server, agent = ends
    for resume_from in (delivery_rules.MAX_PEER_ACK + 2, 2**63 - 1):
        with pytest.raises(InvalidInput, match="beyond any message sent"):
            server.connect(hello_ack=0, resume_from=resume_from)
    assert server.events("machine.resync") == []
    welcome, _ = server.connect(hello_ack=0, resume_from=delivery_rules.MAX_PEER_ACK + 1)
    assert welcome.ack == delivery_rules.MAX_PEER_ACK  # the bound itself is followed
    with pytest.raises(InvalidInput, match="beyond any message sent"):
        agent.connect(Welcome(ack=0, resume_from=2**63 - 1))
    assert agent.state.processed == 0


def test_a_peer_resuming_beyond_what_was_processed_is_followed_and_the_loss_counted(ends):
    server, agent = ends
    first, _ = server.connect(hello_ack=0, resume_from=4)  # the agent's 1-3 are gone
    assert first.ack == 3
    assert [(r["server_had"], r["lost"]) for r in server.events("machine.resync")] == [(0, 3)]
    _user(server, 1)
    _user(server, 2)
    server.run(delivery.ack_outbox, server.machine_id, 1)  # the agent had processed 1...
    agent.state.close()  # ...then its state dir was restored from before it
    agent._start()
    welcome, replay = server.connect(hello_ack=0, resume_from=None)
    assert welcome.resume_from == 2
    assert agent.connect(welcome) == []
    assert agent.state.processed == 1  # skipped, not waited for for ever
    assert agent.receive(replay[0]) == [write_frame(Ack(seq=2))]


class LossyLink(RuleBasedStateMachine):
    """The real server (its operations on a SQLite store) and the real agent (its state
    on a SQLite file) joined by a link that drops, duplicates and reorders frames both
    ways and breaks at will, while either end is killed (-9) and restarts from what it
    committed. Each end numbers its messages (the agent: progress lines; the server:
    user messages) and follows the delivery core's rules: a NEW message is processed
    then acked, a DUPLICATE acked again, a GAP drops the connection; on connect the
    hello and welcome say where each side resumes and both replay the rest."""

    @initialize()
    def setup(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="crc-link-"))
        self.server = Server(self.tmp / "crc.db")
        self.agent = AgentEnd(self.tmp / "agent", self.server.credential["credential"])
        self.up: list[str] = []  # frames towards the server
        self.down: list[str] = []  # frames towards the agent
        self.sent_up: list[str] = []  # progress lines the agent sent, in order
        self.sent_down: list[int] = []  # user messages the server sent, in order
        self.connected = False

    # -- the ends send ------------------------------------------------------------------
    @rule()
    def agent_sends(self) -> None:
        text = f"step {len(self.sent_up) + 1}"
        _progress(self.agent, text)
        self.sent_up.append(text)
        self.up.extend(self.agent.take_sent())  # on the wire only while connected

    @rule()
    def server_sends(self) -> None:
        n = len(self.sent_down) + 1
        frames = _user(self.server, n)
        self.sent_down.append(n)
        if self.connected:
            self.down.extend(frames)

    # -- the link ----------------------------------------------------------------------
    def _wire(self, which: str) -> list[str]:
        return self.up if which == "up" else self.down

    @rule(which=st.sampled_from(["up", "down"]), i=st.integers(0, 100))
    def drop(self, which: str, i: int) -> None:
        wire = self._wire(which)
        if wire:
            del wire[i % len(wire)]

    @rule(which=st.sampled_from(["up", "down"]), i=st.integers(0, 100), j=st.integers(0, 100))
    def duplicate(self, which: str, i: int, j: int) -> None:
        wire = self._wire(which)
        if wire:
            wire.insert(j % (len(wire) + 1), wire[i % len(wire)])

    @rule(which=st.sampled_from(["up", "down"]), i=st.integers(0, 100), j=st.integers(0, 100))
    def reorder(self, which: str, i: int, j: int) -> None:
        wire = self._wire(which)
        if len(wire) > 1:
            i, j = i % len(wire), j % len(wire)
            wire[i], wire[j] = wire[j], wire[i]

    @precondition(lambda self: self.connected)
    @rule(what=st.sampled_from(["link", "agent", "server"]))
    def crash(self, what: str) -> None:
        """The link breaks, or one end is killed and restarts from what it committed."""
        self._disconnect()
        if what == "agent":
            self.agent.restart()
        elif what == "server":
            self.server.restart()

    @precondition(lambda self: not self.connected)
    @rule()
    def connect(self) -> None:
        hello = self.agent.agent.hello()
        welcome, replay = self.server.connect(hello.ack, hello.resume_from)
        self.up = self.agent.connect(welcome)
        self.down = replay
        self.connected = True

    @rule(which=st.sampled_from(["up", "down"]), i=st.integers(0, 100), count=st.integers(1, 4))
    def deliver(self, which: str, i: int, count: int) -> None:
        for _ in range(count):
            wire = self._wire(which)
            if not wire:
                return
            self._deliver(which, wire.pop(i % len(wire)))

    # -- helpers -----------------------------------------------------------------------
    def _deliver(self, which: str, text: str) -> None:
        end = self.server if which == "up" else self.agent
        answer = end.receive(text)
        if answer is None:
            self._disconnect()  # server: close 4400; agent: reconnect to resume
            return
        (self.down if which == "up" else self.up).extend(answer)
        self.up.extend(self.agent.take_sent())

    def _disconnect(self) -> None:
        self.connected = False
        self.up.clear()
        self.down.clear()
        self.agent.disconnect()

    def _processed(self) -> tuple[list[str], list[int]]:
        up = [e["text"] for e in self.server.events("progress")]
        rows = self.agent.state.db.execute("SELECT envelope FROM messages ORDER BY n").fetchall()
        down = [json.loads(r[0])["body"]["n"] for r in rows]
        return up, down

    # -- invariants --------------------------------------------------------------------
    @invariant()
    def each_end_processed_exactly_once_in_order(self) -> None:
        up, down = self._processed()
        assert up == self.sent_up[: len(up)]
        assert down == self.sent_down[: len(down)]
        assert self.server.machine()["in_done"] == len(up)
        assert self.agent.state.processed == len(down)

    @invariant()
    def nothing_unprocessed_is_forgotten(self) -> None:
        up, down = self._processed()
        kept_up = [seq for seq, _ in self.agent.state.frames_after(0)]
        kept_down = self.server.outbox_seqs()
        for kept, processed, sent in (
            (kept_up, up, self.sent_up),
            (kept_down, down, self.sent_down),
        ):
            assert kept == list(range(kept[0], kept[0] + len(kept))) if kept else True
            # Everything the receiver has not processed is still kept by the sender.
            assert set(range(len(processed) + 1, len(sent) + 1)) <= set(kept)

    def teardown(self) -> None:
        if not hasattr(self, "server"):
            return
        try:
            # A final reconnect over a clean link: everything sent gets processed.
            self._disconnect()
            self.connect()
            while self.up or self.down:
                for which in ("up", "down"):
                    while self._wire(which):
                        self._deliver(which, self._wire(which).pop(0))
            assert self._processed() == (self.sent_up, self.sent_down)
            assert self.agent.state.frames_after(0) == [] and self.server.outbox_seqs() == []
        finally:
            self.agent.close()
            self.server.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


LossyLink.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLossyLink = LossyLink.TestCase


@settings(max_examples=50, deadline=None)  # SQLite on a shared disk: timings vary
@given(st.integers(1, 30), st.data())
def test_replay_after_any_ack_resends_exactly_the_rest(n, data):
    with tempfile.TemporaryDirectory() as tmp:
        state = AgentState(tmp)
        try:
            for p in range(1, n + 1):
                state.enqueue(Envelope.make("lab", "m", "master", "progress", {"text": str(p)}))
            peer = data.draw(st.integers(0, n))
            assert [s for s, _ in state.outbox.replay(peer, 1000)] == list(range(peer + 1, n + 1))
        finally:
            state.close()


def test_a_folded_job_result_is_checked_like_the_messages_it_stands_for() -> None:
    from cloudremotecontrol.errors import InvalidInput, TooLarge
    from cloudremotecontrol.protocol.frames import FEATURE_FOLD, Hello, Welcome, read_frame
    from cloudremotecontrol.protocol.limits import MAX_OUTPUT_CHUNK_BYTES
    from cloudremotecontrol.protocol.messages import MAX_FOLDED_CHUNKS, JobResult

    base = {"job_id": "a" * 32, "status": "succeeded", "exit_code": 0}
    r = JobResult.from_body({**base, "started": True, "output": [["stdout", "hi\n"]]})
    assert r.started is True and r.output == (("stdout", "hi\n"),)
    assert JobResult.from_body(base).output is None  # an older agent's result
    big = JobResult.from_body({**base, "output": [["stderr", "é" * MAX_OUTPUT_CHUNK_BYTES]]})
    assert big.output is not None and len(big.output[0][1].encode()) <= MAX_OUTPUT_CHUNK_BYTES
    with pytest.raises(TooLarge):
        JobResult.from_body({**base, "output": [["stdout", "x"]] * (MAX_FOLDED_CHUNKS + 1)})
    for bad in ([["stdin", "x"]], [["stdout"]], ["stdout"], {"stdout": "x"}, [["stdout", 5]]):
        with pytest.raises(InvalidInput):
            JobResult.from_body({**base, "output": bad})
    with pytest.raises(InvalidInput):
        JobResult.from_body({**base, "started": "yes"})
    hello = read_frame('{"type": "hello", "ack": 0, "features": ["job.fold", "later"]}')
    assert isinstance(hello, Hello) and hello.features == (FEATURE_FOLD, "later")
    assert read_frame('{"type": "welcome", "ack": 0}') == Welcome(ack=0)  # an older server
    with pytest.raises(TooLarge):
        read_frame('{"type": "hello", "ack": 0, "features": [' + '"x",' * 16 + '"x"]}')
