"""The store seam: what the server needs from a database."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = ["Store", "Tx", "open_store"]

T = TypeVar("T")


class Tx(abc.ABC):
    """One transaction. SQL uses ``?`` placeholders and portable syntax (SQLite >= 3.35,
    PostgreSQL >= 12): ``ON CONFLICT``, ``RETURNING``; backends translate placeholders."""

    @abc.abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; return the number of rows changed."""

    @abc.abstractmethod
    def one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        """The first row as a dict, or None."""

    @abc.abstractmethod
    def all(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Every row as a dict."""

    def notify(self, group_id: str) -> None:
        """Ask the backend to wake event followers of ``group_id`` after commit."""
        self.notified.add(group_id)

    @property
    def notified(self) -> set[str]:
        if not hasattr(self, "_notified"):
            self._notified: set[str] = set()
        return self._notified


class Store(abc.ABC):
    """Runs operations. ``write`` is durable when it returns; ``read`` sees commits."""

    dialect: str = ""

    def __init__(self) -> None:
        self._listeners: list[Callable[[set[str]], None]] = []

    def on_commit(self, listener: Callable[[set[str]], None]) -> None:
        """Call ``listener(group_ids)`` after commits that produced events (any replica)."""
        self._listeners.append(listener)

    def _fire(self, groups: set[str]) -> None:
        if groups:
            for listener in self._listeners:
                listener(groups)

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def write(self, op: Callable[..., T], *args: Any) -> T:
        """Run ``op(tx, *args)`` in a transaction; committed when this returns."""

    @abc.abstractmethod
    async def read(self, op: Callable[..., T], *args: Any) -> T:
        """Run ``op(tx, *args)`` read-only."""

    @abc.abstractmethod
    def write_sync(self, op: Callable[..., T], *args: Any) -> T:
        """Blocking variant for admin commands (``crc server add-user``)."""


def open_store(url: str) -> Store:
    """``sqlite:///path/to/file.db`` or ``postgresql://user@host/db``."""
    from ...errors import InvalidInput

    if url.startswith("sqlite:///"):
        from .sqlite import SqliteStore

        return SqliteStore(url[len("sqlite:///"):])
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from .postgres import PostgresStore
        except ImportError:
            raise InvalidInput("this server has no PostgreSQL support installed: use the "
                               "default SQLite database (omit --database)") from None
        return PostgresStore(url)
    raise InvalidInput(f"unsupported database URL {url!r}: use sqlite:///PATH or postgresql://…")
