"""Agent connections: state on connect/disconnect, the per-machine outbox, and what a
machine sends (applied exactly once thanks to ``in_done``, the highest processed seq).

See ``protocol/delivery.py`` for why sequence numbers, cumulative acks and resume give
at-least-once delivery, and how receivers turn it into at-most-once effects.
"""

from __future__ import annotations

from typing import Any

from ...errors import CrcError, InvalidInput
from ...protocol.limits import MAX_MESSAGE_BODY_BYTES, MAX_OUTPUT_KEPT_BYTES
from ...protocol.messages import AGENT_TYPES, Envelope
from ...protocol.states import (
    JobEvent,
    JobStatus,
    MachineEvent,
    MachineState,
    job_next,
    machine_next,
    result_event,
)
from ..store.base import Tx
from .common import add_event, dumps, loads, now
from .groups import uninstall_on_delete

__all__ = [
    "ack_outbox",
    "apply_agent_message",
    "machine_connected",
    "machine_disconnected",
    "mark_all_offline",
    "outbox_after",
    "sweep_stale",
    "touch_machines",
]


def _transition(tx: Tx, m: dict[str, Any], event: MachineEvent, **extra: Any) -> str:
    state = MachineState(m["state"])
    nxt = machine_next(state, event)
    if nxt is None:
        return state.value
    # Column names come from this module's keyword arguments, never from input.
    sets = "".join(f", {k} = ?" for k in extra)
    tx.execute(
        f"UPDATE machines SET state = ?, last_seen = ?{sets} WHERE id = ?",  # noqa: S608
        (nxt.value, now(), *extra.values(), m["id"]),
    )
    if nxt != state:
        add_event(
            tx,
            m["group_id"],
            "machine.state",
            {"state": nxt.value, "previous": state.value},
            machine=m["name"],
        )
    return nxt.value


def machine_connected(
    tx: Tx,
    machine_id: str,
    ready: bool,
    peer_ip: str | None,
    replica: str,
    agent_ack: int = 0,
    resume_from: int | None = None,
) -> dict[str, Any]:
    """Record a (re)connection; return ``{"in_done", "state"}`` for the welcome frame.

    ``agent_ack`` (the hello's ``ack``: the last message the agent processed) drops what
    it acknowledges from the outbox. An ack beyond anything this server sent means the
    agent saw messages the database no longer knows (it was restored from a backup, or
    the agent's state came from elsewhere): the next messages are numbered after the
    agent's ack, else the agent would take them for duplicates and drop them.

    ``resume_from`` (the first message the agent can still send) beyond what the server
    has processed means the reverse: messages acknowledged before the database was rolled
    back are gone; the server continues from there instead of refusing every message as
    a sequence gap."""
    m = tx.one("SELECT * FROM machines WHERE id = ?", (machine_id,))
    if m is None:
        raise InvalidInput("machine vanished")
    if agent_ack >= m["out_next"]:
        tx.execute("UPDATE machines SET out_next = ? WHERE id = ?", (agent_ack + 1, m["id"]))
        add_event(
            tx,
            m["group_id"],
            "machine.resync",
            {
                "direction": "to agent",
                "agent_ack": agent_ack,
                "server_sent": int(m["out_next"]) - 1,
                "note": "the agent had processed messages this server does not know: "
                "numbering continues after them",
            },
            machine=m["name"],
        )
    elif agent_ack > 0:
        ack_outbox(tx, machine_id, agent_ack)
    if resume_from is not None and resume_from > m["in_done"] + 1:
        tx.execute("UPDATE machines SET in_done = ? WHERE id = ?", (resume_from - 1, m["id"]))
        add_event(
            tx,
            m["group_id"],
            "machine.resync",
            {
                "direction": "from agent",
                "server_had": int(m["in_done"]),
                "agent_resumes_at": resume_from,
                "lost": resume_from - 1 - int(m["in_done"]),
                "note": "messages the agent sent were acknowledged by a database state "
                "this server no longer has: they are lost",
            },
            machine=m["name"],
        )
        m["in_done"] = resume_from - 1
    event = MachineEvent.CONNECT_READY if ready else MachineEvent.CONNECT
    state = _transition(tx, m, event, peer_ip=peer_ip, connected_by=replica)
    return {
        "in_done": m["in_done"],
        "state": state,
        "deliveries": auto_hosts_sync(tx, m["group_id"]),
    }


