"""Persistence: one set of operations (``ops``) run by one of two backends.

Every operation is a plain function ``op(tx, ...)`` over a small transaction interface
(``Tx``), so the domain logic exists once; both backends run writes in one writer
thread with group commit; the PostgreSQL backend reads through a connection pool.
"""

from .base import Store, Tx, open_store

__all__ = ["Store", "Tx", "open_store"]
