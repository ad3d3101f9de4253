"""Replicas' leases in the store (schema version 12): the streams of a replica whose
lease expired are closed as cut, once, by whichever replicas sweep, and those of a
replica that renews its lease never are; a database of version 11 is upgraded."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from store_fixtures import anyio_backend_fixture, db_url_fixture  # noqa: F401 -- fixtures

from cloudremotecontrol.server.ops import events, groups, sessions, users
from cloudremotecontrol.server.store import schema
from cloudremotecontrol.server.store.base import Store, Tx, open_store

pytestmark = pytest.mark.anyio

ALL = [v for v, _ in schema.MIGRATIONS]


def versions(tx: Tx) -> list[int]:
    return [int(r["version"]) for r in tx.all("SELECT version FROM schema_version ORDER BY 1")]


def closes(tx: Tx) -> int:
    row = tx.one("SELECT COUNT(*) AS n FROM audit WHERE action = 'stream.close'")
    return int(row["n"]) if row else 0


def age(tx: Tx, seconds: float) -> None:
    """Make every stream opened, and the lease of replica ``gone``, ``seconds`` old."""
    tx.execute("UPDATE open_streams SET created = created - ?", (seconds,))
    tx.execute("UPDATE replicas SET seen = seen - ? WHERE id = 'gone'", (seconds,))


async def lab(store: Store) -> tuple[dict[str, Any], str]:
    token = await store.write(users.create_user, "alice")
    user = await store.read(users.authenticate_master, token)
    await store.write(groups.create_group, user["user_id"], "lab", [{"name": "m"}])
    return user, (await store.read(events.group_cursor, user["user_id"], "lab"))["group_id"]


async def open_on(store: Store, user: dict[str, Any], gid: str, stream: str, replica: str) -> None:
    detail = {"kind": "shell", "stream": stream}
    await store.write(sessions.open_stream, user, "lab", gid, "m", detail, replica)


async def test_a_version_11_database_is_upgraded_and_cuts_only_dead_replicas_streams(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:11])
    old = open_store(db_url)
    await old.start()
    try:
        user, gid = await lab(old)
        assert await old.read(versions) == ALL[:11]
    finally:
        await old.close()
    monkeypatch.undo()
    store = open_store(db_url)
    await store.start()
    try:
        assert await store.read(versions) == ALL and 12 in ALL
        await store.write(sessions.renew_lease, "gone")
        await store.write(sessions.renew_lease, "here")
        await open_on(store, user, gid, "st_dead", "gone")
        await open_on(store, user, gid, "st_live", "here")
        await store.write(age, 3600.0)
        assert await store.write(sessions.cut_orphaned_streams) == 1
        assert await store.write(sessions.cut_orphaned_streams) == 0  # once
        listed = await store.read(sessions.list_sessions, user["user_id"], "lab")
        assert [(r["stream"], r["cut"]) for r in listed] == [("st_dead", True)], listed
        assert listed[0]["machine"] == "m" and listed[0]["recorded"] is False
        summary = {"kind": "shell", "stream": "st_live", "exit_code": 0}
        await store.write(sessions.close_stream, user, "lab", gid, "m", summary)
        assert await store.write(sessions.cut_orphaned_streams) == 0
        listed = await store.read(sessions.list_sessions, user["user_id"], "lab")
        assert [(r["stream"], r.get("cut")) for r in listed] == [
            ("st_dead", True),
            ("st_live", None),
        ], listed
    finally:
        await store.close()


async def test_two_replicas_sweeping_at_once_close_each_dead_stream_once(db_url: str) -> None:
    stores = [open_store(db_url), open_store(db_url)]
    for s in stores:
        await s.start()
    try:
        user, gid = await lab(stores[0])
        await stores[0].write(sessions.renew_lease, "gone")
        for i in range(20):
            await open_on(stores[i % 2], user, gid, f"st_{i:02d}", "gone")
        await stores[0].write(age, 3600.0)
        cut = await asyncio.gather(*(s.write(sessions.cut_orphaned_streams) for s in stores))
        assert sum(cut) == 20, cut
        assert await stores[1].read(closes) == 20
    finally:
        for s in stores:
            await s.close()


@pytest.mark.parametrize("recreated", [False, True], ids=["live", "re-created"])
async def test_a_cut_is_told_to_the_group_it_was_opened_in_not_a_new_one_of_that_name(
    db_url: str, recreated: bool
) -> None:
    store = open_store(db_url)
    await store.start()
    try:
        user, opened_in = await lab(store)
        await store.write(sessions.renew_lease, "gone")
        await open_on(store, user, opened_in, "st_dead", "gone")
        if recreated:  # the group deleted, and another made under its name
            await store.write(groups.delete_group, user["user_id"], "lab")
            await store.write(groups.create_group, user["user_id"], "lab", [{"name": "m"}])
        now_in = (await store.read(events.group_cursor, user["user_id"], "lab"))["group_id"]
        assert (now_in != opened_in) is recreated
        await store.write(age, 3600.0)
        assert await store.write(sessions.cut_orphaned_streams) == 1
        told = await store.read(events.events_after, now_in, 0, None, 1000, ("stream.closed",))
        if recreated:
            assert told == [], told
        else:
            assert [e["data"]["stream"] for e in told] == ["st_dead"], told
            assert told[0]["data"]["cut"] is True and "group_id" not in told[0]["data"], told
        # Listed either way (the audit goes by the group's name).
        listed = await store.read(sessions.list_sessions, user["user_id"], "lab")
        assert [(r["stream"], r["cut"]) for r in listed] == [("st_dead", True)], listed
        assert "group_id" not in listed[0], listed
    finally:
        await store.close()
