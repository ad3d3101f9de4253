"""Enrollment keys after group creation: re-issue a fresh key for a pending machine.

Keys are shown once and stored hashed, yet the master needs a machine's key again when
it writes that machine's startup script (``crc bootstrap``), maybe hours later or on
another computer. Re-issuing is the honest answer: a new single-use key replaces the
old one in the same transaction (the old one is burnt, whoever holds it: its id and
hash are kept in ``replaced_keys``, so that its holder is told it was replaced), and only
while the machine is still ``pending``: once enrolled, a key would be worthless anyway
and issuing one would only leave a secret lying around, so that is a 409 Conflict.
"""

from __future__ import annotations

from typing import Any

from ...errors import Conflict, InvalidInput, NotFound
from ...protocol.limits import DEFAULT_KEY_TTL_SECONDS
from ...protocol.names import check_name
from ...protocol.states import MachineState
from ...protocol.tokens import new_secret
from ..store.base import Tx
from .common import audit, check_not_expired, live_group, now

__all__ = ["key_ttl_seconds", "reissue_key"]

MAX_KEY_TTL_SECONDS = 30 * 86400


def key_ttl_seconds(key_ttl: float | None) -> float:
    """How long a new enrollment key stays valid: the default for None; InvalidInput
    (400) unless 1 second to 30 days. Less than a second is no lifetime an agent can
    use (a key made to expire before it is written in a startup script): a typo."""
    value = DEFAULT_KEY_TTL_SECONDS if key_ttl is None else key_ttl
    if not 1 <= value <= MAX_KEY_TTL_SECONDS:  # nan too: it compares false
        raise InvalidInput("key TTL must be between 1 second and 30 days", field="key_ttl")
    return value


def reissue_key(
    tx: Tx, user_id: str, group: str, machine: str, key_ttl: float | None = None
) -> dict[str, Any]:
    """Replace ``machine``'s enrollment key; return ``{"group", "machine", "key",
    "key_expires"}`` - the only time the new key exists in clear."""
    check_name(machine, "machine")
    key_ttl = key_ttl_seconds(key_ttl)
    g = live_group(tx, user_id, group)
    check_not_expired(g)
    row = tx.one(
        "SELECT id, state, key_id, key_hash FROM machines WHERE group_id = ? AND name = ?",
        (g["id"], machine),
    )
    if row is None:
        raise NotFound(
            f"no machine {machine!r} in group {group!r}: see `crc group show {group}`",
            field="machine",
        )
    if row["state"] != MachineState.PENDING.value:
        raise Conflict(
            f"machine {machine!r} is {row['state']}, not pending: it has enrolled "
            "already, so it needs no key (its agent keeps its credential)"
        )
    key = new_secret("k")
    expires = now() + key_ttl
    # The WHERE on state lets an enrollment committed meanwhile (another replica) win.
    changed = tx.execute(
        "UPDATE machines SET key_id = ?, key_hash = ?, key_expires = ? WHERE id = ? AND state = ?",
        (key.id, key.hash, expires, row["id"], MachineState.PENDING.value),
    )
    if changed != 1:
        raise Conflict(f"machine {machine!r} enrolled meanwhile: it needs no key")
    if row["key_id"] is not None and row["key_hash"] is not None:
        # Kept (id and hash, never the key) so that whoever still presents it, with its
        # secret, hears that it was replaced rather than "rejected" (ops/enrollment.py).
        tx.execute(
            "INSERT INTO replaced_keys (key_id, machine_id, key_hash, replaced) "
            "VALUES (?, ?, ?, ?)",
            (row["key_id"], row["id"], row["key_hash"], now()),
        )
    audit(tx, user_id, "master", "machine.key_reissue", group, {"machine": machine})
    return {"group": group, "machine": machine, "key": str(key), "key_expires": expires}
