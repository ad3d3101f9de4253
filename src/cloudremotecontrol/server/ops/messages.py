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
    """Queue ``user.*`` message ``type`` for every target machine (durable on return).
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
        _check_backlog(tx, machines)
    deliveries = []
    for m in machines:
        env = Envelope.of(msg, group["name"], sender, m["name"], correlation_id)
        seq, frame = enqueue(tx, m, env)
        deliveries.append((m["id"], seq, frame))
    names = [m["name"] for m in machines]
    add_event(
        tx,
        group["id"],
        "message.sent",
        {"type": msg.type, "from": sender, "to": names, "body": msg.body},
    )
    if user_id is not None:
        audit(tx, user_id, actor, "message.send", group["name"], {"type": msg.type, "to": names})
    return {"targets": names, "deliveries": deliveries}


def _check_backlog(tx: Tx, machines: list[dict[str, Any]]) -> None:
    """Refuse a machine's message when a target holds ``MAX_PENDING_PEER_MESSAGES``
    ``user.*`` messages it has not acknowledged (offline, or not reading): what one
    machine can make the server store for its peers is bounded. The whole message is
    refused (it reaches all its targets or none); the sender may send it again, or to
    the others by name. Only peer messages pay for this read, never job results."""
    full: list[str] = []
    for i in range(0, len(machines), 500):
        chunk = {m["id"]: m["name"] for m in machines[i : i + 500]}
        marks = ",".join("?" * len(chunk))
        rows = tx.all(
            # Only "?" placeholders are formatted in: the ids are parameters.
            "SELECT machine_id FROM outbox WHERE machine_id IN "  # noqa: S608
            f"({marks}) AND type LIKE ? GROUP BY machine_id HAVING COUNT(*) >= ?",
            (*chunk, "user.%", MAX_PENDING_PEER_MESSAGES),
        )
        full.extend(chunk[r["machine_id"]] for r in rows)
    if full:
        shown = ", ".join(sorted(full)[:5]) + (", ..." if len(full) > 5 else "")
        raise CrcError(
            f"not sent: {len(full)} target(s) ({shown}) hold {MAX_PENDING_PEER_MESSAGES} "
            "messages not yet acknowledged, the most a machine's message may add to; "
            "send it again once they read their messages",
            code="too_many_pending",
        )
