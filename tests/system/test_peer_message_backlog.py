"""A machine's `user.*` messages to its peers are bounded: once a peer holds
MAX_PENDING_PEER_MESSAGES it has not acknowledged, a machine's message to it alone is
refused (an error frame naming it, an agent.error event) and nothing is stored; to
several, the others get it (and the event names the one left out); the master's
messages are never refused. Once the peer reads its messages, machines may send to it again.
On SQLite and PostgreSQL (its outbox row cache must see the same rows)."""

from __future__ import annotations

import asyncio

from wire_helpers import assert_no_traceback_in_server_log, enroll, pinned_http, wire_agent

from cloudremotecontrol.protocol.limits import MAX_PENDING_PEER_MESSAGES


def test_a_machine_cannot_pile_up_messages_for_a_peer_that_does_not_read(db_env):
    env = db_env
    keys = {
        m["name"]: m["key"] for m in env.client.create_group("lab", ["a", "b", "c"])["machines"]
    }
    with pinned_http(env.server) as http:
        creds = {name: enroll(http, key) for name, key in keys.items()}

    async def flood() -> None:
        async with wire_agent(env.server, creds["a"], "lab", "a") as a:
            # c never connects: its outbox fills up to the bound, each one acknowledged.
            for n in range(MAX_PENDING_PEER_MESSAGES):
                assert [f["type"] for f in await a.send_msg("user.hi", {"n": n}, to="c")] == ["ack"]
            # One more to c alone: refused, naming c, nothing stored.
            frames = await a.send_msg("user.hi", {"n": "over"}, to="c")
            assert [f["type"] for f in frames] == ["error", "ack"], frames
            error = frames[0]["error"]
            assert error["code"] == "too_many_pending", error
            assert "(c)" in error["message"], error
            # To all: c, which does not read, keeps no other from getting it (an
            # agent.error event names c).
            frames = await a.send_msg("user.hi", {"n": "all"}, to="all")
            assert sorted(f["type"] for f in frames) == ["ack", "msg"], frames  # a is one
            assert [f["msg"]["body"] for f in frames if f["type"] == "msg"] == [{"n": "all"}]
            # A peer that reads is not affected.
            assert [f["type"] for f in await a.send_msg("user.hi", {"n": "b"}, to="b")] == ["ack"]

    asyncio.run(flood())
    # The master is trusted: its message is queued whatever c holds.
    assert env.client.send_message("lab", "c", "user.from-master", {})["targets"] == ["c"]

    async def drain() -> None:
        async with wire_agent(env.server, creds["b"], "lab", "b") as b:
            assert (await b.next_msg())["body"] == {"n": "all"}
            assert (await b.next_msg())["body"] == {"n": "b"}
        async with wire_agent(env.server, creds["c"], "lab", "c") as c:
            got = [(await c.next_msg())["body"] for _ in range(MAX_PENDING_PEER_MESSAGES + 1)]
            assert got == [{"n": n} for n in range(MAX_PENDING_PEER_MESSAGES)] + [{}]
            async with wire_agent(env.server, creds["a"], "lab", "a") as a:
                assert (await a.next_msg())["body"] == {"n": "all"}  # its own, not acked
                # c read its messages: a may send to it again.
                assert [f["type"] for f in await a.send_msg("user.hi", {"n": "again"}, to="c")] == [
                    "ack"
                ]
            assert (await c.next_msg())["body"] == {"n": "again"}

    asyncio.run(drain())
    errors = [e for e in env.client.events("lab") if e["type"] == "agent.error"]
    assert [(e["machine"], e["data"]["code"]) for e in errors] == [("a", "too_many_pending")] * 2
    assert errors[1]["data"]["message"].startswith("not sent to c: 1 target(s) (c) hold "), errors
    assert_no_traceback_in_server_log(env.server)
