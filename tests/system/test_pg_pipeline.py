"""PostgreSQL's pipelined write batches (store/postgres.py, "Pipelined batches"): the
operations of one batch share a pipeline, yet each one still fails alone, and events
are numbered and made visible in order.

Each test holds the writer thread on a first operation while the others queue, so they
all run in the next batch (the writer takes everything waiting).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest

from batches import in_one_batch as one_batch
from cloudremotecontrol.errors import NotFound, Unavailable
from cloudremotecontrol.server.ops import events, groups, users
from cloudremotecontrol.server.ops.common import add_event
from cloudremotecontrol.server.store.base import Tx
from cloudremotecontrol.server.store.pg_tx import EVENT_LOCK_CLASS, group_key
from cloudremotecontrol.server.store.postgres import PostgresStore

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(pg_url)
    await s.start()
    assert s.pipelined  # psycopg's binary wheels bundle libpq >= 14
    yield s
    await s.close()


async def in_one_batch(store: PostgresStore, ops: list[Callable[[Tx], Any]]) -> list[Any]:
    """Run ``ops`` in one write batch; each op's result or exception, in order."""
    batches = store.batches
    results = await one_batch(store, [(op,) for op in ops])
    assert store.batches - batches <= 2  # "hold"'s batch, then theirs (not one each)
    return results


async def new_group(store: PostgresStore, name: str = "lab") -> tuple[dict[str, Any], str]:
    token = await store.write(users.create_user, "alice")
    alice = await store.read(users.authenticate_master, token)
    await store.write(groups.create_group, alice["user_id"], name, [{"name": "a"}])
    info = await store.read(events.group_cursor, alice["user_id"], name)
    return alice, str(info["group_id"])


async def event_types(store: PostgresStore, group_id: str) -> list[str]:
    return [e["type"] for e in await store.read(events.events_after, group_id, 0)]


async def test_a_statement_failing_in_a_pipelined_batch_fails_only_its_op(
    store: PostgresStore,
) -> None:
    _, gid = await new_group(store)

    def good(name: str) -> Callable[[Tx], str]:
        def op(tx: Tx) -> str:
            add_event(tx, gid, f"user.{name}", {})
            return name

        return op

    def bad(tx: Tx) -> str:
        add_event(tx, gid, "user.bad", {})
        # Sent without waiting: its error arrives with later statements' results.
        tx.send("UPDATE machines SET state = NULL WHERE group_id = ?", (gid,))
        return "bad"

    fallbacks = store.fallbacks
    results = await in_one_batch(store, [good("one"), bad, good("two")])
    assert results[0] == "one" and results[2] == "two"
    assert isinstance(results[1], psycopg.errors.NotNullViolation)
    assert store.fallbacks == fallbacks + 1  # run again one statement at a time
    assert (await event_types(store, gid))[-2:] == ["user.one", "user.two"]


async def test_an_op_raising_in_a_pipelined_batch_rolls_back_alone(store: PostgresStore) -> None:
    _, gid = await new_group(store)

    def good(tx: Tx) -> str:
        add_event(tx, gid, "user.good", {})
        tx.execute("UPDATE groups SET settings = ? WHERE id = ?", ('{"x": 1}', gid))
        return "good"

    def bad(tx: Tx) -> None:
        add_event(tx, gid, "user.bad", {})
        tx.execute("UPDATE groups SET settings = ? WHERE id = ?", ('{"x": 2}', gid))
        raise NotFound("no such thing")

    fallbacks, pipelined = store.fallbacks, store.pipelined_batches
    results = await in_one_batch(store, [good, bad, good])
    assert results[0] == results[2] == "good"
    assert isinstance(results[1], NotFound)
    assert store.fallbacks == fallbacks  # its own savepoint was enough
    assert store.pipelined_batches > pipelined
    types = await event_types(store, gid)
    assert "user.bad" not in types and types.count("user.good") == 2
    row = await store.read(lambda tx: tx.one("SELECT settings FROM groups WHERE id = ?", (gid,)))
    assert row is not None and row["settings"] == '{"x": 1}'


