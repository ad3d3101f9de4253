"""The hand-written JSON of the hot paths (a fan-out's ``msg`` frames, acks, the events a
target's result adds, the event streams) is exactly what the general encoder writes."""

from __future__ import annotations

import dataclasses
import json
import math

from hypothesis import given
from hypothesis import strategies as st

from cloudremotecontrol.protocol.frames import Ack, Msg, ack_frame, msg_frames, write_frame
from cloudremotecontrol.protocol.messages import Envelope
from cloudremotecontrol.server.ops.common import dumps, json_text
from cloudremotecontrol.server.ops.events import event_json, event_view

TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)  # controls, quotes, astral
SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), TEXT
)
BODY = st.dictionaries(TEXT, st.one_of(SCALAR, st.lists(TEXT, max_size=3)), max_size=4)


@given(SCALAR)
def test_json_text_is_dumps(value: object) -> None:
    assert json_text(value) == dumps(value)  # type: ignore[arg-type]


@given(
    st.lists(
        st.tuples(
            st.integers(0, 2**53),
            TEXT.filter(bool),
            TEXT.filter(bool),
            st.none() | TEXT,
            st.floats(allow_nan=False) | st.integers(0, 2**40),
        ),
        max_size=5,
    ),
    BODY,
)
def test_msg_frames_are_write_frame(
    items: list[tuple[int, str, str, str | None, float]], body: dict[str, object]
) -> None:
    envs = [
        (seq, Envelope("i" + to, "g", sender, to, "job.run", body, cid, created))
        for seq, to, sender, cid, created in items
    ]
    got = list(msg_frames(envs))
    assert got == [write_frame(Msg(seq=seq, msg=env.to_dict())) for seq, env in envs]


def test_msg_frames_encode_each_body() -> None:
    """Bodies are told apart by identity, not by an id that a freed body's may reuse."""
    env = Envelope.make("g", "master", "m", "job.run", {"a": 1})
    other = dataclasses.replace(env, body={"b": 2})
    frames = list(msg_frames([(1, env), (2, other), (3, env)]))
    assert [json.loads(f)["msg"]["body"] for f in frames] == [{"a": 1}, {"b": 2}, {"a": 1}]
    bodies = ((seq, dataclasses.replace(env, body={"n": seq})) for seq in range(1, 200))
    assert [json.loads(f)["msg"]["body"]["n"] for f in msg_frames(bodies)] == list(range(1, 200))


def test_ack_frame_is_write_frame() -> None:
    for seq in (0, 1, 2**53):
        assert ack_frame(seq) == write_frame(Ack(seq=seq))
    for bad in (-1, True, 1.0, "1", 2**63):
        try:
            ack_frame(bad)  # type: ignore[arg-type]
        except ValueError:
            continue
        raise AssertionError(f"ack_frame({bad!r}) accepted")


@given(
    st.integers(1, 2**53),
    st.floats(allow_nan=False, allow_infinity=False) | st.integers(0, 2**40),
    TEXT,
    st.none() | TEXT,
    st.none() | TEXT,
    BODY,
)
def test_event_json_is_event_view(
    cursor: int,
    created: float,
    kind: str,
    machine: str | None,
    job_id: str | None,
    data: dict[str, object],
) -> None:
    if any(isinstance(v, float) and not math.isfinite(v) for v in data.values()):
        data = {}  # a stored event's data is JSON that dumps wrote: never NaN
    row = {
        "id": cursor,
        "created": created,
        "type": kind,
        "machine": machine,
        "job_id": job_id,
        "data": dumps(data),
    }
    assert event_json(row) == dumps(event_view(row))
