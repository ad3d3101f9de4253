"""Fixtures of the tests that drive a store directly: each test once on SQLite and once
on PostgreSQL (a database of its own), under anyio's asyncio backend. A test module
imports the ones it uses (``from store_fixtures import store_fixture``: the fixture
``store``; named apart so that a test's own ``store`` parameter shadows nothing)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from cloudremotecontrol.server.store.base import Store, open_store


@pytest.fixture(name="anyio_backend")
def anyio_backend_fixture() -> str:
    return "asyncio"


@pytest.fixture(name="db_url", params=["sqlite", "postgresql"])
def db_url_fixture(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """An empty database of each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'crc.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(name="store")
async def store_fixture(db_url: str) -> AsyncIterator[Store]:
    """A started store on ``db_url``, closed after the test."""
    s = open_store(db_url)
    await s.start()
    yield s
    await s.close()
