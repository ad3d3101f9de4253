"""User messages: master -> machines, and machine -> peers (data only, never commands)."""

from __future__ import annotations

from typing import Any

from ...errors import CrcError
from ...protocol.limits import MAX_PENDING_PEER_MESSAGES
from ...protocol.messages import Envelope, UserMessage
from ...protocol.names import parse_target
from ..store.base import Tx
from .common import add_event, audit, live_group
from .jobs import enqueue, resolve_targets

__all__ = ["route_from_machine", "send_message"]


def send_message(
    tx: Tx, user: dict[str, Any], group_name: str, to: str, type: str, body: Any
) -> dict[str, Any]:
    """Queue ``user.*`` message ``type`` for every target machine (durable on return):
    ``{"group", "type", "targets": [names], "messages": [{"machine", "id"}],
    "deliveries"}``, one message (its own id, as the machine receives it) per target.
    The type and body are checked by the catalogue (a body nested too deep or too large
    is refused before anything is stored)."""
    msg = UserMessage.make(type, body)
    group = live_group(tx, user["user_id"], group_name)
    return _fan_out(tx, group, "master", to, msg, actor=user["user"], user_id=user["user_id"])


def route_from_machine(
    tx: Tx, m: dict[str, Any], to: str, msg: UserMessage, correlation_id: str | None
) -> list[tuple[str, int, str]]:
    """A machine's ``user.*`` message to peers of its own group (never another group)."""
    group = tx.one("SELECT id, name FROM groups WHERE id = ?", (m["group_id"],))
    assert group is not None
    return list(
        _fan_out(
            tx,
            group,
            m["name"],
            to,
            msg,
            actor=m["name"],
            user_id=None,
            correlation_id=correlation_id,
        )["deliveries"]
    )


def _fan_out(
    tx: Tx,
    group: dict[str, Any],
    sender: str,
    to: str,
    msg: UserMessage,
    actor: str,
    user_id: str | None,
    correlation_id: str | None = None,
) -> dict[str, Any]:
    machines = resolve_targets(tx, group, parse_target(to))
    if user_id is None:
        machines = _skip_full(tx, group, sender, msg, machines)
    deliveries = []
    ids = []
    for m in machines:
        env = Envelope.of(msg, group["name"], sender, m["name"], correlation_id)
        seq, frame = enqueue(tx, m, env)
        deliveries.append((m["id"], seq, frame))
        ids.append({"machine": m["name"], "id": env.id})
    names = [m["name"] for m in machines]
    add_event(
        tx,
        group["id"],
        "message.sent",
        {"type": msg.type, "from": sender, "to": names, "body": msg.body},
    )
    if user_id is not None:
        audit(tx, user_id, actor, "message.send", group["name"], {"type": msg.type, "to": names})
    return {
        "group": group["name"],
        "type": msg.type,
        "targets": names,
        "messages": ids,
        "deliveries": deliveries,
    }


def _skip_full(
    tx: Tx,
    group: dict[str, Any],
    sender: str,
    msg: UserMessage,
    machines: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """The targets of a machine's message that may take it: those holding fewer than
    ``MAX_PENDING_PEER_MESSAGES`` ``user.*`` messages they have not acknowledged. What one
    machine can make the server store for a peer that does not read (offline, or never
    connected) is bounded, and that peer keeps no other from getting the message: the
    others get it, and the ones left out are an ``agent.error`` event of the sender's
    (``too_many_pending``, naming them). When it is left out everywhere, the message is
    refused as a whole (an error frame to the sender too). Only peer messages pay for this
    read, never job results."""
    full: set[str] = set()
    for i in range(0, len(machines), 500):
        chunk = [m["id"] for m in machines[i : i + 500]]
        marks = ",".join("?" * len(chunk))
        rows = tx.all(
            # Only "?" placeholders are formatted in: the ids are parameters.
            "SELECT machine_id FROM outbox WHERE machine_id IN "  # noqa: S608
            f"({marks}) AND type LIKE ? GROUP BY machine_id HAVING COUNT(*) >= ?",
            (*chunk, "user.%", MAX_PENDING_PEER_MESSAGES),
        )
        full.update(r["machine_id"] for r in rows)
    if not full:
        return machines
    left_out = sorted(m["name"] for m in machines if m["id"] in full)
    shown = ", ".join(left_out[:5]) + (", ..." if len(left_out) > 5 else "")
    why = (
        f"{len(left_out)} target(s) ({shown}) hold {MAX_PENDING_PEER_MESSAGES} messages "
        "not yet acknowledged, the most a machine's message may add to"
    )
    taking = [m for m in machines if m["id"] not in full]
    if not taking:
        raise CrcError(
            f"not sent: {why}; send it again once they read their messages",
            code="too_many_pending",
        )
    add_event(
        tx,
        group["id"],
        "agent.error",
        {
            "code": "too_many_pending",
            "message": f"not sent to {shown}: {why}; sent to the other target(s)",
            "type": msg.type,
        },
        machine=sender,
    )
    return taking
