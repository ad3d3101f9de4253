"""PostgreSQL for the tests: the server on 127.0.0.1:5432 (user postgres, trust auth),
a fresh database ``crc_test_<random>`` per test, dropped afterwards.

``CRC_TEST_POSTGRES`` overrides the admin URL. When the server cannot be reached the
tests that need it skip with the reason, unless ``CRC_REQUIRE_POSTGRES=1`` (CI), where
they fail. Use ``pg_url`` in a test (registered in conftest.py)::

    def test_x(pg_url, tmp_path):
        srv = ServerProcess(tmp_path / "srv", database=pg_url).start()
"""

from __future__ import annotations

import os
import secrets
import urllib.parse
from collections.abc import Iterator

import pytest

ADMIN_URL = os.environ.get("CRC_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


class PgCluster:
    """Creates and drops the test databases through an admin connection."""

    def __init__(self, admin_url: str) -> None:
        import psycopg

        self.admin_url = admin_url
        self._psycopg = psycopg
        self.created: list[str] = []

    def _admin(self):  # type: ignore[no-untyped-def]
        return self._psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5)

    def url(self, dbname: str) -> str:
        return urllib.parse.urlsplit(self.admin_url)._replace(path=f"/{dbname}").geturl()

    def create_database(self) -> str:
        name = f"crc_test_{secrets.token_hex(6)}"
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = urllib.parse.urlsplit(url).path.lstrip("/")
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self.created:
            self.created.remove(name)

    def terminate(self, url: str, query_prefix: str) -> int:
        """Kill the backends of ``url``'s database whose current query starts with
        ``query_prefix`` (e.g. "LISTEN"); return how many."""
        name = urllib.parse.urlsplit(url).path.lstrip("/")
        with self._admin() as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND query LIKE %s",
                (name, query_prefix + "%"),
            ).fetchall()
        return len(rows)


def _unreachable() -> str | None:
    try:
        import psycopg
    except ImportError as exc:
        return f"psycopg is not installed ({exc})"
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        parts = urllib.parse.urlsplit(ADMIN_URL)
        shown = parts._replace(
            netloc=parts.netloc.replace(f":{parts.password}@", ":***@")
            if parts.password
            else parts.netloc
        ).geturl()
        return f"cannot connect to {shown}: {str(exc).strip()}"
    return None


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    reason = _unreachable()
    if reason is not None:
        if os.environ.get("CRC_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required (CRC_REQUIRE_POSTGRES=1) but {reason}")
        pytest.skip(f"PostgreSQL tests skipped: {reason} (set CRC_TEST_POSTGRES)")
    cluster = PgCluster(ADMIN_URL)
    yield cluster
    for name in list(cluster.created):
        cluster.drop_database(cluster.url(name))


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh, empty database for this test."""
    url = pg_cluster.create_database()
    yield url
    pg_cluster.drop_database(url)
