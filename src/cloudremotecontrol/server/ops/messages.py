"""User messages: master -> machines, and machine -> peers (data only, never commands)."""

from __future__ import annotations

from typing import Any

from ...errors import InvalidInput, TooLarge
from ...protocol.limits import MAX_MESSAGE_BODY_BYTES
from ...protocol.messages import Envelope
from ...protocol.names import check_message_type, parse_target
from ..store.base import Tx
from .common import add_event, audit, dumps, live_group
from .jobs import enqueue, resolve_targets

__all__ = ["send_message"]


def send_message(
    tx: Tx, user: dict[str, Any], group_name: str, to: str, type: str, body: Any
) -> dict[str, Any]:
    """Queue ``user.*`` message ``type`` for every target machine (durable on return)."""
    group = live_group(tx, user["user_id"], group_name)
    return _fan_out(
        tx, group, "master", to, type, body, actor=user["user"], user_id=user["user_id"]
    )


def route_from_machine(tx: Tx, m: dict[str, Any], env: Envelope) -> list[tuple[str, int, str]]:
    """A machine's ``user.*`` message to peers of its own group (never another group)."""
    group = tx.one("SELECT id, name FROM groups WHERE id = ?", (m["group_id"],))
    assert group is not None
    return _fan_out(
        tx,
        group,
        m["name"],
        env.to,
        env.type,
        env.body,
        actor=m["name"],
        user_id=None,
        correlation_id=env.correlation_id,
    )["deliveries"]


def _fan_out(
    tx: Tx,
    group: dict[str, Any],
    sender: str,
    to: str,
    type: str,
    body: Any,
    actor: str,
    user_id: str | None,
    correlation_id: str | None = None,
) -> dict[str, Any]:
    check_message_type(type)
    body = {} if body is None else body
    if not isinstance(body, dict):
        raise InvalidInput("the message body must be a JSON object", field="body")
    if len(dumps(body)) > MAX_MESSAGE_BODY_BYTES:
        raise TooLarge(f"message body over {MAX_MESSAGE_BODY_BYTES} bytes")
    machines = resolve_targets(tx, group, parse_target(to))
    deliveries = []
    first_id = None
    for m in machines:
        env = Envelope.make(group["name"], sender, m["name"], type, body, correlation_id)
        first_id = first_id or env.id
        seq, frame = enqueue(tx, m, env)
        deliveries.append((m["id"], seq, frame))
    names = [m["name"] for m in machines]
    add_event(
        tx, group["id"], "message.sent", {"type": type, "from": sender, "to": names, "body": body}
    )
    if user_id is not None:
        audit(tx, user_id, actor, "message.send", group["name"], {"type": type, "to": names})
    return {"targets": names, "deliveries": deliveries}
