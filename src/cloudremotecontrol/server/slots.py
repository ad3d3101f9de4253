"""Places held at once, per key, in one server process (a pull's upload, a credential's
key/value waits): a bound on what one client ties up, refused before the work starts."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Hashable, Iterator

from starlette.requests import HTTPConnection

from ..errors import CrcError

__all__ = ["Slots", "slots"]


class Slots:
    """How many places each key holds; ``hold`` takes one, or raises ``refused()`` when
    the key holds ``cap`` already. A place is given back however its holder ends."""

    def __init__(self) -> None:
        self._count: Counter[Hashable] = Counter()

    @contextlib.contextmanager
    def hold(self, key: Hashable, cap: int, refused: Callable[[], CrcError]) -> Iterator[None]:
        if self._count[key] >= cap:
            raise refused()
        self._count[key] += 1
        try:
            yield
        finally:
            self._count[key] -= 1
            if self._count[key] <= 0:
                del self._count[key]


def slots(conn: HTTPConnection, name: str) -> Slots:
    """The server process's ``Slots`` called ``name`` (made on first use)."""
    found: Slots | None = getattr(conn.app.state, name, None)
    if found is None:
        found = Slots()
        setattr(conn.app.state, name, found)
    return found