def machine_disconnected(tx: Tx, machine_id: str, replica: str) -> None:
    m = tx.one("SELECT * FROM machines WHERE id = ?", (machine_id,))
    # Another replica may own a newer connection of the same machine: leave it alone.
    if m is None or m["connected_by"] not in (replica, None):
        return
    _transition(tx, m, MachineEvent.DISCONNECT, connected_by=None)


def mark_all_offline(tx: Tx, replica: str | None = None) -> int:
    """At start: machines believed connected to this server (or any, for None) are not."""
    rows = tx.all(
        "SELECT * FROM machines WHERE state IN ('enrolled', 'ready') "
        "AND (CAST(? AS TEXT) IS NULL OR connected_by = ?)",
        (replica, replica),
    )
    for m in rows:
        _transition(tx, m, MachineEvent.DISCONNECT, connected_by=None)
    return len(rows)


def sweep_stale(tx: Tx, older_than: float) -> int:
    """Machines shown connected whose replica stopped vouching for them (it touches its
    machines' ``last_seen`` every 30 s; a replica killed -9 cannot say goodbye)."""
    rows = tx.all(
        "SELECT * FROM machines WHERE state IN ('enrolled', 'ready') AND last_seen < ?",
        (now() - older_than,),
    )
    for m in rows:
        _transition(tx, m, MachineEvent.DISCONNECT, connected_by=None)
    return len(rows)


def touch_machines(tx: Tx, machine_ids: list[str]) -> list[tuple[str, str, bool]]:
    """Record that these connected machines are alive; return ``(id, reason,
    uninstall)`` for those revoked meanwhile (by another replica: this one closes them)."""
    t = now()
    revoked = []
    for i in range(0, len(machine_ids), 500):
        batch = machine_ids[i : i + 500]
        marks = ",".join("?" * len(batch))
        tx.execute(
            f"UPDATE machines SET last_seen = ? WHERE id IN ({marks})",  # noqa: S608
            (t, *batch),
        )
        # Only "?" placeholders are formatted in: the ids are parameters.
        query = (
            "SELECT m.id, g.name, g.deleted, g.settings FROM machines m "  # noqa: S608
            "JOIN groups g ON g.id = m.group_id "
            f"WHERE m.state = 'revoked' AND m.id IN ({marks})"
        )
        for row in tx.all(query, tuple(batch)):
            if row["deleted"] is None:
                revoked.append((row["id"], "machine revoked", False))
            else:
                revoked.append(
                    (
                        row["id"],
                        f"group {row['name']!r} deleted",
                        uninstall_on_delete(row["settings"]),
                    )
                )
    return revoked


def outbox_after(tx: Tx, machine_id: str, after: int, limit: int = 500) -> list[tuple[int, str]]:
    rows = tx.all(
        "SELECT seq, envelope FROM outbox WHERE machine_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        (machine_id, after, limit),
    )
    return [(int(r["seq"]), r["envelope"]) for r in rows]


def ack_outbox(tx: Tx, machine_id: str, seq: int) -> int:
    """The agent processed everything up to ``seq``: drop it; jobs become delivered."""
    m = tx.one("SELECT id, group_id, name, out_next FROM machines WHERE id = ?", (machine_id,))
    if m is None or seq >= m["out_next"]:
        raise InvalidInput(f"ack {seq} for a message never sent")
    runs = tx.all(
        "SELECT job_id FROM outbox WHERE machine_id = ? AND seq <= ? "
        "AND job_id IS NOT NULL AND type != 'job.cancel'",
        (machine_id, seq),
    )
    removed = tx.execute("DELETE FROM outbox WHERE machine_id = ? AND seq <= ?", (machine_id, seq))
    for r in runs:
        _job_event(tx, m, r["job_id"], JobEvent.DELIVER, None, None)
    return removed


