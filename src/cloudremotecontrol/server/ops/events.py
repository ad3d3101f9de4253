"""Reading the event stream of a group (resumable by cursor) and the audit record."""

from __future__ import annotations

from typing import Any

from ...protocol.names import audit_actions as checked_audit_actions
from ..store.base import Tx
from .common import json_text, live_group, loads

__all__ = [
    "LAST_CURSOR",
    "audit_actions",
    "audit_records",
    "event_json",
    "event_view",
    "events_after",
    "events_json_after",
    "group_cursor",
    "job_rows_before",
]


#: What an event's view holds (``SELECT *`` would read ``group_id`` too, per event).
_COLUMNS = "id, created, type, machine, job_id, data"
LAST_CURSOR = 2**63 - 2  # above every event id (64-bit integers in both databases)


def event_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "cursor": int(row["id"]),
        "time": row["created"],
        "type": row["type"],
        "machine": row["machine"],
        "job_id": row["job_id"],
        "data": loads(row["data"]),
    }


def event_json(row: dict[str, Any]) -> str:
    """``event_view(row)`` as JSON text, without decoding and encoding ``data`` again:
    the column holds JSON this server wrote (``common.dumps``). The event streams send
    thousands of these per job, so the saving is worth the second spelling."""
    enc = json_text
    return (
        f'{{"cursor":{int(row["id"])},"time":{enc(row["created"])},"type":{enc(row["type"])},'
        f'"machine":{enc(row["machine"])},"job_id":{enc(row["job_id"])},'
        f'"data":{row["data"] or "null"}}}'
    )


def group_cursor(tx: Tx, user_id: str, group_name: str) -> dict[str, Any]:
    """The group's id and the cursor of its latest event (to follow from now on)."""
    group = live_group(tx, user_id, group_name)
    row = tx.one("SELECT MAX(id) AS c FROM events WHERE group_id = ?", (group["id"],))
    return {"group_id": group["id"], "cursor": int(row["c"] or 0) if row else 0}


def events_after(
    tx: Tx,
    group_id: str,
    cursor: int,
    job_id: str | None = None,
    limit: int = 1000,
    types: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """The events after ``cursor`` (of one job, or of the group), oldest first; with
    ``types``, only events of those types."""
    return [event_view(r) for r in _rows_after(tx, group_id, cursor, job_id, limit, types)]


def events_json_after(
    tx: Tx,
    group_id: str,
    cursor: int,
    job_id: str | None = None,
    limit: int = 1000,
    types: tuple[str, ...] = (),
) -> list[tuple[int, str, str]]:
    """``events_after`` as ``(cursor, type, JSON text)`` (see ``event_json``)."""
    return [
        (int(r["id"]), r["type"], event_json(r))
        for r in _rows_after(tx, group_id, cursor, job_id, limit, types)
    ]


def job_rows_before(
    tx: Tx, group_id: str, job_id: str, before: int | None, limit: int
) -> list[dict[str, Any]]:
    """The job's events before cursor ``before`` (None: its latest), newest first, as
    stored rows: ``data`` is the JSON text (its length is what the reader counts;
    ``event_view`` decodes it). Read back from the end a batch at a time: the next
    ``before`` is the last row's ``id``."""
    return tx.all(
        # Only the column list is formatted in.
        f"SELECT {_COLUMNS} FROM events "  # noqa: S608
        "WHERE job_id = ? AND group_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
        (job_id, group_id, LAST_CURSOR + 1 if before is None else before, limit),
    )


def _rows_after(
    tx: Tx,
    group_id: str,
    cursor: int,
    job_id: str | None,
    limit: int,
    types: tuple[str, ...],
) -> list[dict[str, Any]]:
    if types:
        marks = ", ".join("?" for _ in types)
        rows = tx.all(
            # Only "?" placeholders and the column list are formatted in.
            f"SELECT {_COLUMNS} FROM events WHERE group_id = ? AND id > ? "  # noqa: S608
            f"AND type IN ({marks}) ORDER BY id LIMIT ?",
            (group_id, cursor, *types, limit),
        )
        if job_id:
            rows = [r for r in rows if r["job_id"] == job_id]
    elif job_id:
        rows = tx.all(
            f"SELECT {_COLUMNS} FROM events "  # noqa: S608
            "WHERE job_id = ? AND id > ? ORDER BY id LIMIT ?",
            (job_id, cursor, limit),
        )
    else:
        rows = tx.all(
            f"SELECT {_COLUMNS} FROM events "  # noqa: S608
            "WHERE group_id = ? AND id > ? ORDER BY id LIMIT ?",
            (group_id, cursor, limit),
        )
    return rows


def group_deleted(tx: Tx, group_id: str) -> bool:
    row = tx.one("SELECT deleted FROM groups WHERE id = ?", (group_id,))
    return row is None or row["deleted"] is not None


def audit_actions(text: str | None) -> tuple[str, ...]:
    """The actions of an ``action`` parameter (a comma list), without repeats;
    InvalidInput (400) for an empty, overlong or malformed one (``names.audit_actions``,
    as the SDK checks them)."""
    if text is None:
        return ()
    return tuple(checked_audit_actions(text.split(",")))


def _like(prefix: str) -> str:
    """A LIKE pattern for actions starting with ``prefix`` (``_`` escaped with ``!``)."""
    return prefix.replace("!", "!!").replace("_", "!_").replace("%", "!%") + "%"


def audit_records(
    tx: Tx,
    user_id: str,
    group: str | None,
    limit: int = 1000,
    actions: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """The caller's latest ``limit`` audit records, newest last: who did what, where,
    when. With ``actions`` (checked by ``audit_actions``), only the records whose action
    is one of them, or starts with one ending in a dot (``kv.``)."""
    where = "user_id = ?"
    params: list[Any] = [user_id]
    if group:
        where += " AND group_name = ?"
        params.append(group)
    if actions:
        exact = [a for a in actions if not a.endswith(".")]
        terms = ["action IN (" + ", ".join("?" for _ in exact) + ")"] if exact else []
        terms += ["action LIKE ? ESCAPE '!'" for a in actions if a.endswith(".")]
        where += " AND (" + " OR ".join(terms) + ")"
        params += exact + [_like(a) for a in actions if a.endswith(".")]
    rows = tx.all(
        # Only fixed clauses and "?" placeholders are formatted in.
        f"SELECT * FROM audit WHERE {where} ORDER BY id DESC LIMIT ?",  # noqa: S608
        (*params, limit),
    )
    return [
        {
            "id": int(r["id"]),
            "time": r["created"],
            "actor": r["actor"],
            "action": r["action"],
            "group": r["group_name"],
            "detail": loads(r["detail"]),
        }
        for r in reversed(rows)
    ]
