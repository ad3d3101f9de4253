"""`crc agent emit` / `progress` / `kv set` are carried out exactly once, also when the agent is
killed (``kill -9``) after it stored the request and before its answer reached the
script: the request is sent again with its id and the restarted agent answers it from
its state (agent/control.py, ``ONCE_OPS``), with real agent processes."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import threading
import time
from typing import Any

import pytest

from cloudremotecontrol.agent.control import _short_path, call
from cloudremotecontrol.errors import Conflict


def _messages(env, type_):
    """The bodies of the messages TYPE the master got."""
    return [
        e["data"].get("body")
        for e in env.client.events("lab", types=("message",))
        if e["data"].get("type") == type_
    ]


def _wait_for(fn, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not (value := fn()):
        assert time.monotonic() < deadline, "not seen in time"
        time.sleep(0.1)
    return value


class KillBeforeAnswer:
    """Between the script and the agent (its control socket moved aside): passes the
    request on, and the agent's lines back - except its answer, which it keeps: it kills
    the agent (``kill -9``) instead, so the script gets no answer for a request the agent
    carried out. Then it goes away: the script finds no agent until it is started."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.path = agent.state_dir / "control.sock"
        self.real = agent.state_dir / "control-real.sock"
        os.rename(self.path, self.real)  # the agent's listening socket keeps working
        self.listener = socket.socket(socket.AF_UNIX)
        with _short_path(self.path) as short:
            self.listener.bind(short)
        self.listener.listen(1)
        self.passed: list[dict[str, Any]] = []  # the agent's lines passed on
        self.kept: dict[str, Any] | None = None  # its answer, never passed on
        self.thread = threading.Thread(target=self._relay, daemon=True)
        self.thread.start()

    def _relay(self) -> None:
        client, _ = self.listener.accept()
        with client, socket.socket(socket.AF_UNIX) as up:
            with _short_path(self.real) as short:
                up.connect(short)
            client_in = client.makefile("rb")
            up.sendall(client_in.readline())
            up_in = up.makefile("rb")
            while line := up_in.readline():
                said = json.loads(line)
                if "ok" in said:
                    self.kept = said
                    self.agent.kill()  # stored and answered, but never heard of
                    break
                self.passed.append(said)
                client.sendall(line)
            self.listener.close()
            self.path.unlink()
            self.real.unlink()

    def join(self) -> None:
        self.thread.join(30)