async def test_an_ops_own_savepoints_keep_or_drop_its_events(store: PostgresStore) -> None:
    _, gid = await new_group(store)

    def op(tx: Tx) -> int:
        add_event(tx, gid, "user.kept", {})
        tx.execute("SAVEPOINT inner_work")
        add_event(tx, gid, "user.dropped", {})
        tx.execute("ROLLBACK TO SAVEPOINT inner_work")
        tx.execute("RELEASE SAVEPOINT inner_work")
        tx.execute("SAVEPOINT inner_work")
        add_event(tx, gid, "user.released", {})
        tx.execute("RELEASE SAVEPOINT inner_work")
        return tx.execute("UPDATE machines SET progress = ? WHERE group_id = ?", ("{}", gid))

    assert await in_one_batch(store, [op]) == [1]  # a waited row count
    assert (await event_types(store, gid))[-2:] == ["user.kept", "user.released"]


async def test_a_pipelined_batch_waits_for_an_earlier_numbered_event(
    store: PostgresStore, pg_url: str
) -> None:
    """Another writer (a replica running one statement at a time) numbered an event and
    has not committed: this batch's events of the group, numbered after it, stay
    invisible until it has, so a follower never moves its cursor past it."""
    _, gid = await new_group(store)
    cursor = (await store.read(lambda tx: tx.one("SELECT MAX(id) AS c FROM events")) or {})["c"]
    with psycopg.connect(pg_url, autocommit=True) as other:
        with other.transaction():
            other.execute(
                "SELECT pg_advisory_xact_lock(%s::integer, %s::integer)",
                (EVENT_LOCK_CLASS, group_key(gid)),
            )
            other.execute(
                "INSERT INTO events (group_id, created, type, data) VALUES (%s, 0, %s, '{}')",
                (gid, "user.first"),
            )
            second = asyncio.ensure_future(
                store.write(lambda tx: add_event(tx, gid, "user.second", {}))
            )
            for _ in range(10):
                assert await store.read(events.events_after, gid, cursor) == []
                await asyncio.sleep(0.05)
            assert not second.done()
        await second
    seen = await store.read(events.events_after, gid, cursor)
    assert [e["type"] for e in seen] == ["user.first", "user.second"]
    assert seen[0]["cursor"] < seen[1]["cursor"]


async def test_events_of_many_ops_keep_their_order(store: PostgresStore) -> None:
    _, gid = await new_group(store)

    def op(i: int) -> Callable[[Tx], None]:
        def run(tx: Tx) -> None:
            add_event(tx, gid, f"user.e{i}", {"i": i})
            add_event(tx, gid, f"user.f{i}", {"i": i})

        return run

    await in_one_batch(store, [op(i) for i in range(20)])
    types = (await event_types(store, gid))[-40:]
    assert types == [t for i in range(20) for t in (f"user.e{i}", f"user.f{i}")]


async def test_a_failing_update_among_updates_sent_together_fails_only_its_op(
    store: PostgresStore,
) -> None:
    """Plain updates by id of consecutive ops go out as one statement (``Outgoing``): if
    one of them fails, the batch runs again one statement at a time, where only its op
    fails and the others' updates stand."""
    alice, _ = await new_group(store)
    await store.write(groups.create_group, alice["user_id"], "two", [{"name": "a"}, {"name": "b"}])
    gid = (await store.read(events.group_cursor, alice["user_id"], "two"))["group_id"]
    ids = [
        r["id"]
        for r in await store.read(
            lambda tx: tx.all("SELECT id FROM machines WHERE group_id = ? ORDER BY name", (gid,))
        )
    ]

    def put(machine_id: str, state: str | None) -> Callable[[Tx], str | None]:
        def op(tx: Tx) -> str | None:
            tx.send("UPDATE machines SET state = ? WHERE id = ?", (state, machine_id))
            return state

        return op

    fallbacks, sent = store.fallbacks, store.statements_sent
    results = await in_one_batch(
        store, [put(ids[0], "offline"), put(ids[1], None), put(ids[1], "ready")]
    )
    assert results[0] == "offline" and results[2] == "ready"
    assert isinstance(results[1], psycopg.errors.NotNullViolation)
    assert store.fallbacks == fallbacks + 1
    rows = await store.read(
        lambda tx: tx.all("SELECT state FROM machines WHERE group_id = ? ORDER BY name", (gid,))
    )
    assert [r["state"] for r in rows] == ["offline", "ready"]
    results = await in_one_batch(store, [put(ids[0], "ready"), put(ids[1], "offline")])
    assert results == ["ready", "offline"]
    assert store.statements_sent - sent <= 2  # the held op's batch sends none


