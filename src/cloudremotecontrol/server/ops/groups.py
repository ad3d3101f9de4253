"""Groups and their machine slots: create (keys shown once), list, show, delete."""

from __future__ import annotations

import uuid
from typing import Any

from ...errors import Conflict, InvalidInput, TooLarge
from ...protocol.jsoncheck import check_json
from ...protocol.limits import MAX_MACHINES_PER_GROUP
from ...protocol.names import check_label, check_new_name, expired_advice, scenario_of
from ...protocol.states import JobStatus, MachineEvent, MachineState, machine_next
from ...protocol.tokens import new_secret
from ..store.base import Tx
from .common import add_event, audit, dumps, live_group, loads, now
from .keys import key_ttl_seconds
from .teardown import teardown_view

__all__ = [
    "MAX_SETTINGS_BYTES",
    "create_group",
    "delete_group",
    "expire_groups",
    "list_groups",
    "machine_view",
    "show_group",
]

MAX_SETTINGS_BYTES = 64 << 10


def create_group(
    tx: Tx,
    user_id: str,
    name: str,
    machines: list[dict[str, Any]],
    key_ttl: float | None = None,
    ttl: float | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Create group ``name`` with one slot and one single-use key per machine.

    Returns ``{"group", "machines": [{"name", "key", "key_expires"}]}`` - the only time
    the keys exist in clear.
    """
    check_new_name(name, "group")
    if not machines:
        raise InvalidInput("a group needs at least one machine", field="machines")
    if len(machines) > MAX_MACHINES_PER_GROUP:
        raise TooLarge(f"{len(machines)} machines; the limit is {MAX_MACHINES_PER_GROUP}")
    key_ttl = key_ttl_seconds(key_ttl)
    if ttl is not None and not 1 <= ttl <= 365 * 86400:
        raise InvalidInput("group TTL must be between 1 second and 365 days", field="ttl")
    names: list[str] = []
    for m in machines:
        if not isinstance(m, dict):
            raise InvalidInput("each machine must be an object with a name", field="machines")
        names.append(check_new_name(m.get("name"), "machine"))
        labels = m.get("labels") or {}
        if not isinstance(labels, dict):
            raise InvalidInput("labels must be an object", field="labels")
        for k, v in labels.items():
            check_label(str(k), str(v))
    check_json(
        settings or {}, max_bytes=MAX_SETTINGS_BYTES, what="group settings", field="settings"
    )
    if len(set(names)) != len(names):
        raise InvalidInput("machine names must be unique in a group", field="machines")
    if tx.one(
        "SELECT id FROM groups WHERE user_id = ? AND name = ? AND deleted IS NULL", (user_id, name)
    ):
        raise Conflict(f"group {name!r} exists already: delete it first or pick another name")
    t = now()
    group_id = uuid.uuid4().hex
    tx.execute(
        "INSERT INTO groups (id, user_id, name, created, expires, settings) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (group_id, user_id, name, t, t + ttl if ttl else None, dumps(settings or {})),
    )
    out = []
    for m in machines:
        key = new_secret("k")
        tx.execute(
            "INSERT INTO machines (id, group_id, name, labels, state, key_id, key_hash, "
            "key_expires) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                uuid.uuid4().hex,
                group_id,
                m["name"],
                dumps({str(k): str(v) for k, v in (m.get("labels") or {}).items()}),
                MachineState.PENDING.value,
                key.id,
                key.hash,
                t + key_ttl,
            ),
        )
        out.append({"name": m["name"], "key": str(key), "key_expires": t + key_ttl})
    add_event(tx, group_id, "group.created", {"machines": names})
    audit(
        tx, user_id, _user_name(tx, user_id), "group.create", name, {"machines": names, "ttl": ttl}
    )
    return {"group": name, "machines": out}


def _user_name(tx: Tx, user_id: str) -> str:
    row = tx.one("SELECT name FROM users WHERE id = ?", (user_id,))
    return str(row["name"]) if row else "unknown"


def machine_view(row: dict[str, Any]) -> dict[str, Any]:
    facts = loads(row.get("facts")) or {}
    return {
        "name": row["name"],
        "state": row["state"],
        "labels": loads(row.get("labels")) or {},
        "ips": facts.get("ips", []),
        "public_ip": row.get("peer_ip"),
        "facts": facts,
        "progress": loads(row.get("progress")),
        "last_seen": row.get("last_seen"),
        "key_expires": row.get("key_expires") if row["state"] == "pending" else None,
    }


def list_groups(tx: Tx, user_id: str) -> list[dict[str, Any]]:
    rows = tx.all(
        "SELECT g.name, g.created, g.expires, g.settings, "
        "SUM(CASE WHEN m.state = 'ready' THEN 1 ELSE 0 END) AS ready, COUNT(m.id) AS machines "
        "FROM groups g LEFT JOIN machines m ON m.group_id = g.id "
        "WHERE g.user_id = ? AND g.deleted IS NULL "
        "GROUP BY g.id, g.name, g.created, g.expires, g.settings "
        "ORDER BY g.created",
        (user_id,),
    )
    return [_listed(r) for r in rows]


def _listed(r: dict[str, Any]) -> dict[str, Any]:
    settings = loads(r["settings"]) or {}
    return {
        "group": r["name"],
        "created": r["created"],
        "expires": r["expires"],
        "expired": bool(settings.get("expired")),
        "scenario": scenario_of(settings),
        "machines": int(r["machines"]),
        "ready": int(r["ready"] or 0),
    }


def show_group(tx: Tx, user_id: str, name: str) -> dict[str, Any]:
    group = live_group(tx, user_id, name)
    rows = tx.all("SELECT * FROM machines WHERE group_id = ? ORDER BY name", (group["id"],))
    settings = loads(group["settings"]) or {}
    return {
        "group": name,
        "created": group["created"],
        "expires": group["expires"],
        "expired": bool(settings.get("expired")),
        "settings": settings,
        "teardown": teardown_view(tx, group["id"]),
        "machines": [machine_view(r) for r in rows],
    }


def uninstall_on_delete(settings: str | None) -> bool:
    """Whether a group (its ``settings`` column) asks its service agents to remove their
    service when it is deleted (`crc group create --uninstall-on-delete`)."""
    return bool((loads(settings) or {}).get("uninstall_on_delete"))


def delete_group(tx: Tx, user_id: str, name: str, actor: str = "master") -> tuple[list[str], bool]:
    """Revoke every key and credential of the group; return the machine ids revoked and
    whether their agents should uninstall themselves."""
    group = live_group(tx, user_id, name)
    revoked = _revoke_all(tx, group, "group deleted")
    # hosts_due: a deleted group has no hosts sync window left to end (ops/hostsync.py).
    tx.execute(
        "UPDATE groups SET deleted = ?, hosts_due = ? WHERE id = ?", (now(), None, group["id"])
    )
    tx.execute("DELETE FROM teardowns WHERE group_id = ?", (group["id"],))  # and its key
    add_event(tx, group["id"], "group.deleted", {})
    audit(
        tx,
        user_id,
        _user_name(tx, user_id) if actor == "master" else actor,
        "group.delete",
        name,
        {},
    )
    return revoked, uninstall_on_delete(group["settings"])


def expire_groups(tx: Tx) -> list[str]:
    """Groups past their TTL: revoke every key and credential and flag the group
    ``expired`` (it stays listed, so its owner sees it and runs `crc down` to destroy the
    machines at the provider, unless the owner opted in to a teardown by the server:
    ops/teardown.py). Returns the machine ids revoked. Safe to run from several replicas
    at once."""
    revoked: list[str] = []
    for group in tx.all(
        "SELECT * FROM groups WHERE deleted IS NULL AND expires IS NOT NULL AND expires < ?",
        (now(),),
    ):
        settings = loads(group["settings"]) or {}
        if settings.get("expired"):
            continue
        ids = _revoke_all(tx, group, "group expired (TTL)")
        settings["expired"] = now()
        tx.execute("UPDATE groups SET settings = ? WHERE id = ?", (dumps(settings), group["id"]))
        armed = tx.one("SELECT provider FROM teardowns WHERE group_id = ?", (group["id"],))
        note = (
            f"the server now destroys the machines at {armed['provider']}"
            if armed
            else expired_advice(group["name"], scenario_of(settings))
        )
        add_event(tx, group["id"], "group.expired", {"machines_revoked": len(ids), "note": note})
        audit(
            tx,
            group["user_id"],
            "server",
            "group.expire",
            group["name"],
            {"machines_revoked": len(ids)},
        )
        revoked += ids
    return revoked


def _revoke_all(tx: Tx, group: dict[str, Any], reason: str) -> list[str]:
    t = now()
    machines = tx.all("SELECT id, name, state FROM machines WHERE group_id = ?", (group["id"],))
    for m in machines:
        nxt = machine_next(MachineState(m["state"]), MachineEvent.REVOKE)
        if nxt is not None:
            tx.execute(
                "UPDATE machines SET state = ?, key_spent = COALESCE(key_hash, key_spent), "
                "key_hash = NULL, cred_hash = NULL WHERE id = ?",
                (nxt.value, m["id"]),
            )
            add_event(
                tx,
                group["id"],
                "machine.state",
                {"state": nxt.value, "previous": m["state"]},
                machine=m["name"],
            )
        tx.execute("DELETE FROM outbox WHERE machine_id = ?", (m["id"],))
    open_targets = tx.all(
        "SELECT t.job_id, t.machine_id, t.machine FROM job_targets t JOIN jobs j "
        "ON j.id = t.job_id WHERE j.group_id = ? AND t.status IN (?, ?, ?)",
        (group["id"], JobStatus.QUEUED.value, JobStatus.DELIVERED.value, JobStatus.RUNNING.value),
    )
    for jt in open_targets:
        tx.execute(
            "UPDATE job_targets SET status = ?, reason = ?, updated = ? "
            "WHERE job_id = ? AND machine_id = ?",
            (JobStatus.LOST.value, reason, t, jt["job_id"], jt["machine_id"]),
        )
        add_event(
            tx,
            group["id"],
            "job.status",
            {"job_id": jt["job_id"], "status": "lost", "exit_code": None, "reason": reason},
            machine=jt["machine"],
            job_id=jt["job_id"],
        )
    return [m["id"] for m in machines]
