"""Secrets: master tokens, machine credentials and enrollment keys.

A secret looks like ``crcm_<id>_<secret>``: the id finds the row, only a SHA-256 of the
secret is stored, and the comparison is constant-time. The secret part carries 192 bits
from ``secrets``; SHA-256 without salt is enough for such high-entropy values (there is
nothing to brute-force), and keeps lookups cheap.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

__all__ = [
    "KINDS",
    "Secret",
    "derived_secret",
    "hash_secret",
    "new_secret",
    "parse_secret",
    "verify_secret",
]

KINDS = {
    "m": "master token",
    "a": "machine credential",
    "k": "enrollment key",
    "s": "dashboard session",
}


_HEX = frozenset("0123456789abcdef")
_URLSAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass(frozen=True)
class Secret:
    kind: str
    id: str
    secret: str

    def __str__(self) -> str:
        return f"crc{self.kind}_{self.id}_{self.secret}"

    @property
    def hash(self) -> str:
        return hash_secret(self.secret)


def new_secret(kind: str) -> Secret:
    if kind not in KINDS:
        raise ValueError(kind)
    return Secret(kind, secrets.token_hex(8), secrets.token_urlsafe(24))


def derived_secret(kind: str, seed: str, context: str) -> Secret:
    """The secret that ``seed`` (itself a secret, of at least 192 bits) gives for
    ``context``: the same seed and context give the same secret, shaped like
    ``new_secret``'s (HMAC-SHA256 keyed with the seed; the id and the secret part come
    from separate messages, so the id, which is logged, says nothing of the secret)."""
    if kind not in KINDS:
        raise ValueError(kind)
    key = seed.encode()
    ident = hmac.new(key, b"id\0" + context.encode(), hashlib.sha256).hexdigest()[:16]
    raw = hmac.new(key, b"secret\0" + context.encode(), hashlib.sha256).digest()[:24]
    return Secret(kind, ident, base64.urlsafe_b64encode(raw).decode())


def parse_secret(text: str | None, kind: str) -> Secret | None:
    """Split a presented secret; None when it is not one of ``kind`` at all."""
    if not text or len(text) > 200:
        return None
    prefix, _, rest = text.partition("_")
    ident, _, secret = rest.partition("_")
    if prefix != f"crc{kind}" or not ident or not secret:
        return None
    # Only the characters ``new_secret`` writes: anything else (a NUL, which PostgreSQL
    # text cannot hold; a lone surrogate, which does not encode) is no secret of ours.
    if not (set(ident) <= _HEX and set(secret) <= _URLSAFE):
        return None
    return Secret(kind, ident, secret)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def verify_secret(presented: Secret, stored_hash: str) -> bool:
    return hmac.compare_digest(presented.hash, stored_hash)