async def test_events_inserted_together_keep_their_text_exactly(store: PostgresStore) -> None:
    """A batch's events go out as arrays (binary): quotes, backslashes, braces, commas,
    non-ASCII text and NULLs come back as they were."""
    _, gid = await new_group(store)
    texts = ['a "quoted" {x,y}', "back\\slash\\\\", "NULL", "", "é ☃ 𝄞", "tab\tnew\nline"]

    def op(text: str) -> Callable[[Tx], None]:
        def run(tx: Tx) -> None:
            add_event(tx, gid, "user.text", {"text": text}, machine=text or None)

        return run

    await in_one_batch(store, [op(t) for t in texts])
    seen = [e for e in await store.read(events.events_after, gid, 0) if e["type"] == "user.text"]
    assert [(e["data"]["text"], e["machine"]) for e in seen] == [(t, t or None) for t in texts]


async def test_a_statement_rolled_back_before_it_was_sent_is_never_sent(
    store: PostgresStore,
) -> None:
    """An op's statements wait in the batch until something must see them: a rollback to
    a savepoint still waiting drops what came after it unsent (its effects would be
    undone either way), so it cannot fail the op nor the batch."""
    _, gid = await new_group(store)

    def op(tx: Tx) -> str:
        tx.execute("SAVEPOINT inner_work")
        tx.send("UPDATE machines SET state = NULL WHERE group_id = ?", (gid,))
        add_event(tx, gid, "user.dropped", {})
        tx.execute("ROLLBACK TO SAVEPOINT inner_work")
        tx.execute("RELEASE SAVEPOINT inner_work")
        add_event(tx, gid, "user.kept", {})
        return "ok"

    fallbacks, sent = store.fallbacks, store.statements_sent
    assert await in_one_batch(store, [op]) == ["ok"]
    assert store.fallbacks == fallbacks
    assert store.statements_sent == sent  # nothing of it went out but its event
    types = await event_types(store, gid)
    assert "user.dropped" not in types and types[-1] == "user.kept"


async def test_a_fault_in_a_pipelined_batch_runs_its_ops_one_by_one(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault of the store's own code in a pipelined batch (not a database error, not
    an op's: the read-ahead failing to encode a hostile id, say) rolls it back and runs
    its ops one by one, each answered its own outcome."""
    from cloudremotecontrol.server.store import postgres

    real = postgres.read_ahead
    faults = []

    def fault_once(*args: Any, **kw: Any) -> Any:
        if not faults:
            faults.append(1)
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
        return real(*args, **kw)

    monkeypatch.setattr(postgres, "read_ahead", fault_once)
    fallbacks = store.fallbacks
    token = await asyncio.wait_for(store.write(users.create_user, "alice"), 10)
    assert faults == [1] and store.fallbacks == fallbacks + 1
    assert (await store.read(users.authenticate_master, token))["user_id"]


async def test_a_fault_outside_any_batch_fails_its_ops_and_the_writer_goes_on(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last resort: a fault the batch could not handle fails that batch's ops with
    503, and the one writer thread goes on (else every later write of every user would
    wait for ever)."""
    real = store._run_batch
    faults = []

    def fault_once(batch: Any) -> Any:
        if not faults:
            faults.append(len(batch))
            raise RuntimeError("a fault of the store")
        return real(batch)

    monkeypatch.setattr(store, "_run_batch", fault_once)
    with pytest.raises(Unavailable, match="failed to store this"):
        await asyncio.wait_for(store.write(users.create_user, "alice"), 10)
    assert faults == [1]
    token = await asyncio.wait_for(store.write(users.create_user, "bob"), 10)
    assert (await store.read(users.authenticate_master, token))["user_id"]
