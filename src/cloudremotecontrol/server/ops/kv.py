"""The group key/value store: small JSON values, versioned, for coordination between a
group's machines and its master (nobody else can read or write it)."""

from __future__ import annotations

import json
from typing import Any

from ...errors import NotFound, TooLarge
from ...protocol.jsoncheck import check_json
from ...protocol.names import check_kv_key
from ..store.base import Tx
from .common import add_event, dumps, now

__all__ = ["MAX_KV_VALUE_BYTES", "kv_get", "kv_list", "kv_set"]

MAX_KV_VALUE_BYTES = 64 << 10
MAX_KEYS = 10_000


def kv_set(tx: Tx, group_id: str, key: str, value: Any, actor: str) -> dict[str, Any]:
    check_kv_key(key)
    check_json(value, max_bytes=MAX_KV_VALUE_BYTES, what="kv value", field="value")
    text = dumps(value)
    row = tx.one(
        "UPDATE kv SET value = ?, version = version + 1, updated = ?, updated_by = ? "
        "WHERE group_id = ? AND key = ? RETURNING version",
        (text, now(), actor, group_id, key),
    )
    if row is None:
        count = tx.one("SELECT COUNT(*) AS n FROM kv WHERE group_id = ?", (group_id,))
        if count and int(count["n"]) >= MAX_KEYS:
            raise TooLarge(f"the group has {MAX_KEYS} keys already")
        tx.execute(
            "INSERT INTO kv (group_id, key, value, version, updated, updated_by) "
            "VALUES (?, ?, ?, 1, ?, ?)",
            (group_id, key, text, now(), actor),
        )
        version = 1
    else:
        version = int(row["version"])
    add_event(tx, group_id, "kv.set", {"key": key, "version": version, "by": actor})
    return {"key": key, "version": version}


def kv_get(tx: Tx, group_id: str, key: str) -> dict[str, Any]:
    check_kv_key(key)
    row = tx.one(
        "SELECT value, version, updated, updated_by FROM kv WHERE group_id = ? AND key = ?",
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
    }


def kv_list(tx: Tx, group_id: str) -> list[dict[str, Any]]:
    rows = tx.all(
        "SELECT key, version, updated, updated_by FROM kv WHERE group_id = ? ORDER BY key",
        (group_id,),
    )
    return [
        {
            "key": r["key"],
            "version": int(r["version"]),
            "updated": r["updated"],
            "by": r["updated_by"],
        }
        for r in rows
    ]
