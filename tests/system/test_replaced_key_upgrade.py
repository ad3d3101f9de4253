"""The replaced enrollment keys (schema version 19): a database of version 18 is
upgraded on SQLite and on PostgreSQL. A key replaced before the upgrade left nothing
behind ("rejected", as before); one replaced after it is "replaced by a newer key" to
whoever holds it, "rejected" for its id with another secret."""

from __future__ import annotations

from typing import Any

import pytest
from store_fixtures import anyio_backend_fixture, db_url_fixture  # noqa: F401 -- fixtures

from cloudremotecontrol.errors import KeyRejected
from cloudremotecontrol.protocol.tokens import new_secret
from cloudremotecontrol.server.ops import enrollment, groups, keys, users
from cloudremotecontrol.server.store import schema
from cloudremotecontrol.server.store.base import Store, Tx, open_store

pytestmark = pytest.mark.anyio

ALL = [v for v, _ in schema.MIGRATIONS]


def versions(tx: Tx) -> list[int]:
    return [int(r["version"]) for r in tx.all("SELECT version FROM schema_version ORDER BY 1")]


async def refusal(store: Store, key: str) -> str:
    with pytest.raises(KeyRejected) as caught:
        await store.write(enrollment.enroll, key, "127.0.0.1")
    return caught.value.message


async def test_a_version_18_database_is_upgraded_and_then_keeps_replaced_keys(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:18])
    old = open_store(db_url)
    await old.start()
    try:
        token = await old.write(users.create_user, "alice")
        user: dict[str, Any] = await old.read(users.authenticate_master, token)
        made = await old.write(groups.create_group, user["user_id"], "lab", [{"name": "a"}])
        before = made["machines"][0]["key"]

        def old_reissue(tx: Tx) -> None:  # as a server of version 18 replaced a key
            key = new_secret("k")
            tx.execute(
                "UPDATE machines SET key_id = ?, key_hash = ? WHERE name = ?",
                (key.id, key.hash, "a"),
            )

        await old.write(old_reissue)
        assert await old.read(versions) == ALL[:18]
    finally:
        await old.close()
    monkeypatch.undo()
    store = open_store(db_url)
    await store.start()
    try:
        assert await store.read(versions) == ALL and 19 in ALL
        said = await refusal(store, before)  # nothing kept of it: "rejected"
        assert said.startswith("enrollment key rejected") and "replaced" not in said, said
        current = (await store.write(keys.reissue_key, user["user_id"], "lab", "a"))["key"]
        await store.write(keys.reissue_key, user["user_id"], "lab", "a")
        said = await refusal(store, current)
        assert said.startswith("enrollment key replaced by a newer key"), said
        assert "`crc bootstrap lab a`" in said, said
        wrong = current[:-1] + ("A" if current[-1] != "A" else "B")
        said = await refusal(store, wrong)
        assert said.startswith("enrollment key rejected") and "replaced" not in said, said
    finally:
        await store.close()
