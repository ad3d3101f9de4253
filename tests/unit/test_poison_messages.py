"""Poison messages: one message an end cannot use never stops its stream. It is given up
(a dead letter: processed with no effect, acknowledged, reported), at once when it
cannot be decoded, after ``MAX_ATTEMPTS`` when processing it fails - crashes of the
agent included. Run against the real agent (state on SQLite) and the real server
operations (SQLite store)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ends import AgentEnd, Server

from cloudremotecontrol.protocol.delivery import MAX_ATTEMPTS
from cloudremotecontrol.protocol.frames import FEATURE_ACK, Ack, Msg, read_frame, write_frame
from cloudremotecontrol.protocol.messages import Envelope, JobRun, Progress, UserMessage
from cloudremotecontrol.server.ops import delivery, jobs


@pytest.fixture
def ends(tmp_path: Path) -> Iterator[tuple[Server, AgentEnd]]:
    server = Server(tmp_path / "crc.db")
    agent = AgentEnd(tmp_path / "agent", server.credential["credential"])
    welcome, _ = server.connect(0, None)
    agent.connect(welcome)
    yield server, agent
    agent.close()
    server.close()


def deep(levels: int) -> dict[str, Any]:
    inner: Any = []
    for _ in range(levels - 2):
        inner = [inner]
    return {"d": inner}


def frame(seq: int, type: str, body: Any, **envelope: Any) -> str:
    env = {**Envelope.make("lab", "master", "m", type, {}).to_dict(), "body": body, **envelope}
    return write_frame(Msg(seq=seq, msg=env))


def reports(agent: AgentEnd) -> list[dict[str, Any]]:
    """What the agent queued for the server: ``(type, body)`` of each message."""
    return [read_frame(f).msg for _, f in agent.state.frames_after(0)]


# -- the agent --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "type, body, envelope, why",
    [
        ("user.deep", deep(490), {}, "nested more than"),
        ("bogus.thing", {"x": 1}, {}, "unknown message type"),
        ("progress", {"text": "x"}, {}, "agents do not take"),
        ("job.cancel", {"job_id": ["x"]}, {}, "job_id"),
        ("user.x", {}, {"from": ""}, "'from'"),
        (
            "hosts.sync",
            {"job_id": "j1", "group": "lab", "entries": [["fe80::1%x\n6.6.6.6", "c"]]},
            {},
            "plain IP",
        ),
    ],
)
def test_a_message_the_agent_cannot_decode_is_given_up_at_once(ends, type, body, envelope, why):
    _, agent = ends
    assert agent.receive(frame(1, type, body, **envelope)) == [write_frame(Ack(seq=1))]
    assert agent.state.processed == 1
    [dead] = agent.state.dead_letters()
    assert (dead["seq"], dead["attempts"]) == (1, 1) and why in dead["reason"], dead
    sent = reports(agent)
    assert sent[0]["type"] == "message.failed"
    assert sent[0]["body"]["seq"] == 1 and why in sent[0]["body"]["reason"]
    # The next message is processed as usual.
    assert agent.receive(frame(2, "user.fine", {"n": 2})) == [write_frame(Ack(seq=2))]
    assert agent.state.take_message("user.fine", None)["body"] == {"n": 2}


def test_a_job_the_agent_cannot_use_ends_failed_and_is_never_run_later(ends):
    _, agent = ends
    bad = frame(1, "job.run", {"job_id": "j1", "argv": []}, correlation_id="j1")
    assert agent.receive(bad) == [write_frame(Ack(seq=1))]
    sent = reports(agent)
    assert [m["type"] for m in sent] == ["message.failed", "job.result"]
    result = sent[1]["body"]
    assert (result["job_id"], result["status"]) == ("j1", "failed")
    assert "argv" in result["reason"]
    # The same job id arriving again (re-sent under a new number) does not run.
    good = frame(2, "job.run", {"job_id": "j1", "argv": ["true"]})
    assert agent.receive(good) == [write_frame(Ack(seq=2))]
    assert agent.agent._jobs == {}


def test_a_message_whose_handling_fails_is_retried_then_given_up(ends, monkeypatch):
    _, agent = ends
    calls = []

    async def broken(ws: Any, seq: int, message: Any, env: Any) -> None:
        calls.append(seq)
        raise OSError("disk full")

    monkeypatch.setitem(agent.agent._messages._handlers, UserMessage, broken)
    text = frame(1, "user.x", {"n": 1})
    for _ in range(MAX_ATTEMPTS - 1):
        assert agent.receive(text) is None  # not acked: reconnect, the server replays it
        assert agent.state.processed == 0
    assert agent.receive(text) == [write_frame(Ack(seq=1))]
    assert calls == [1] * MAX_ATTEMPTS
    [dead] = agent.state.dead_letters()
    assert dead["attempts"] == MAX_ATTEMPTS and "disk full" in dead["reason"]
    assert reports(agent)[0]["type"] == "message.failed"


class _Killed(BaseException):
    """The process dies in the middle of handling a message (no except clause runs)."""


def test_a_message_that_kills_the_agent_every_time_is_given_up_after_restarts(ends, monkeypatch):
    _, agent = ends
    calls = []

    async def lethal(ws: Any, seq: int, message: Any, env: Any) -> None:
        calls.append(seq)
        raise _Killed

    text = frame(1, "user.x", {"n": 1})
    for _ in range(MAX_ATTEMPTS):
        monkeypatch.setitem(agent.agent._messages._handlers, UserMessage, lethal)
        with pytest.raises(_Killed):
            agent.receive(text)
        agent.restart()  # a new agent process on the same state directory
    # The next replay is given up before it is handled: the agent does not die again.
    assert agent.receive(text) == [write_frame(Ack(seq=1))]
    assert calls == [1] * MAX_ATTEMPTS
    assert agent.state.dead_letters()[0]["reason"] == f"failed {MAX_ATTEMPTS} times"
    assert agent.receive(frame(2, "user.fine", {})) == [write_frame(Ack(seq=2))]


# -- the server -------------------------------------------------------------------------------


def test_a_message_the_server_fails_to_apply_is_retried_then_given_up(ends, monkeypatch):
    server, agent = ends
    calls = []

    def broken(tx: Any, m: Any, msg: Any, env: Any) -> list[Any]:
        calls.append(msg.text)
        tx.execute("UPDATE machines SET progress = 'half-done' WHERE id = ?", (m["id"],))
        raise RuntimeError("a bug")

    monkeypatch.setitem(delivery.HANDLERS._handlers, Progress, broken)
    agent.run(agent.agent.send(Progress(text="one")))
    [text] = agent.take_sent()
    for _ in range(MAX_ATTEMPTS - 1):
        assert server.receive(text) is None  # "retry": the connection closes, agent resends
        m = server.machine()
        assert m["in_done"] == 0 and m["progress"] is None  # rolled back, not half applied
    assert server.receive(text) == [write_frame(Ack(seq=1))]
    assert calls == ["one"] * MAX_ATTEMPTS
    [error] = server.events("agent.error")
    assert (error["code"], error["seq"], error["type"]) == ("dead_letter", 1, "progress")
    monkeypatch.undo()
    agent.run(agent.agent.send(Progress(text="two")))
    [text] = agent.take_sent()
    assert server.receive(text) == [write_frame(Ack(seq=2))]
    assert [e["text"] for e in server.events("progress")] == ["two"]


def test_a_dead_letter_reaches_the_master_as_an_event_and_the_stream_goes_on(ends):
    server, agent = ends
    # Stored by an older server, which did not check bodies' depth.
    poison = Envelope.make("lab", "master", "m", "user.deep", deep(100))
    server.run(lambda tx: jobs.enqueue(tx, {"id": server.machine_id}, poison))
    after = Envelope.make("lab", "master", "m", "user.after", {"n": 2})
    server.run(lambda tx: jobs.enqueue(tx, {"id": server.machine_id}, after))
    _, replay = server.connect(agent.state.processed, None)
    acks = [agent.receive(text) for text in replay]
    assert acks == [[write_frame(Ack(seq=1))], [write_frame(Ack(seq=2))]]
    for text in acks[0] + acks[1] + agent.take_sent():
        assert server.receive(text) is not None
    assert server.outbox_seqs() == []
    [failed] = server.events("message.failed")
    assert (failed["machine"], failed["seq"], failed["type"]) == ("m", 1, "user.deep")
    assert "nested more than" in failed["reason"] and failed["attempts"] == 1
    assert agent.state.take_message("user.after", None)["body"] == {"n": 2}


def test_a_job_the_agent_gives_up_ends_failed_whatever_the_order_of_its_frames(ends):
    """The agent dies while handling a job.run, ``MAX_ATTEMPTS`` times; then it gives the
    job up and writes its reports (message.failed, the job's failed result) before the
    ack of the job.run. Read by the server in that order, the job ends ``failed`` (it
    used to stay ``delivered`` for ever, and ``crc run`` waited for it)."""
    server, agent = ends

    class Killed(BaseException):
        pass

    async def lethal(ws: Any, seq: int, message: Any, env: Any) -> None:
        raise Killed

    job_id = server.run(jobs.create_job, server.user, "lab", "m", {"argv": ["true"]})["job_id"]
    _, [text] = server.connect(0, None)
    for _ in range(MAX_ATTEMPTS):
        agent.agent._messages._handlers[JobRun] = lethal
        with pytest.raises(Killed):
            agent.receive(text)
        agent.restart()
        welcome, [text] = server.connect(agent.state.processed, agent.state.resume_from())
        agent.connect(welcome)
    ack = agent.receive(text)  # given up
    assert ack == [write_frame(Ack(seq=1))]
    sent = agent.take_sent()
    assert [read_frame(f).msg["type"] for f in sent] == ["message.failed", "job.result"]
    for f in sent + ack:  # the order the agent wrote them in
        assert server.receive(f) is not None
    [target] = server.run(jobs.job_view, server.user["user_id"], job_id)["targets"]
    assert target["status"] == "failed", target
    assert "could not use this job" in target["reason"]
    statuses = [e["status"] for e in server.events("job.status")]
    assert statuses == ["delivered", "failed"], statuses


@pytest.mark.parametrize(
    "envelope",
    [{"type": "user.\ud800"}, {"type": "\udcff"}, {"correlation_id": "c\ud800"}, {"to": "\ud800"}],
)
def test_a_word_with_a_lone_surrogate_in_a_machines_envelope_is_refused_and_recorded_escaped(
    ends, envelope
):
    """JSON carries ``"\\ud800"``, which no UTF-8 page, response or database can: an
    envelope field holding one is refused where it is decoded (the message is given up),
    and the ``agent.error`` event names the type escaped, so every read of it works."""
    server, _ = ends
    env = {**Envelope.make("lab", "m", "server", "progress", {"text": "x"}).to_dict(), **envelope}
    text = write_frame(Msg(seq=1, msg=env))
    assert server.receive(text) == [write_frame(Ack(seq=1))]
    [error] = server.events("agent.error")
    assert "valid Unicode" in error["message"] or "unknown message type" in error["message"]
    assert error["type"].encode("utf-8")  # storable and readable as UTF-8
    assert error["type"] == env["type"].encode("utf-8", "backslashreplace").decode()
    assert server.events("progress") == []


@pytest.mark.parametrize("then", ["poison", "again"])
def test_an_ack_sent_at_once_covers_the_one_deferred_before_it(ends, then):
    """With ``msg.ack`` the agent defers the ack of a message it processed; a message it
    then acks at once (one given up, or one sent again) acknowledges everything up to it
    (acks are cumulative): the deferred ack is not sent after it, where it would
    release nothing and cost the machine's pace a frame."""
    server, agent = ends
    agent.agent.server_features = frozenset({FEATURE_ACK})
    agent.agent.fold_seconds = 0.05
    first = Envelope.make("lab", "master", "m", "user.first", {"n": 1})
    server.run(lambda tx: jobs.enqueue(tx, {"id": server.machine_id}, first))
    poison = Envelope.make("lab", "master", "m", "user.deep", deep(100))
    server.run(lambda tx: jobs.enqueue(tx, {"id": server.machine_id}, poison))
    _, replay = server.connect(agent.state.processed, None)
    assert agent.receive(replay[0]) == []  # processed; its ack deferred
    text, seq = (replay[1], 2) if then == "poison" else (replay[0], 1)
    assert agent.receive(text) == [write_frame(Ack(seq=seq))]
    agent.run(asyncio.sleep(0.3))  # the deferred ack's time
    sent = [read_frame(f) for f in agent.take_sent()]
    assert [f for f in sent if isinstance(f, Ack)] == []
    assert server.receive(write_frame(Ack(seq=seq))) == []
    assert server.outbox_seqs() == ([] if then == "poison" else [2])
