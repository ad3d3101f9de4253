"""Enrollment: a single-use key is exchanged once for a machine credential.

The key lives in a VM's startup script, which the cloud's metadata service shows to
every local process, so it must be worthless once used: it is burnt in the same
transaction that issues the credential. A refusal says why (used, revoked, expired)
only to whoever presents the key's secret: a key id with any other secret is just
"rejected", so key ids (which the server logs) tell an attacker nothing. A key replaced
by ``crc bootstrap`` (ops/keys.py keeps its id and hash) is "replaced by a newer key",
to whoever presents its secret too. Refusals never echo the key.

A retry: the agent keeps a random nonce in its state directory before it first presents
the key, and sends it along; only its hash is stored. If the answer never reached the
agent (killed between the server's commit and saving its credential, or the answer
lost on the network), the same key with the same nonce gets the credential again. This
holds only until the machine first connects with a credential (then the agent evidently
has one and the nonce's hash is cleared: ``ops/delivery.py``) and only while the key
would still be valid; any other nonce, or none, still hears "already used".

The credential given with a nonce is derived from the nonce and the key's own secret
(``derived_secret``, keyed with both; the key's id as context), not drawn at random:
every enrollment with the same key and nonce answers the same credential, so requests of
one agent that overlap (a retry sent while the first request is still being served, on
one server or on two replicas) all get the one that works, whichever the store runs
last. A random credential per request made the last one run replace those already
answered. Neither part alone gives the credential: the key's secret is random (192
bits, drawn by the server) whatever nonce an agent picks, and the nonce, which only the
agent has, keeps it from whoever read the key in the startup script later. The store
holds hashes of both, which do not give it either.
"""

from __future__ import annotations

import hmac
from typing import Any

from ...errors import KeyRejected, Unauthorized
from ...protocol.states import MachineEvent, MachineState, machine_next
from ...protocol.tokens import (
    Secret,
    derived_secret,
    hash_secret,
    new_secret,
    parse_secret,
    verify_secret,
)
from ..store.base import Tx
from .common import add_event, audit, loads, now

__all__ = ["REJECTED", "authenticate_machine", "enroll", "enrolled_secret", "key_id_of"]

# Not a key this server has (or a key id with another secret): most likely mistyped. A
# key replaced by `crc bootstrap` is told apart, to whoever holds it (``_replaced``);
# only one replaced before the server kept replaced keys (schema 19) ends here too.
REJECTED = (
    "enrollment key rejected: not a key this server knows: copy it exactly as "
    "`crc group create` or `crc bootstrap` printed it"
)


def key_id_of(presented: str | None) -> str:
    """The public id part of a presented key, for logs (never the secret)."""
    key = parse_secret(presented, "k")
    if key is None or not key.id.isalnum() or len(key.id) > 32:
        return "(malformed)"
    return key.id


def enrolled_secret(key_secret: str, nonce: str, key_id: str) -> Secret:
    """The credential of an enrollment with a nonce (module docstring): keyed with the
    key's secret and the nonce (a NUL between them: neither holds one), so that neither
    alone gives it."""
    return derived_secret("a", f"{key_secret}\0{nonce}", f"enroll {key_id}")


def _is_retry(row: dict[str, Any], nonce_hash: str | None) -> bool:
    """The key was used with this very nonce, and the machine never connected since."""
    stored = row["enroll_nonce"]
    return (
        row["key_hash"] is None
        and row["deleted"] is None
        and row["state"] not in (MachineState.PENDING.value, MachineState.REVOKED.value)
        and nonce_hash is not None
        and stored is not None
        and hmac.compare_digest(stored, nonce_hash)
    )


def _refusal(row: dict[str, Any]) -> str:
    """Why a key presented with its secret no longer enrolls: its group was deleted, or
    expired (its TTL), or the key was used."""
    group = row["group_name"]
    if row["deleted"] is not None:
        return (
            f"enrollment key revoked: its group {group} was deleted (`crc group delete` "
            "revokes every key of the group); create the group again for new keys"
        )
    if row["state"] == MachineState.REVOKED.value:
        if (loads(row["settings"]) or {}).get("expired"):
            return (
                f"enrollment key revoked: its group {group} expired (its --ttl passed, "
                "which revokes every key of the group); create a new group for new keys"
            )
        return f"enrollment key revoked: machine {row['name']} of group {group} was revoked"
    return (
        "enrollment key already used: keys are single use; make a new group "
        "or machine to get a new key"
    )


def _replaced(tx: Tx, key: Secret) -> str | None:
    """Why ``key`` no longer enrolls if it is one ``crc bootstrap`` replaced, presented
    with its own secret (hashes compared in constant time, as for a spent key); None
    for any other key or secret: the caller hears "rejected", whatever the key id."""
    row = tx.one(
        "SELECT r.key_hash AS replaced_hash, m.name, m.state, g.name AS group_name, "
        "g.deleted, g.settings FROM replaced_keys r JOIN machines m ON m.id = r.machine_id "
        "JOIN groups g ON g.id = m.group_id WHERE r.key_id = ?",
        (key.id,),
    )
    if row is None or not verify_secret(key, row["replaced_hash"]):
        return None
    if row["deleted"] is not None or row["state"] == MachineState.REVOKED.value:
        return _refusal(row)  # revoked with its group or machine, whichever key it is
    again = f"`crc bootstrap {row['group_name']} {row['name']}`"
    if row["state"] != MachineState.PENDING.value:
        return (
            f"enrollment key replaced by a newer key ({again} issued one since, and "
            f"this one stopped working): machine {row['name']} of group "
            f"{row['group_name']} has enrolled with the newer key already"
        )
    return (
        f"enrollment key replaced by a newer key ({again} issued one since, and this "
        "one stopped working): use the startup script with the newer key, or run "
        f"{again} again for another"
    )


