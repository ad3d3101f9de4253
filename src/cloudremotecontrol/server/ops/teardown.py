"""Opt-in teardown at the provider when a group's TTL passes: the rows, without I/O.

A master that opts in (``on_ttl: destroy`` in a scenario) hands the server its provider
API key for the group; the key is stored encrypted (``server/teardown.py`` holds the
cipher and talks to the provider) and dropped as soon as the machines are gone or the
group is deleted. Statuses: ``armed`` (waiting for the TTL), ``running`` (claimed by one
replica until ``claimed_until``), ``retry`` (failed, tried again at ``next_try``),
``done``. Several replicas may run the expiry loop: a claim is one conditional UPDATE.
"""

from __future__ import annotations

from typing import Any

from ...errors import Conflict, InvalidInput
from ..store.base import Tx
from .common import add_event, audit, dumps, live_group, loads, now

__all__ = [
    "arm_teardown",
    "claim_teardowns",
    "disarm_teardown",
    "due_teardowns",
    "finish_teardown",
    "release_claims",
    "teardown_view",
]

CLAIM_SECONDS = 600.0  # a replica that died mid-teardown is taken over after this
MAX_BACKOFF = 3600.0


def arm_teardown(
    tx: Tx, user_id: str, group_name: str, provider: str, secret: str
) -> dict[str, Any]:
    """Store (or replace) the group's teardown; ``secret`` is already encrypted and
    ``provider`` one the server can tear down (checked where the request is read:
    api_teardown.py)."""
    group = live_group(tx, user_id, group_name)
    if group["expires"] is None:
        raise InvalidInput(
            f"group {group_name} has no TTL: a teardown at the provider "
            "happens when the TTL passes (create the group with a TTL)",
            field="group",
        )
    if (loads(group["settings"]) or {}).get("expired"):
        raise Conflict(f"group {group_name} has expired already: run `crc down`")
    t = now()
    tx.execute("DELETE FROM teardowns WHERE group_id = ?", (group["id"],))
    tx.execute(
        "INSERT INTO teardowns (group_id, provider, secret, status, updated) "
        "VALUES (?, ?, ?, 'armed', ?)",
        (group["id"], provider, secret, t),
    )
    audit(
        tx, user_id, _user(tx, user_id), "group.teardown_armed", group_name, {"provider": provider}
    )
    return teardown_view(tx, group["id"]) or {}


def disarm_teardown(tx: Tx, user_id: str, group_name: str) -> dict[str, Any]:
    """Forget the group's teardown (and its key); the TTL then only revokes."""
    group = live_group(tx, user_id, group_name)
    row = tx.one("SELECT status FROM teardowns WHERE group_id = ?", (group["id"],))
    if row is not None and row["status"] == "running":
        raise Conflict(f"the teardown of group {group_name} is running: wait for it")
    tx.execute("DELETE FROM teardowns WHERE group_id = ?", (group["id"],))
    if row is not None:
        audit(tx, user_id, _user(tx, user_id), "group.teardown_disarmed", group_name, {})
    return {"group": group_name, "teardown": None}


def teardown_view(tx: Tx, group_id: str) -> dict[str, Any] | None:
    """What the owner may see: never the key."""
    row = tx.one(
        "SELECT provider, status, attempts, next_try, last_error, result, updated "
        "FROM teardowns WHERE group_id = ?",
        (group_id,),
    )
    if row is None:
        return None
    return {
        "provider": row["provider"],
        "status": row["status"],
        "attempts": int(row["attempts"]),
        "last_error": row["last_error"],
        "next_try": row["next_try"] if row["status"] == "retry" else None,
        "result": loads(row["result"]) if row["result"] else None,
        "updated": row["updated"],
    }


