"""Helpers shared by the operations: JSON columns, events, audit, lookups."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii
from typing import Any

from ...errors import NotFound
from ...protocol.names import group_expired, scenario_of
from ..store.base import Tx

__all__ = [
    "add_event",
    "add_events",
    "audit",
    "dumps",
    "json_text",
    "live_group",
    "loads",
    "now",
]


def now() -> float:
    return time.time()


#: ``json.dumps(value, separators=(",", ":"))`` builds an encoder per call; the
#: operations encode several values per message a machine sends.
_ENCODER = json.JSONEncoder(separators=(",", ":"))
_string: Callable[[str], str] = encode_basestring_ascii


def dumps(value: Any) -> str:
    """``value`` as compact JSON (``json.dumps(value, separators=(",", ":"))``)."""
    return _ENCODER.encode(value)


def json_text(value: str | int | float | None) -> str:
    """A JSON scalar as ``dumps`` writes it, without the encoder's machinery (the event
    streams and the fan-out write several per target)."""
    if isinstance(value, str):
        return _string(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float) and math.isfinite(value):
        return float.__repr__(value)
    return dumps(value)


def loads(text: str | None) -> Any:
    return json.loads(text) if text else None


def add_event(
    tx: Tx,
    group_id: str,
    type: str,
    data: dict[str, Any],
    machine: str | None = None,
    job_id: str | None = None,
) -> None:
    tx.notify(group_id)  # first: it orders the group's event writers (see Tx.notify)
    tx.execute(
        "INSERT INTO events (group_id, created, type, machine, job_id, data) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (group_id, now(), type, machine, job_id, dumps(data)),
    )


def add_events(
    tx: Tx,
    group_id: str,
    events: list[tuple[str, dict[str, Any] | str]],
    machine: str | None = None,
    job_id: str | None = None,
) -> None:
    """``add_event`` for each ``(type, data)`` of ``events``, in order, in one statement
    (``data`` a dict, or the JSON text of one)."""
    if not events:
        return
    tx.notify(group_id)  # first: it orders the group's event writers (see Tx.notify)
    t = now()
    tx.executemany(
        "INSERT INTO events (group_id, created, type, machine, job_id, data) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [
            (group_id, t, kind, machine, job_id, data if isinstance(data, str) else dumps(data))
            for kind, data in events
        ],
    )


def audit(
    tx: Tx, user_id: str | None, actor: str, action: str, group: str | None, detail: dict[str, Any]
) -> None:
    tx.execute(
        "INSERT INTO audit (created, user_id, actor, action, group_name, detail) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (now(), user_id, actor, action, group, dumps(detail)),
    )


def live_group(tx: Tx, user_id: str, name: str) -> dict[str, Any]:
    """The user's group called ``name``; NotFound for missing, deleted or another user's."""
    row = tx.one(
        "SELECT * FROM groups WHERE user_id = ? AND name = ? AND deleted IS NULL", (user_id, name)
    )
    if row is None:
        raise NotFound(f"no group {name!r}: see `crc group list`", field="group")
    return row


def check_not_expired(group: dict[str, Any]) -> None:
    """Refuse to command a group whose TTL has expired: its machines are revoked, and
    it stays listed (expired) until its owner runs `crc down` or deletes it."""
    settings = loads(group.get("settings")) or {}
    if settings.get("expired"):
        raise group_expired(group["name"], scenario_of(settings))