def enroll(
    tx: Tx, presented: str | None, peer_ip: str | None, nonce: str | None = None
) -> dict[str, Any]:
    """Burn the key; return ``{"credential", "machine", "group"}``. ``nonce`` (the
    agent's retry nonce, validated by the API model) lets the same agent enroll again
    if the answer was lost (module docstring)."""
    key = parse_secret(presented, "k")
    if key is None:
        raise KeyRejected(
            "malformed enrollment key: copy it exactly as `crc group create` printed it"
        )
    row = tx.one(
        "SELECT m.*, g.name AS group_name, g.user_id, g.deleted, g.settings FROM machines m "
        "JOIN groups g ON g.id = m.group_id WHERE m.key_id = ?",
        (key.id,),
    )
    if row is None:
        raise KeyRejected(_replaced(tx, key) or REJECTED)
    stored = row["key_hash"] or row["key_spent"]
    if stored is None or not verify_secret(key, stored):
        raise KeyRejected(REJECTED)
    nonce_hash = None if nonce is None else hash_secret(nonce)
    retry = _is_retry(row, nonce_hash)
    if not retry and (row["key_hash"] is None or row["deleted"] is not None):
        raise KeyRejected(_refusal(row))
    if row["key_expires"] is not None and row["key_expires"] < now():
        raise KeyRejected(
            "enrollment key expired: keys expire if unused (see --key-ttl); "
            f"`crc bootstrap {row['group_name']} {row['name']}` issues a new one"
        )
    # With a nonce, the same credential for every request of this agent (docstring).
    cred = new_secret("a") if nonce is None else enrolled_secret(key.secret, nonce, key.id)
    if retry:
        # The answer was lost: the same credential again (or, for one made at random by
        # an earlier version, this one replaces it: never received, so never used).
        tx.execute(
            "UPDATE machines SET cred_id = ?, cred_hash = ?, peer_ip = ?, last_seen = ? "
            "WHERE id = ? AND enroll_nonce = ?",
            (cred.id, cred.hash, peer_ip, now(), row["id"], nonce_hash),
        )
    else:
        nxt = machine_next(MachineState(row["state"]), MachineEvent.ENROLL)
        if nxt is None:
            raise KeyRejected(f"machine {row['name']!r} is {row['state']}: cannot enroll")
        burnt = tx.execute(
            "UPDATE machines SET state = ?, key_spent = key_hash, key_hash = NULL, "
            "key_used = ?, cred_id = ?, cred_hash = ?, peer_ip = ?, last_seen = ?, "
            "enroll_nonce = ? WHERE id = ? AND key_hash IS NOT NULL",
            (nxt.value, now(), cred.id, cred.hash, peer_ip, now(), nonce_hash, row["id"]),
        )
        if not burnt:  # another enrollment burnt the key since it was read
            raise KeyRejected(
                "enrollment key already used: keys are single use; make a new group "
                "or machine to get a new key"
            )
        add_event(
            tx,
            row["group_id"],
            "machine.state",
            {"state": nxt.value, "previous": row["state"]},
            machine=row["name"],
        )
    audit(
        tx,
        row["user_id"],
        f"machine:{row['name']}",
        "machine.enroll",
        row["group_name"],
        {"peer_ip": peer_ip, "retry": True} if retry else {"peer_ip": peer_ip},
    )
    settings = loads(row["settings"]) or {}
    return {
        "credential": str(cred),
        "machine": row["name"],
        "group": row["group_name"],
        # The group's opt-outs: the agent enforces them too (agent/streams.py).
        "streams_off": [k for k in ("shell", "forward") if settings.get(f"no_{k}")],
    }


def authenticate_machine(tx: Tx, presented: str | None) -> dict[str, Any]:
    """The machine row for a live credential (with ``group_name``), else Unauthorized."""
    cred = parse_secret(presented, "a")
    if cred is None:
        raise Unauthorized("missing or malformed machine credential")
    row = tx.one(
        "SELECT m.id, m.group_id, m.name, m.state, m.cred_hash, m.in_done, m.labels, "
        "g.name AS group_name, g.user_id FROM machines m JOIN groups g ON g.id = m.group_id "
        "WHERE m.cred_id = ? AND g.deleted IS NULL",
        (cred.id,),
    )
    if row is None or row["cred_hash"] is None or not verify_secret(cred, row["cred_hash"]):
        raise Unauthorized("machine credential unknown or revoked", code="revoked")
    del row["cred_hash"]
    return row
