"""Who wrote a key of the group's store (schema version 17): the master's writes name the
user who made them, beside ``by`` ("master" or the machine's name), in the key, its
``kv.set`` event and the audit record (with the key and version, never the value). A
database of version 16 is upgraded, on SQLite and on PostgreSQL, its keys kept."""

from __future__ import annotations

from typing import Any

import pytest
from store_fixtures import anyio_backend_fixture, db_url_fixture  # noqa: F401 -- fixtures

from cloudremotecontrol.errors import NotFound
from cloudremotecontrol.server.ops import events, groups, kv, users
from cloudremotecontrol.server.store import schema
from cloudremotecontrol.server.store.base import Store, Tx, open_store

pytestmark = pytest.mark.anyio

ALL = [v for v, _ in schema.MIGRATIONS]
SECRET = {"password": "hunter2"}


def versions(tx: Tx) -> list[int]:
    return [int(r["version"]) for r in tx.all("SELECT version FROM schema_version ORDER BY 1")]


def kv_events(tx: Tx, group_id: str) -> list[dict[str, Any]]:
    return [e["data"] for e in events.events_after(tx, group_id, 0) if e["type"] == "kv.set"]


async def lab(store: Store) -> tuple[dict[str, Any], str]:
    token = await store.write(users.create_user, "alice")
    user = await store.read(users.authenticate_master, token)
    # A machine named as the user is: ``by`` alone could not tell the two apart.
    await store.write(groups.create_group, user["user_id"], "lab", [{"name": "alice"}])
    return user, (await store.read(events.group_cursor, user["user_id"], "lab"))["group_id"]


async def test_a_version_16_database_is_upgraded_and_keys_then_name_the_user_who_wrote_them(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:16])
    old = open_store(db_url)
    await old.start()
    try:
        user, gid = await lab(old)
        assert await old.read(versions) == ALL[:16]

        def old_write(tx: Tx, key: str, by: str) -> None:  # as a server of version 16 did
            tx.execute(
                "INSERT INTO kv (group_id, key, value, version, updated, updated_by) "
                "VALUES (?, ?, '1', 1, 0, ?)",
                (gid, key, by),
            )

        await old.write(old_write, "old/master", "master")
        await old.write(old_write, "old/machine", "alice")
    finally:
        await old.close()
    monkeypatch.undo()
    store = open_store(db_url)
    await store.start()
    try:
        assert await store.read(versions) == ALL and 17 in ALL
        # Kept, with no user: nobody recorded which user wrote them.
        item = await store.read(kv.kv_get, gid, "old/master")
        assert (item["value"], item["by"], item["user"]) == (1, "master", None), item
        await store.write(kv.master_kv_set, user, "lab", "db/secret", SECRET)
        await store.write(kv.kv_set, gid, "db/up", True, "alice")  # the machine "alice"
        item = await store.read(kv.kv_get, gid, "db/secret")
        assert (item["by"], item["user"], item["version"]) == ("master", "alice", 1), item
        item = await store.read(kv.kv_get, gid, "db/up")
        assert (item["by"], item["user"]) == ("alice", None), item
        listed = {k["key"]: (k["by"], k["user"]) for k in await store.read(kv.kv_list, gid)}
        assert listed == {
            "db/secret": ("master", "alice"),
            "db/up": ("alice", None),
            "old/machine": ("alice", None),
            "old/master": ("master", None),
        }
        # A machine writing over the master's key: no user any more.
        await store.write(kv.master_kv_set, user, "lab", "db/up", False)
        item = await store.read(kv.kv_get, gid, "db/up")
        assert (item["by"], item["user"], item["version"]) == ("master", "alice", 2), item
        await store.write(kv.kv_set, gid, "db/up", True, "alice")
        item = await store.read(kv.kv_get, gid, "db/up")
        assert (item["by"], item["user"], item["version"]) == ("alice", None, 3), item
        assert await store.read(kv_events, gid) == [
            {"key": "db/secret", "version": 1, "by": "master", "user": "alice"},
            {"key": "db/up", "version": 1, "by": "alice", "user": None},
            {"key": "db/up", "version": 2, "by": "master", "user": "alice"},
            {"key": "db/up", "version": 3, "by": "alice", "user": None},
        ]
        # The audit: the master's writes, by the user, with key and version only.
        records = await store.read(events.audit_records, user["user_id"], "lab")
        sets = [(r["actor"], r["group"], r["detail"]) for r in records if r["action"] == "kv.set"]
        assert sets == [
            ("alice", "lab", {"key": "db/secret", "version": 1}),
            ("alice", "lab", {"key": "db/up", "version": 2}),
        ], records
        assert "hunter2" not in repr(records)
    finally:
        await store.close()


async def test_a_master_write_to_a_group_not_its_own_is_refused_and_not_audited(
    db_url: str,
) -> None:
    store = open_store(db_url)
    await store.start()
    try:
        user, gid = await lab(store)
        token = await store.write(users.create_user, "bob")
        bob = await store.read(users.authenticate_master, token)
        with pytest.raises(NotFound, match="no group 'lab'"):
            await store.write(kv.master_kv_set, bob, "lab", "k", 1)
        with pytest.raises(NotFound, match="no key"):
            await store.read(kv.kv_get, gid, "k")
        for who in (user, bob):
            records = await store.read(events.audit_records, who["user_id"], None)
            assert [r for r in records if r["action"] == "kv.set"] == []
    finally:
        await store.close()
