"""Replicas of one PostgreSQL database serve one certificate and hold one teardown key:
the first to start records them (a fingerprint, a check value of the key: never the
key), and one that differs refuses to start, exit 5, in one line naming the file and
how to fix it. A renewal is recorded with ``--new-certificate`` / ``--new-teardown-key``;
a database made before anything was recorded takes the first replica's; a server on
SQLite, alone on its database, checks nothing."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import psycopg
import pytest

from cloudremotecontrol.master.localrun import ServerProcess, crc_argv
from cloudremotecontrol.server.ops import users
from cloudremotecontrol.server.store import schema
from cloudremotecontrol.server.store.base import open_store


def _run(data: Path, database: str | None, *extra: str) -> subprocess.CompletedProcess[str]:
    """``crc server run`` expected to stop at once (a replica that starts would serve on:
    the timeout then fails the test)."""
    args = ["server", "run", "--data-dir", str(data), *extra]
    if database:
        args += ["--database", database]
    return subprocess.run(crc_argv(*args), capture_output=True, text=True, timeout=30)


def _refused(r: subprocess.CompletedProcess[str]) -> str:
    """The one error line of a replica that refused to start."""
    said = r.stdout + r.stderr
    assert r.returncode == 5, (r.returncode, said)
    assert "Traceback" not in said and "serving" not in said, said
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("crc: error: "), r.stderr
    assert "this replica refuses to start" in lines[0], lines[0]
    return lines[0]


def _init(data: Path, port: int) -> None:
    r = subprocess.run(
        crc_argv(
            "server",
            "init",
            "--data-dir",
            str(data),
            "--listen",
            f"127.0.0.1:{port}",
            "--url",
            f"https://127.0.0.1:{port}",
            "--force",
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr


def _recorded(database: str) -> dict[str, str]:
    with psycopg.connect(database) as conn:
        rows = conn.execute("SELECT name, value FROM replica_identity").fetchall()
    return {str(name): str(value) for name, value in rows}


def test_a_replica_with_another_certificate_or_teardown_key_refuses_to_start(
    pg_url: str, tmp_path: Path
) -> None:
    first = ServerProcess(tmp_path / "r0", database=pg_url).start()
    second = None
    try:
        key = (first.data_dir / "teardown.key").read_text().strip()
        cases = {
            "both": ((), ["cert.pem", "teardown.key"]),
            "cert": (("teardown.key",), ["cert.pem"]),
            "key": (("cert.pem", "key.pem"), ["teardown.key"]),
        }
        for name, (copied, differ) in cases.items():
            other = ServerProcess(tmp_path / name)
            other.init()  # a data dir of its own: a certificate and a key of its own
            for f in copied:
                shutil.copy2(first.data_dir / f, other.data_dir / f)
            r = _run(other.data_dir, pg_url)
            line = _refused(r)
            for f in ("cert.pem", "teardown.key"):
                assert (f"{other.data_dir}/{f}" in line) == (f in differ), (name, line)
            assert "from the first replica's data directory" in line, line
            if "cert.pem" in differ:
                assert first.fingerprint in line and "--new-certificate" in line, line
            if "teardown.key" in differ:
                assert "--new-teardown-key" in line, line
            assert key not in r.stdout + r.stderr
        # With the first replica's files a replica starts, serving the pinned certificate.
        second = first.replica(tmp_path / "r1").start()
        assert second.fingerprint == first.fingerprint
        recorded = _recorded(pg_url)
        assert recorded["certificate"] == first.fingerprint
        assert recorded["teardown_key"].startswith("hmac-sha256:")
        assert key not in recorded["teardown_key"]
    finally:
        for srv in (first, second):
            if srv is not None:
                srv.stop()
    assert key not in first.log_path.read_text()


def test_a_renewed_certificate_or_lost_teardown_key_is_recorded_when_asked_then_required(
    pg_url: str, tmp_path: Path
) -> None:
    first = ServerProcess(tmp_path / "r0", database=pg_url).start()
    old = first.replica(tmp_path / "old")  # a copy of the files before the renewal
    first.stop()
    _init(first.data_dir, first.port)  # a new certificate (the teardown key is kept)
    line = _refused(_run(first.data_dir, pg_url))
    assert f"{first.data_dir}/cert.pem" in line and "teardown.key" not in line, line
    renewed = ServerProcess(first.data_dir, first.port, pg_url, args=["--new-certificate"])
    try:
        renewed.start()
        assert renewed.fingerprint != first.fingerprint
        assert "recorded the certificate" in renewed.log_path.read_text()
    finally:
        renewed.stop()
    assert _recorded(pg_url)["certificate"] == renewed.fingerprint
    line = _refused(_run(old.data_dir, pg_url))  # the old certificate is refused now
    assert f"{old.data_dir}/cert.pem" in line and renewed.fingerprint in line, line
    # The teardown key lost: a new one is made at start, refused until recorded.
    (first.data_dir / "teardown.key").unlink()
    line = _refused(_run(first.data_dir, pg_url))
    assert f"{first.data_dir}/teardown.key" in line and "cert.pem" not in line, line
    again = ServerProcess(first.data_dir, first.port, pg_url, args=["--new-teardown-key"])
    try:
        again.start()
    finally:
        again.stop()
    line = _refused(_run(old.data_dir, pg_url))
    assert "cert.pem" in line and "teardown.key" in line, line


def test_a_database_made_before_takes_the_first_replica_to_start(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database of the version before the record (users in it already): the first
    replica to start after the upgrade records its files, another is refused."""
    recording = next(
        v for v, sql in schema.MIGRATIONS if "replica_identity" in " ".join(sql("postgresql"))
    )
    monkeypatch.setattr(schema, "MIGRATIONS", [m for m in schema.MIGRATIONS if m[0] < recording])
    before = open_store(pg_url)
    try:
        before.open_sync()
        before.write_sync(users.create_user, "alice")
    finally:
        before.close_sync()
    monkeypatch.undo()
    first = ServerProcess(tmp_path / "b", database=pg_url).start()
    try:
        assert _recorded(pg_url)["certificate"] == first.fingerprint
        other = ServerProcess(tmp_path / "a")
        other.init()
        line = _refused(_run(other.data_dir, pg_url))
        assert "cert.pem" in line and "teardown.key" in line, line
    finally:
        first.stop()


def test_a_sqlite_server_records_nothing_and_takes_the_renewal_options(tmp_path: Path) -> None:
    """Alone on its database: a new certificate and teardown key need no option, and
    the options change nothing."""
    srv = ServerProcess(tmp_path / "srv").start()
    srv.stop()
    _init(srv.data_dir, srv.port)
    (srv.data_dir / "teardown.key").unlink()
    again = ServerProcess(srv.data_dir, srv.port)
    try:
        again.start()
    finally:
        again.stop()
    options = ["--new-certificate", "--new-teardown-key"]
    once_more = ServerProcess(srv.data_dir, srv.port, args=options)
    try:
        once_more.start()
    finally:
        once_more.stop()
    with sqlite3.connect(srv.data_dir / "crc.db") as db:
        assert db.execute("SELECT COUNT(*) FROM replica_identity").fetchone() == (0,)
    db.close()