def due_teardowns(tx: Tx) -> list[dict[str, Any]]:
    """Teardowns due now (group expired; armed, to retry, or abandoned by a replica that
    died). Read-only: the expiry loop asks every second, and mostly nothing is due."""
    t = now()
    rows = tx.all(
        "SELECT t.group_id, t.provider, t.secret, t.attempts, t.status, t.next_try, "
        "t.claimed_until, g.name, g.user_id, g.settings FROM teardowns t "
        "JOIN groups g ON g.id = t.group_id WHERE g.deleted IS NULL "
        "AND t.status IN ('armed', 'retry', 'running')",
        (),
    )
    return [
        r
        for r in rows
        if (loads(r["settings"]) or {}).get("expired")
        and not (r["status"] == "retry" and r["next_try"] > t)
        and not (r["status"] == "running" and (r["claimed_until"] or 0) > t)
    ]


def claim_teardowns(tx: Tx, due: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mark teardowns from ``due_teardowns`` ``running`` for this caller, unless another
    replica claimed them first. Returns ``{group_id, group, user_id, provider, secret,
    attempts}`` rows."""
    t = now()
    out = []
    for r in due:
        claimed = tx.one(
            "UPDATE teardowns SET status = 'running', claimed_until = ?, attempts = attempts "
            "+ 1, updated = ? WHERE group_id = ? AND status = ? AND attempts = ? "
            "RETURNING attempts",
            (t + CLAIM_SECONDS, t, r["group_id"], r["status"], r["attempts"]),
        )
        if claimed is None:  # another replica was faster
            continue
        add_event(
            tx,
            r["group_id"],
            "group.teardown",
            {"status": "running", "provider": r["provider"], "attempt": int(claimed["attempts"])},
        )
        out.append(
            {
                "group_id": r["group_id"],
                "group": r["name"],
                "user_id": r["user_id"],
                "provider": r["provider"],
                "secret": r["secret"],
                "attempts": int(claimed["attempts"]),
            }
        )
    return out


def release_claims(tx: Tx) -> int:
    """At the start of a server that is alone on its database (SQLite): a teardown it was
    running when it died is due again now, not when its claim would have run out."""
    rows = tx.all("SELECT group_id FROM teardowns WHERE status = 'running'", ())
    tx.execute(
        "UPDATE teardowns SET status = 'retry', next_try = 0, claimed_until = NULL, "
        "last_error = 'the server stopped during the teardown' "
        "WHERE status = 'running'"
    )
    return len(rows)


def finish_teardown(
    tx: Tx, group_id: str, attempts: int, result: dict[str, Any] | None, error: str | None
) -> None:
    """Record the outcome of a claimed teardown: ``done`` (the key is dropped) or
    ``retry`` with a growing delay."""
    row = tx.one(
        "SELECT g.name, g.user_id, t.provider FROM teardowns t JOIN groups g "
        "ON g.id = t.group_id WHERE t.group_id = ? AND t.status = 'running' "
        "AND t.attempts = ?",
        (group_id, attempts),
    )
    if row is None:  # disarmed, deleted or taken over meanwhile
        return
    t = now()
    if error is None:
        tx.execute(
            "UPDATE teardowns SET status = 'done', secret = NULL, claimed_until = NULL, "
            "last_error = NULL, result = ?, updated = ? WHERE group_id = ?",
            (dumps(result or {}), t, group_id),
        )
        add_event(
            tx,
            group_id,
            "group.teardown",
            {"status": "done", "provider": row["provider"], **(result or {})},
        )
        audit(
            tx,
            row["user_id"],
            "server",
            "group.teardown",
            row["name"],
            {"provider": row["provider"], **(result or {})},
        )
        return
    delay = min(MAX_BACKOFF, 30.0 * 2 ** min(attempts - 1, 10))
    tx.execute(
        "UPDATE teardowns SET status = 'retry', claimed_until = NULL, last_error = ?, "
        "next_try = ?, updated = ? WHERE group_id = ?",
        (error[:1000], t + delay, t, group_id),
    )
    add_event(
        tx,
        group_id,
        "group.teardown",
        {
            "status": "retry",
            "provider": row["provider"],
            "error": error[:1000],
            "attempt": attempts,
            "next_try": t + delay,
        },
    )


def _user(tx: Tx, user_id: str) -> str:
    row = tx.one("SELECT name FROM users WHERE id = ?", (user_id,))
    return str(row["name"]) if row else "?"
