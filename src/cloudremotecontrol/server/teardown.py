"""Teardown at the provider when a group's TTL passes, for owners who opted in.

The provider API key a master hands over (``PUT /v1/groups/G/teardown``) is encrypted
with the server's own key, ``DATA_DIR/teardown.key`` (Fernet: AES-128-CBC + HMAC-SHA256,
made by ``crc server init`` or a first start, mode 0600), so a copy of the database alone
does not give it away. A missing file is made anew only where no database holds keys
sealed with the old one, or with ``crc server run --new-teardown-key``.
Replicas sharing one PostgreSQL database need the same file (copy it with the TLS
certificate). The key is never logged, never returned by the API, and dropped from the
database once the machines are gone.

The provider code is the master's (``cloudremotecontrol.providers``: the same
``destroy_scenario`` as ``crc down``), acting with the stored key
(``Provider.for_teardown``). Where it calls is the server's own setting (for Vultr
``CRC_VULTR_API_URL`` in the server's environment, else Vultr's), never a URL from the
request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from ..errors import Conflict, CrcError
from ..providers import Feature, destroy_scenario, provider_class
from ..providers.destroy import VERIFY_SECONDS
from .ops import teardown as ops
from .store.base import Store

__all__ = [
    "TeardownCipher",
    "destroy_at_provider",
    "forget_made_key",
    "key_made_now",
    "load_cipher",
    "missing_key_message",
    "run_due_teardowns",
]

log = logging.getLogger("crc.teardown")
KEY_FILE = "teardown.key"
_running: set[asyncio.Task[None]] = set()


class TeardownCipher:
    """Encrypts provider keys at rest with the server's teardown key."""

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    def encrypt(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except (InvalidToken, ValueError):
            raise CrcError(
                f"cannot decrypt the stored provider key: this server's "
                f"{KEY_FILE} is not the one it was stored with (replicas must "
                f"share the file)",
                code="teardown_key",
            ) from None


def load_cipher(
    data_dir: Path, *, new_key: bool = False, database: str | None = None
) -> TeardownCipher:
    """The server's teardown cipher, its key file (0600) made when missing. ``database``
    (``crc server run``'s): a SQLite database that holds provider keys sealed with a key
    refuses a missing file (``Conflict``) unless ``new_key`` (``--new-teardown-key``);
    a PostgreSQL one is checked when the store opens (``key_made_now``,
    store/postgres.py), which removes the file a refused start made
    (``forget_made_key``)."""
    path = Path(data_dir) / KEY_FILE
    if not path.exists():
        if database is not None and not new_key:
            _refuse_missing_key(path, database)
        key = Fernet.generate_key()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key + b"\n")
        _made.add(path.resolve())
    try:
        return TeardownCipher(path.read_bytes().strip())
    except ValueError:
        raise CrcError(
            f"{path} is not a teardown key (44 characters of urlsafe base64): "
            "restore it, or delete it to make a new one (stored provider keys "
            "are then unreadable)",
            code="config",
        ) from None


#: Key files this process made (``load_cipher``): a start refused later removes its own.
_made: set[Path] = set()


def key_made_now(data_dir: str | Path) -> bool:
    """Whether this process made ``DATA_DIR/teardown.key`` (it was missing)."""
    return (Path(data_dir) / KEY_FILE).resolve() in _made


def forget_made_key(data_dir: str | Path) -> None:
    """Remove the key file this process made (a refused start leaves nothing behind)."""
    path = (Path(data_dir) / KEY_FILE).resolve()
    if path in _made:
        _made.discard(path)
        with contextlib.suppress(OSError):
            path.unlink()


def missing_key_message(path: Path, where: str, sealed: int, who: str = "server") -> str:
    """Why a start with no key file is refused: the database holds keys sealed with one."""
    held = f"{sealed} provider API key(s) of TTL teardowns" if sealed else "provider API keys"
    return (
        f"this {who} refuses to start: the teardown key {path} is missing, but database "
        f"{where} holds {held} "
        "sealed with one: restore the file (a replica on the same database has it; "
        "copy it with the certificate). Only if it is lost for good, start once with "
        "--new-teardown-key: it makes a new key, and the TTL teardowns armed before "
        "cannot run (destroy those groups' machines with `crc down`)"
    )


def _refuse_missing_key(path: Path, database: str) -> None:
    """A SQLite database with sealed provider keys: its key file must not be made anew
    silently (those keys would turn unreadable)."""
    if not database.startswith("sqlite:///"):
        return  # PostgreSQL: checked where the store opens
    db = database[len("sqlite:///") :]
    if not db or db == ":memory:" or db.startswith("file:") or not os.path.isfile(db):
        return
    try:
        conn = sqlite3.connect(f"{Path(db).resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return
    try:
        row = conn.execute("SELECT COUNT(*) FROM teardowns WHERE secret IS NOT NULL").fetchone()
    except sqlite3.Error:  # no such table (a database set up before), or not one of crc's
        return
    finally:
        conn.close()
    if row and int(row[0]) > 0:
        raise Conflict(missing_key_message(path, db, int(row[0])), code="teardown_key")


def destroy_at_provider(provider: str, api_key: str, group: str) -> dict[str, Any]:
    """Destroy every instance of ``group`` at ``provider`` and check none is left;
    returns ``{"destroyed": [ids], **cleaned}`` (Vultr: ``"startup_scripts": n``).
    Raises on failure."""
    cls = provider_class(provider)
    if not cls.capabilities.supports(Feature.SERVER_TEARDOWN):
        raise CrcError(f"no teardown for provider {provider!r}", code="provider_error")
    with cls.for_teardown(api_key) as p:
        gone = destroy_scenario(p, group, verify_timeout=VERIFY_SECONDS)
    if gone.left:
        waited = any(i.id not in gone.refused for i in gone.left)
        raise CrcError(
            f"still at {provider}{f' after {VERIFY_SECONDS:.0f} s' if waited else ''}: "
            + ", ".join(
                f"{i.id} ({gone.errors[i.id]})" if i.id in gone.errors else i.id for i in gone.left
            ),
            code="provider_error",
        )
    return {"destroyed": [i.id for i in gone.destroyed], **gone.cleaned}


async def run_due_teardowns(store: Store, cipher: TeardownCipher | None) -> None:
    """Claim the teardowns that are due and carry them out, one thread each."""
    if cipher is None:
        return
    due = await store.read(ops.due_teardowns)
    if not due:
        return
    for item in await store.write(ops.claim_teardowns, due):
        task = asyncio.get_running_loop().create_task(_one(store, cipher, item))
        _running.add(task)
        task.add_done_callback(_running.discard)


async def _one(store: Store, cipher: TeardownCipher, item: dict[str, Any]) -> None:
    result: dict[str, Any] | None = None
    error: str | None = None
    try:
        api_key = cipher.decrypt(str(item["secret"] or ""))
        result = await asyncio.to_thread(
            destroy_at_provider, item["provider"], api_key, item["group"]
        )
    except CrcError as exc:
        error = exc.message
    except Exception as exc:  # noqa: BLE001 -- recorded for the owner, retried later
        error = f"{type(exc).__name__}: {exc}"
    if error:
        log.warning("teardown of group %s at %s failed: %s", item["group"], item["provider"], error)
    with contextlib.suppress(CrcError):
        await store.write(ops.finish_teardown, item["group_id"], item["attempts"], result, error)
