"""Users and their master tokens (several per user, named, revocable)."""

from __future__ import annotations

import uuid
from typing import Any

from ...errors import Conflict, InvalidInput, NotFound, Unauthorized
from ...protocol.names import check_name
from ...protocol.tokens import new_secret, parse_secret, verify_secret
from ..store.base import Tx
from .common import audit, now

__all__ = [
    "add_token",
    "authenticate_master",
    "create_user",
    "list_tokens",
    "list_users",
    "revoke_token",
]


#: Who the audit says did what the server's operator did (users and their tokens).
OPERATOR = "admin"
#: The name of the master token a user is created with.
FIRST_TOKEN = "default"  # noqa: S105 -- a name, not a secret


def create_user(tx: Tx, name: str) -> str:
    """Create user ``name`` with a first token named ``default``; return that token."""
    check_name(name, "user")
    if name == OPERATOR:
        raise InvalidInput(
            f"user name {name!r} is reserved: the audit names the server's operator so "
            "(`crc server add-user`, tokens); choose another"
        )
    if tx.one("SELECT id FROM users WHERE name = ?", (name,)):
        raise Conflict(
            f"user {name!r} exists already; to give it another token use `crc server add-token`"
        )
    user_id = uuid.uuid4().hex
    tx.execute("INSERT INTO users (id, name, created) VALUES (?, ?, ?)", (user_id, name, now()))
    audit(tx, user_id, OPERATOR, "user.create", None, {"user": name})
    return _insert_token(tx, user_id, FIRST_TOKEN)


def _insert_token(tx: Tx, user_id: str, token_name: str) -> str:
    check_name(token_name, "token name")
    if tx.one(
        "SELECT id FROM master_tokens WHERE user_id = ? AND name = ? AND revoked IS NULL",
        (user_id, token_name),
    ):
        raise Conflict(f"a token named {token_name!r} exists already")
    secret = new_secret("m")
    tx.execute(
        "INSERT INTO master_tokens (id, user_id, name, hash, created) VALUES (?, ?, ?, ?, ?)",
        (secret.id, user_id, token_name, secret.hash, now()),
    )
    return str(secret)


def _user_id(tx: Tx, name: str) -> str:
    row = tx.one("SELECT id FROM users WHERE name = ?", (name,))
    if row is None:
        raise NotFound(f"no user {name!r}")
    return str(row["id"])


def add_token(tx: Tx, user_name: str, token_name: str) -> str:
    user_id = _user_id(tx, user_name)
    token = _insert_token(tx, user_id, token_name)
    audit(tx, user_id, OPERATOR, "token.create", None, {"token": token_name})
    return token


def revoke_token(tx: Tx, user_name: str, token_name: str) -> None:
    user_id = _user_id(tx, user_name)
    changed = tx.execute(
        "UPDATE master_tokens SET revoked = ? WHERE user_id = ? AND name = ? AND revoked IS NULL",
        (now(), user_id, token_name),
    )
    if not changed:
        raise NotFound(f"user {user_name!r} has no live token named {token_name!r}")
    audit(tx, user_id, OPERATOR, "token.revoke", None, {"token": token_name})


def list_tokens(tx: Tx, user_name: str) -> list[dict[str, Any]]:
    """User ``user_name``'s master tokens, revoked ones included, oldest first: their
    names and dates (never a secret: only hashes are stored)."""
    user_id = _user_id(tx, user_name)
    return tx.all(
        "SELECT name, created, revoked FROM master_tokens WHERE user_id = ? ORDER BY created, name",
        (user_id,),
    )


def list_users(tx: Tx) -> list[dict[str, Any]]:
    """Every user, by name: when created, how many live master tokens and live groups."""
    return tx.all(
        "SELECT u.name AS user, u.created, "
        "(SELECT COUNT(*) FROM master_tokens t WHERE t.user_id = u.id AND t.revoked IS NULL) "
        "AS tokens, "
        "(SELECT COUNT(*) FROM groups g WHERE g.user_id = u.id AND g.deleted IS NULL) "
        "AS groups "
        "FROM users u ORDER BY u.name",
    )


def authenticate_master(tx: Tx, presented: str | None) -> dict[str, Any]:
    """``{"user_id", "user"}`` for a live master token, else Unauthorized."""
    secret = parse_secret(presented, "m")
    if secret is None:
        raise Unauthorized("missing or malformed master token: run `crc login`")
    row = tx.one(
        "SELECT t.hash, t.user_id, u.name FROM master_tokens t JOIN users u ON u.id = t.user_id "
        "WHERE t.id = ? AND t.revoked IS NULL",
        (secret.id,),
    )
    if row is None or not verify_secret(secret, row["hash"]):
        raise Unauthorized("unknown or revoked master token")
    return {"user_id": row["user_id"], "user": row["name"]}