def _job_event(
    tx: Tx,
    m: dict[str, Any],
    job_id: str,
    event: JobEvent,
    exit_code: int | None,
    reason: str | None,
) -> None:
    jt = tx.one(
        "SELECT status FROM job_targets WHERE job_id = ? AND machine_id = ?", (job_id, m["id"])
    )
    if jt is None:
        return
    nxt = job_next(JobStatus(jt["status"]), event)
    if nxt is None:
        return  # a duplicate or late report (e.g. result after a cancel won): ignore
    tx.execute(
        "UPDATE job_targets SET status = ?, exit_code = ?, reason = ?, updated = ? "
        "WHERE job_id = ? AND machine_id = ?",
        (nxt.value, exit_code, reason, now(), job_id, m["id"]),
    )
    add_event(
        tx,
        m["group_id"],
        "job.status",
        {"job_id": job_id, "status": nxt.value, "exit_code": exit_code, "reason": reason},
        machine=m["name"],
        job_id=job_id,
    )


def apply_agent_message(tx: Tx, machine_id: str, seq: int, raw: dict[str, Any]) -> dict[str, Any]:
    """Apply message ``seq`` from a machine once. Returns ``{"receipt", "error"?}``.

    Duplicates are acknowledged again and otherwise ignored; a gap means the agent must
    resume; an invalid message is acknowledged (so it is not re-sent forever) and
    recorded as an ``agent.error`` event, with nothing else stored.
    """
    m = tx.one("SELECT * FROM machines WHERE id = ?", (machine_id,))
    if m is None or m["state"] == MachineState.REVOKED.value:
        return {"receipt": "revoked"}
    if seq <= m["in_done"]:
        return {"receipt": "duplicate"}
    if seq != m["in_done"] + 1:
        return {"receipt": "gap", "expected": m["in_done"] + 1}
    tx.execute(
        "UPDATE machines SET in_done = ?, last_seen = ? WHERE id = ?", (seq, now(), machine_id)
    )
    try:
        env = Envelope.from_dict(raw)
        deliveries = _apply(tx, m, env)
    except CrcError as exc:
        add_event(
            tx,
            m["group_id"],
            "agent.error",
            {"code": exc.code, "message": exc.message},
            machine=m["name"],
        )
        return {"receipt": "new", "error": exc.to_payload()["error"]}
    return {"receipt": "new", "deliveries": deliveries}


def _apply(tx: Tx, m: dict[str, Any], env: Envelope) -> list[tuple[str, int, str]]:
    """Apply one message; return deliveries to push to peers (user messages to peers)."""
    body = env.body
    if len(dumps(body)) > MAX_MESSAGE_BODY_BYTES:
        raise InvalidInput("message body too large", code="too_large")
    kind = env.type
    if kind not in AGENT_TYPES and not kind.startswith("user."):
        raise InvalidInput(f"machines may not send {kind!r} messages", code="unknown_type")
    if kind == "system.ready":
        _transition(tx, m, MachineEvent.SAY_READY)
        return auto_hosts_sync(tx, m["group_id"])
    elif kind == "progress":
        text = body.get("text")
        pct = body.get("percent")
        if not isinstance(text, str) or (
            pct is not None
            and (isinstance(pct, bool) or not isinstance(pct, (int, float)) or not 0 <= pct <= 100)
        ):
            raise InvalidInput("progress needs text and an optional percent 0-100")
        progress = {"text": text[:1000], "percent": pct, "at": now()}
        if isinstance(body.get("source"), str):
            progress["source"] = body["source"][:256]
        tx.execute("UPDATE machines SET progress = ? WHERE id = ?", (dumps(progress), m["id"]))
        add_event(tx, m["group_id"], "progress", progress, machine=m["name"])
    elif kind == "facts":
        tx.execute("UPDATE machines SET facts = ? WHERE id = ?", (dumps(body), m["id"]))
        add_event(tx, m["group_id"], "facts", body, machine=m["name"])
        return auto_hosts_sync(tx, m["group_id"])
    elif kind == "job.started":
        _job_event(tx, m, _job_id(body), JobEvent.START, None, None)
    elif kind == "job.output":
        _output(tx, m, body)
    elif kind == "job.result":
        status = body.get("status")
        event = result_event(status) if isinstance(status, str) else None
        code = body.get("exit_code")
        if event is None or (
            code is not None and (isinstance(code, bool) or not isinstance(code, int))
        ):
            raise InvalidInput("job.result needs a terminal status and an integer exit_code")
        reason = body.get("reason")
        _job_event(
            tx, m, _job_id(body), event, code, str(reason)[:500] if reason is not None else None
        )
    elif env.to != "master":  # user.* to peers of the same group: data, never commands
        from .messages import route_from_machine

        return route_from_machine(tx, m, env)
    else:  # user.* to the master
        add_event(
            tx,
            m["group_id"],
            "message",
            {
                "type": kind,
                "body": body,
                "from": m["name"],
                "id": env.id,
                "correlation_id": env.correlation_id,
            },
            machine=m["name"],
        )
    return []


