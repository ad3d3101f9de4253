"""What every replica of one database must share, recorded in the database.

Replicas on one PostgreSQL database must serve one TLS certificate (clients and agents
pin one fingerprint, and move from one replica to another) and hold one teardown key
(``DATA_DIR/teardown.key``: a provider API key stored through one replica is decrypted
by whichever replica runs the group's TTL teardown). The first replica to start records
its certificate's fingerprint and a check value of its teardown key in the database
(table ``replica_identity``); every replica starting later compares its own with them,
and one that differs refuses to start, naming the file and how to fix it.

The check value is ``HMAC-SHA256(key, CHECK_MESSAGE)``: it tells two keys apart, and
without the key it cannot be made; it gives nothing that helps recover the key (the key
is 32 random bytes). It is never logged either.

A server on SQLite is alone on its database: nothing is recorded or checked there.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from ...errors import Conflict
from .base import Tx

__all__ = ["ReplicaIdentity", "check_identity", "teardown_key_check"]

#: What the teardown key's check value is the HMAC of.
CHECK_MESSAGE = b"cloudremotecontrol teardown key check v1"
_CERTIFICATE = "certificate"
_TEARDOWN_KEY = "teardown_key"


def teardown_key_check(key: bytes) -> str:
    """The check value of a teardown key (not secret; see the module's docstring)."""
    return "hmac-sha256:" + hmac.new(key.strip(), CHECK_MESSAGE, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class ReplicaIdentity:
    """This replica's part of what replicas share. ``fingerprint`` None: it serves no
    certificate (``--insecure``), so the certificate is neither recorded nor checked.
    ``new_certificate``/``new_teardown_key``: record this replica's in place of the one
    recorded (``crc server run --new-certificate``/``--new-teardown-key``)."""

    data_dir: str
    fingerprint: str | None
    teardown_check: str
    new_certificate: bool = False
    new_teardown_key: bool = False

    def __repr__(self) -> str:  # the check value is not secret, but has no use in a log
        return f"ReplicaIdentity(data_dir={self.data_dir!r}, fingerprint={self.fingerprint!r})"


def check_identity(tx: Tx, me: ReplicaIdentity, now: float, where: str) -> list[str]:
    """Record what is not recorded yet (and what ``me`` asks to record anew); raise
    ``Conflict`` naming each file of this replica that differs from the one recorded.
    Returns what was recorded anew in place of another (for the log). ``where``: the
    database, as messages show it. Runs in the migrations' transaction, under their
    lock: of replicas starting together on a new database, the first records."""
    recorded = {
        r["name"]: str(r["value"]) for r in tx.all("SELECT name, value FROM replica_identity")
    }
    mine: list[tuple[str, str, bool]] = [(_TEARDOWN_KEY, me.teardown_check, me.new_teardown_key)]
    if me.fingerprint is not None:
        mine.insert(0, (_CERTIFICATE, me.fingerprint, me.new_certificate))
    wrong: list[str] = []
    renewed: list[str] = []
    for name, value, renew in mine:
        old = recorded.get(name)
        if old is None:
            tx.execute(
                "INSERT INTO replica_identity (name, value, recorded) VALUES (?, ?, ?)",
                (name, value, now),
            )
        elif hmac.compare_digest(old.encode(), value.encode()):
            continue
        elif renew:
            tx.execute(
                "UPDATE replica_identity SET value = ?, recorded = ? WHERE name = ?",
                (value, now, name),
            )
            renewed.append(name)
        else:
            wrong.append(name)
    if wrong:
        raise Conflict(_mismatch(me, wrong, recorded, where), code="replica_mismatch")
    return [
        f"the certificate {me.data_dir}/cert.pem ({me.fingerprint})"
        if name == _CERTIFICATE
        else f"the teardown key {me.data_dir}/teardown.key"
        for name in renewed
    ]


def _mismatch(me: ReplicaIdentity, wrong: list[str], recorded: dict[str, str], where: str) -> str:
    d = me.data_dir
    parts: list[str] = []
    files: list[str] = []
    flags: list[str] = []
    if _CERTIFICATE in wrong:
        parts.append(
            f"its certificate {d}/cert.pem ({me.fingerprint}) is not the one the replicas "
            f"of database {where} serve ({recorded[_CERTIFICATE]}): clients and agents pin "
            "that one and could not use this replica"
        )
        files += ["cert.pem", "key.pem"]
        flags.append(
            "--new-certificate once, on the replica whose certificate you renewed on "
            "purpose (then copy cert.pem and key.pem to the others and restart them)"
        )
    if _TEARDOWN_KEY in wrong:
        parts.append(
            f"its teardown key {d}/teardown.key is not the one of the replicas of database "
            f"{where}: the provider API keys they stored for TTL teardowns could not be "
            "read here, nor those stored here there (machines would be left running)"
        )
        files.append("teardown.key")
        flags.append(
            "--new-teardown-key once, only if the first replica's teardown.key is lost "
            "for good (the TTL teardowns armed before cannot run then: `crc down` those groups)"
        )
    return (
        "this replica refuses to start: "
        + "; and ".join(parts)
        + f". Copy {', '.join(files)} from the first replica's data directory into {d} "
        "(every replica uses the same files), or start with " + "; or ".join(flags)
    )
