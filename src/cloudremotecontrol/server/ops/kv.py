"""The group key/value store: small JSON values, versioned, for coordination between a
group's machines and its master (nobody else can read or write it).

Each key says who wrote it last: ``by`` is ``master`` or the writing machine's name, and
``user`` the master's user (None for a machine, and for a key the master wrote before
the server recorded it). Both, because a machine may be named as a user is."""

from __future__ import annotations

import json
from typing import Any

from ...errors import NotFound, TooLarge
from ...protocol.jsoncheck import check_json
from ...protocol.limits import MAX_KV_VALUE_BYTES
from ...protocol.names import check_kv_key
from ..store.base import Tx
from .common import add_event, audit, dumps, live_group, now

__all__ = ["MASTER", "MAX_KV_VALUE_BYTES", "kv_get", "kv_list", "kv_set", "master_kv_set"]

MAX_KEYS = 10_000
#: ``by`` of a key the master wrote (a machine's writes name the machine).
MASTER = "master"


def master_kv_set(
    tx: Tx, user: dict[str, Any], group_name: str, key: str, value: Any
) -> dict[str, Any]:
    """``kv_set`` by ``user`` (a master), in the audit record with the key and its new
    version, never the value: values may be secrets. A group whose TTL passed takes
    its owner's writes still: no machine of it can read them any more (all revoked),
    and the owner's own records (a `crc up`'s steps and lease) go on being kept."""
    group = live_group(tx, user["user_id"], group_name)
    out = kv_set(tx, str(group["id"]), key, value, MASTER, user["user"])
    audit(
        tx,
        user["user_id"],
        user["user"],
        "kv.set",
        group["name"],
        {"key": key, "version": out["version"]},
    )
    return out


def kv_set(
    tx: Tx, group_id: str, key: str, value: Any, actor: str, user: str | None = None
) -> dict[str, Any]:
    """Set ``key`` by ``actor`` (``MASTER`` with the ``user``'s name, or a machine's name
    without one)."""
    check_kv_key(key)
    check_json(value, max_bytes=MAX_KV_VALUE_BYTES, what="kv value", field="value")
    text = dumps(value)
    row = tx.one(
        "UPDATE kv SET value = ?, version = version + 1, updated = ?, updated_by = ?, "
        "updated_user = ? WHERE group_id = ? AND key = ? RETURNING version",
        (text, now(), actor, user, group_id, key),
    )
    if row is None:
        count = tx.one("SELECT COUNT(*) AS n FROM kv WHERE group_id = ?", (group_id,))
        if count and int(count["n"]) >= MAX_KEYS:
            raise TooLarge(f"the group has {MAX_KEYS} keys already")
        tx.execute(
            "INSERT INTO kv (group_id, key, value, version, updated, updated_by, updated_user) "
            "VALUES (?, ?, ?, 1, ?, ?, ?)",
            (group_id, key, text, now(), actor, user),
        )
        version = 1
    else:
        version = int(row["version"])
    add_event(tx, group_id, "kv.set", {"key": key, "version": version, "by": actor, "user": user})
    return {"key": key, "version": version}


def kv_get(tx: Tx, group_id: str, key: str) -> dict[str, Any]:
    check_kv_key(key)
    row = tx.one(
        "SELECT value, version, updated, updated_by, updated_user FROM kv "
        "WHERE group_id = ? AND key = ?",
        (group_id, key),
    )
    if row is None:
        raise NotFound(f"no key {key!r}")
    return {
        "key": key,
        "value": json.loads(row["value"]),
        "version": int(row["version"]),
        "updated": row["updated"],
        "by": row["updated_by"],
        "user": row["updated_user"],
    }


def kv_list(tx: Tx, group_id: str) -> list[dict[str, Any]]:
    rows = tx.all(
        "SELECT key, version, updated, updated_by, updated_user FROM kv "
        "WHERE group_id = ? ORDER BY key",
        (group_id,),
    )
    return [
        {
            "key": r["key"],
            "version": int(r["version"]),
            "updated": r["updated"],
            "by": r["updated_by"],
            "user": r["updated_user"],
        }
        for r in rows
    ]
