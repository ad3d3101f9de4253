"""An enrollment whose answer was lost (the agent killed before it saved its credential,
or the answer lost on the network) can be repeated by the same agent: the same key
with the nonce kept in its state directory gets a new credential, while the machine has
not connected yet and the key is still valid. Anyone else still hears "already used"."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
from wire_helpers import assert_error, assert_no_traceback_in_server_log, bearer, pinned_http

from cloudremotecontrol.agent.state import AgentState
from conftest import Env


def agent_nonce(state_dir: Path) -> str:
    """The nonce the agent keeps in this state dir (made now, as `crc agent run` would)."""
    state = AgentState(state_dir)
    try:
        return state.enroll_nonce()
    finally:
        state.db.close()


def post_enroll(http: httpx.Client, key: str, nonce: str | None) -> httpx.Response:
    body = {"key": key} if nonce is None else {"key": key, "nonce": nonce}
    return http.post("/v1/agent/enroll", json=body)


def test_an_enroll_answer_lost_is_repeated_by_the_agent(db_env: Env) -> None:
    env = db_env
    key = env.client.create_group("lab", ["a"])["machines"][0]["key"]
    state_dir = env.tmp / "agents" / "a"
    nonce = agent_nonce(state_dir)
    assert agent_nonce(state_dir) == nonce  # kept: the same on every start
    with pinned_http(env.server) as http:
        # The server commits, the answer never reaches the agent.
        first = post_enroll(http, key, nonce)
        assert first.status_code == 200, first.text
        lost = first.json()["credential"]
        assert env.client.group("lab")["machines"][0]["state"] == "enrolled"
        # Whoever has the key but not this agent's nonce gets nothing.
        for other in (None, "x" * 43, nonce[:-1] + ("A" if nonce[-1] != "A" else "B")):
            assert_error(post_enroll(http, key, other), 401, "key_rejected", "already used")
        # The agent starts again with the same state dir and key: it gets a credential.
        agent = env.agent("a", key)
        env.wait_state("lab", ["a"], "ready")
        assert agent.alive()
        # The agent got the credential whose answer was lost: the same one again.
        saved = json.loads((state_dir / "credential.json").read_text())["credential"]
        assert saved == lost
        r = http.get("/v1/agent/whoami", headers={"Authorization": bearer(lost)})
        assert r.json() == {"machine": "a", "group": "lab", "kind": "machine"}
        # Once the machine connected, the same key and nonce are worthless.
        assert_error(post_enroll(http, key, nonce), 401, "key_rejected", "already used")
        # The agent kept its own credential: a restart connects without the key.
        agent.stop()
        env.wait_state("lab", ["a"], "offline")
        env.agent("a", None)
        env.wait_state("lab", ["a"], "ready")
    logs = env.server.log_path.read_text(errors="replace") + "".join(a.log() for a in env.agents)
    assert nonce not in logs
    assert_no_traceback_in_server_log(env.server)


def test_a_repeat_answers_the_same_credential_and_is_bounded_by_the_key_validity(
    env: Env,
) -> None:
    keys = {
        m["name"]: m
        for m in env.client.create_group("lab", ["a"], key_ttl=2)["machines"]
        + env.client.create_group("later", ["b"])["machines"]
    }
    nonce = agent_nonce(env.tmp / "state-a")
    with pinned_http(env.server) as http:
        creds = []
        for _ in range(3):  # each answer lost again: each repeat answers the same
            r = post_enroll(http, keys["a"]["key"], nonce)
            assert r.status_code == 200, r.text
            creds.append(r.json()["credential"])
        assert len(set(creds)) == 1, creds
        r = http.get("/v1/agent/whoami", headers={"Authorization": bearer(creds[0])})
        assert r.json() == {"machine": "a", "group": "lab", "kind": "machine"}
        # Past the key's validity, no repeat.
        time.sleep(max(0.0, keys["a"]["key_expires"] + 0.2 - time.time()))  # same clock
        assert_error(post_enroll(http, keys["a"]["key"], nonce), 401, "key_rejected", "expired")
        # The nonce is hostile input: checked before anything else looks at it.
        for bad in ("short", "x" * 65, "a" * 40 + "/..", "é" * 40, 5):
            r = http.post("/v1/agent/enroll", json={"key": keys["b"]["key"], "nonce": bad})
            assert_error(r, 400, "invalid_input", "nonce")
        # An agent of a version without the nonce enrolls as before, once.
        r = post_enroll(http, keys["b"]["key"], None)
        assert r.status_code == 200, r.text
        assert_error(post_enroll(http, keys["b"]["key"], None), 401, "key_rejected", "used")
        assert_error(post_enroll(http, keys["b"]["key"], nonce), 401, "key_rejected", "used")
    assert_no_traceback_in_server_log(env.server)


def test_a_repeat_works_after_a_server_restart_made_the_machine_offline(env: Env) -> None:
    key = env.client.create_group("lab", ["a"])["machines"][0]["key"]
    nonce = agent_nonce(env.tmp / "agents" / "a")
    with pinned_http(env.server) as http:
        assert post_enroll(http, key, nonce).status_code == 200
    env.server.stop()  # a restarted server marks the machines it knew connected offline
    env.server.start()
    env.wait_state("lab", ["a"], "offline")
    env.agent("a", key)
    env.wait_state("lab", ["a"], "ready")