def test_an_emit_whose_agent_was_killed_before_its_answer_arrives_once(env):
    agents = env.group_with_agents("lab", ["a"])
    relay = KillBeforeAnswer(agents["a"])
    emit = subprocess.Popen(
        env.agent_argv("a", "emit", "user.step", '{"n": 1}'),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        relay.join()
        assert relay.kept == {"ok": True}, agents["a"].log()[-2000:]
        agents["a"].start()  # the service manager starts it again
        _out, err = emit.communicate(timeout=60)
    finally:
        emit.kill()
    assert emit.returncode == 0, err
    assert [list(p) for p in relay.passed] == [["once"]]
    assert _wait_for(lambda: _messages(env, "user.step")) == [{"n": 1}]
    # A second one would have arrived with the first (the outbox keeps the order).
    agents["a"].kill()
    agents["a"].start()
    assert env.agent_cli("a", "emit", "user.after").returncode == 0
    _wait_for(lambda: _messages(env, "user.after"))
    assert _messages(env, "user.step") == [{"n": 1}]


def test_a_request_id_seen_before_is_answered_without_doing_it_again(env):
    agents = env.group_with_agents("lab", ["a"])
    state = agents["a"].state_dir
    emit = {"op": "emit", "type": "user.dup", "body": {"n": 1}, "id": "e" * 24}
    progress = {"op": "progress", "text": "step 1", "id": "p" * 24}
    assert call(state, emit) == {"ok": True}
    assert call(state, progress) == {"ok": True}
    assert call(state, emit) == {"ok": True}  # the same agent
    agents["a"].kill()
    # Offline first: "ready" could otherwise still be the killed agent's connection, seen
    # before the server noticed it closed (and its control socket is left behind).
    env.wait_state("lab", ["a"], "offline")
    agents["a"].start()
    env.wait_state("lab", ["a"], "ready")
    assert call(state, emit) == {"ok": True}  # the next agent, after a kill -9
    assert call(state, progress) == {"ok": True}
    # Another id is another request.
    assert call(state, {**emit, "id": "f" * 24, "body": {"n": 2}}) == {"ok": True}
    assert _wait_for(lambda: len(_messages(env, "user.dup")) >= 2)
    assert _messages(env, "user.dup") == [{"n": 1}, {"n": 2}]
    texts = [e["data"]["text"] for e in env.client.events("lab", types=("progress",))]
    assert texts == ["step 1"]


def test_a_malformed_request_id_is_refused_clearly(env):
    agents = env.group_with_agents("lab", ["a"])
    for bad in ("short", "x" * 65, "a b" * 8, 12345678901234567890):
        try:
            call(agents["a"].state_dir, {"op": "emit", "type": "user.x", "id": bad})
        except Exception as exc:  # noqa: BLE001 -- checked below
            assert "request id" in str(exc) and getattr(exc, "code", "") == "invalid_input"
        else:
            raise AssertionError(f"id {bad!r} was taken")
    assert _messages(env, "user.x") == []


def test_a_kv_set_whose_agent_was_killed_before_its_answer_sets_one_version(env, crc):
    agents = env.group_with_agents("lab", ["a"])
    relay = KillBeforeAnswer(agents["a"])
    kv_set = subprocess.Popen(
        env.agent_argv("a", "kv", "set", "db/up", '"yes"', "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        relay.join()
        assert relay.kept == {"ok": True, "key": "db/up", "version": 1}, relay.kept
        agents["a"].start()
        out, err = kv_set.communicate(timeout=60)
    finally:
        kv_set.kill()
    assert kv_set.returncode == 0, err
    assert json.loads(out) == {"key": "db/up", "version": 1}
    r = crc("kv", "get", "lab", "db/up", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["version"] == 1, r.stdout


def _pretend_unanswered(agent, request_id, before):
    """As if an agent had started kv-set REQUEST_ID (the key at version BEFORE) and been
    killed before it knew how it ended."""
    agent.stop()
    db = sqlite3.connect(agent.state_dir / "agent.db")
    with db:
        db.execute(
            "INSERT INTO control_requests (id, reply, created, pending) VALUES (?, '{}', ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET pending = excluded.pending",
            (request_id, time.time(), json.dumps({"before": before})),
        )
    db.close()
    agent.start()


def test_a_kv_set_a_killed_agent_may_have_done_is_found_out_not_repeated(env, crc):
    agents = env.group_with_agents("lab", ["a"])
    state = agents["a"].state_dir
    put = {"op": "kv-set", "key": "k", "value": {"v": 1}, "id": "k" * 24}
    assert call(state, put)["version"] == 1
    # Written on the server, never recorded as done: the key says it was.
    _pretend_unanswered(agents["a"], put["id"], 0)
    env.wait_state("lab", ["a"], "ready")
    assert call(state, put) == {"ok": True, "key": "k", "version": 1}
    # Recorded as started, never written: written now.
    again = {**put, "id": "l" * 24, "value": {"v": 2}}
    _pretend_unanswered(agents["a"], again["id"], 1)
    env.wait_state("lab", ["a"], "ready")
    assert call(state, again) == {"ok": True, "key": "k", "version": 2}
    # Changed by someone else since: it cannot tell, and says so rather than write.
    third = {**put, "id": "m" * 24, "value": {"v": 3}}
    _pretend_unanswered(agents["a"], third["id"], 2)
    env.wait_state("lab", ["a"], "ready")
    assert crc("kv", "set", "lab", "k", '"master"').returncode == 0
    with pytest.raises(Conflict, match="may have been set by this request"):
        call(state, third)
    r = crc("kv", "get", "lab", "k", "--json")
    assert json.loads(r.stdout)["version"] == 3 and json.loads(r.stdout)["value"] == "master"