def auto_hosts_sync(tx: Tx, group_id: str) -> list[tuple[str, int, str]]:
    """For groups created with ``--sync-hosts``: when the roster's addresses change
    (a machine joins, reconnects from elsewhere, reports new IPs), start a hosts sync job
    for every machine. Unchanged addresses start nothing."""
    import hashlib

    from .jobs import create_hosts_sync
    from .roster import hosts_entries, roster

    group = tx.one("SELECT * FROM groups WHERE id = ? AND deleted IS NULL", (group_id,))
    settings = loads(group["settings"]) if group else None
    if not settings or not settings.get("sync_hosts"):
        return []
    which = str(settings.get("hosts_ip") or "auto")
    live = [m for m in roster(tx, group_id) if m["state"] in ("ready", "offline")]
    entries = hosts_entries(live, which)
    digest = hashlib.sha256(dumps(sorted(entries)).encode()).hexdigest()
    if not entries or settings.get("hosts_synced") == digest:
        return []
    settings["hosts_synced"] = digest
    tx.execute("UPDATE groups SET settings = ? WHERE id = ?", (dumps(settings), group_id))
    user = {"user_id": group["user_id"], "user": "crc (--sync-hosts)"}
    result = create_hosts_sync(tx, user, group["name"], "all", which, only_ready=True)
    return list(result["deliveries"])


def _job_id(body: dict[str, Any]) -> str:
    job_id = body.get("job_id")
    if not isinstance(job_id, str) or not job_id:
        raise InvalidInput("message needs a job_id")
    return job_id


def _output(tx: Tx, m: dict[str, Any], body: dict[str, Any]) -> None:
    job_id = _job_id(body)
    stream, data = body.get("stream"), body.get("data")
    if stream not in ("stdout", "stderr") or not isinstance(data, str):
        raise InvalidInput("job.output needs stream stdout|stderr and string data")
    jt = tx.one(
        "SELECT output_bytes FROM job_targets WHERE job_id = ? AND machine_id = ?",
        (job_id, m["id"]),
    )
    if jt is None:
        return
    kept = int(jt["output_bytes"])
    if kept >= MAX_OUTPUT_KEPT_BYTES:
        return
    size = len(data.encode())
    if kept + size > MAX_OUTPUT_KEPT_BYTES:
        data = data.encode()[: MAX_OUTPUT_KEPT_BYTES - kept].decode(errors="ignore")
        data += f"\n[crc: output truncated at {MAX_OUTPUT_KEPT_BYTES} bytes]\n"
        size = MAX_OUTPUT_KEPT_BYTES - kept
    tx.execute(
        "UPDATE job_targets SET output_bytes = ? WHERE job_id = ? AND machine_id = ?",
        (kept + size, job_id, m["id"]),
    )
    add_event(
        tx,
        m["group_id"],
        "job.output",
        {"job_id": job_id, "stream": stream, "data": data},
        machine=m["name"],
        job_id=job_id,
    )
