"""Teardown at the provider when a group's TTL passes, for owners who opted in.

The provider API key a master hands over (``PUT /v1/groups/G/teardown``) is encrypted
with the server's own key, ``DATA_DIR/teardown.key`` (Fernet: AES-128-CBC + HMAC-SHA256,
made at first start, mode 0600), so a copy of the database alone does not give it away.
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
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from ..errors import CrcError
from ..providers import Feature, destroy_scenario, provider_class
from ..providers.destroy import VERIFY_SECONDS
from .ops import teardown as ops
from .store.base import Store

__all__ = ["TeardownCipher", "destroy_at_provider", "load_cipher", "run_due_teardowns"]

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


def load_cipher(data_dir: Path) -> TeardownCipher:
    """The server's teardown cipher, its key file made on first use (0600)."""
    path = Path(data_dir) / KEY_FILE
    if not path.exists():
        key = Fernet.generate_key()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key + b"\n")
    try:
        return TeardownCipher(path.read_bytes().strip())
    except ValueError:
        raise CrcError(
            f"{path} is not a teardown key (44 characters of urlsafe base64): "
            "restore it, or delete it to make a new one (stored provider keys "
            "are then unreadable)",
            code="config",
        ) from None


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
