"""Persistence: one set of operations (``ops``) run by one of two backends.

Every operation is a plain function ``op(tx, ...)`` over a small transaction interface
(``Tx``), so the domain logic exists once; the SQLite backend runs operations in one
writer thread with group commit, the PostgreSQL backend in a connection pool.
"""

from .base import Store, Tx, open_store

__all__ = ["Store", "Tx", "open_store"]
