"""`crc server` admin commands and the files and database they are given (the real `crc`
as a process, the real PostgreSQL): `init` changes nothing it refuses and replaces no
server's files without --force; a PostgreSQL URL that cannot be read is an input error;
a role without rights hears so; a missing teardown.key is not made anew silently."""

from __future__ import annotations

import json
import secrets
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest
from test_server_cli_faults import _crc, _one_error_line

from cloudremotecontrol.master.localrun import crc_argv, free_port


def _init(data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    port = free_port()
    return _crc(
        "server",
        "init",
        "--data-dir",
        str(data_dir),
        "--listen",
        f"127.0.0.1:{port}",
        "--url",
        f"https://127.0.0.1:{port}",
        *extra,
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_keeps_a_directorys_mode_and_refuses_one_others_may_write(tmp_path: Path) -> None:
    made = tmp_path / "made" / "srv"
    assert _init(made).returncode == 0
    assert _mode(made) == 0o700  # made by crc
    assert _mode(made / "key.pem") == 0o600 and _mode(made / "teardown.key") == 0o600
    # Refused (initialised already): nothing changes, the mode neither.
    made.chmod(0o750)
    assert "is initialised already" in _one_error_line(_init(made), 5)
    assert _mode(made) == 0o750
    # A directory of the user's own keeps its mode; the secrets are 0600 all the same,
    # also a key.pem --force replaces that someone made readable.
    own = tmp_path / "own"
    own.mkdir(mode=0o755)
    own.chmod(0o755)
    assert _init(own).returncode == 0
    assert _mode(own) == 0o755 and _mode(own / "key.pem") == 0o600
    (own / "key.pem").chmod(0o644)
    assert _init(own, "--force").returncode == 0
    assert _mode(own / "key.pem") == 0o600
    # Writable by others (a shared directory): refused, left as it was.
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    line = _one_error_line(_init(shared), 2)
    assert "may be written by other users (mode 1777)" in line and "chmod go-w" in line
    assert _mode(shared) == 0o1777 and list(shared.iterdir()) == []


@pytest.mark.parametrize("present", [["cert.pem", "key.pem"], ["teardown.key"], ["crc.db"]])
def test_init_replaces_no_servers_files_without_force(tmp_path: Path, present: list[str]) -> None:
    data = tmp_path / "srv"
    assert _init(data).returncode == 0
    (data / "server.json").unlink()
    for name in ("cert.pem", "key.pem", "teardown.key", "crc.db"):
        if name not in present:
            (data / name).unlink(missing_ok=True)
    if "crc.db" in present:
        (data / "crc.db").write_bytes(b"")
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    line = _one_error_line(_init(data), 5)
    assert f"holds a server's files already ({', '.join(present)})" in line, line
    assert "--force" in line
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before  # untouched
    r = _init(data, "--force")
    assert r.returncode == 0, r.stderr
    if "teardown.key" in present:  # --force makes a new certificate, keeps the key
        assert (data / "teardown.key").read_bytes() == before["teardown.key"]
    if "cert.pem" in present:
        assert (data / "cert.pem").read_bytes() != before["cert.pem"]


@pytest.mark.parametrize(
    "tail, expected",
    [
        ("127.0.0.1:abc/db", "the port 'abc' is not a number from 1 to 65535"),
        ("127.0.0.1:99999/db", "the port '99999' is not a number from 1 to 65535"),
        ("127.0.0.1/db?sslmode=bogus", "sslmode='bogus' is not one of disable, allow"),
        ("127.0.0.1/db?connect_timeout=soon", "connect_timeout='soon' is not a whole"),
    ],
)
def test_a_postgresql_url_that_cannot_be_read_is_an_input_error(
    tmp_path: Path, tail: str, expected: str
) -> None:
    url = f"postgresql://postgres:s3cret-pw@{tail}"
    data = tmp_path / "srv"
    assert _init(data).returncode == 0
    for command in (["list-users"], ["add-user", "carol"], ["run"]):
        r = _crc("server", *command, "--data-dir", str(data), "--database", url)
        line = _one_error_line(r, 2)
        assert line.startswith("crc: error: invalid PostgreSQL database URL: "), line
        assert expected in line, line
        assert "s3cret-pw" not in r.stdout + r.stderr


def _psql(url: str, *sql: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for one in sql:
            conn.execute(one)


def test_a_role_without_rights_is_told_so_and_reads_without_ddl(pg_url: str) -> None:
    r = _crc("server", "add-user", "carol", "--database", pg_url)
    assert r.returncode == 0, r.stderr
    role = f"crc_noperm_{secrets.token_hex(4)}"
    _psql(pg_url, f"CREATE ROLE {role} LOGIN", f"REVOKE CREATE ON SCHEMA public FROM {role}")
    _psql(pg_url, "REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    theirs = pg_url.replace("postgres@", f"{role}@", 1)
    try:
        r = _crc("server", "list-users", "--database", theirs)
        line = _one_error_line(r, 2)
        assert f"the role {role} lacks privileges there" in line, line
        assert "GRANT" in line and "createdb" not in line
        # Given the rights to read and write the tables (not to create any), it reads.
        _psql(
            pg_url,
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
        )
        r = _crc("server", "list-users", "--database", theirs, "--json")
        assert r.returncode == 0, r.stderr
        assert [u["user"] for u in json.loads(r.stdout)["users"]] == ["carol"]
    finally:
        _psql(pg_url, f"REASSIGN OWNED BY {role} TO postgres", f"DROP OWNED BY {role}")
        _psql(pg_url, f"DROP ROLE {role}")


def _seal_a_provider_key(db: sqlite3.Connection | None, pg: str | None) -> None:
    sql = (
        "INSERT INTO teardowns (group_id, provider, secret, status, updated) "
        "VALUES ('g1', 'vultr', 'sealed-token', 'armed', 0)"
    )
    if db is not None:
        db.execute(sql)
        db.commit()
    else:
        assert pg is not None
        _psql(pg, "SET session_replication_role = replica", sql)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_missing_teardown_key_is_not_made_anew_silently(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    data = tmp_path / "srv"
    assert _init(data).returncode == 0
    url = (
        f"sqlite:///{data / 'crc.db'}"
        if backend == "sqlite"
        else str(request.getfixturevalue("pg_url"))
    )
    r = _crc("server", "add-user", "carol", "--database", url)  # sets the database up
    assert r.returncode == 0, r.stderr
    if backend == "sqlite":
        with sqlite3.connect(data / "crc.db") as db:
            _seal_a_provider_key(db, None)
        db.close()
    else:
        _seal_a_provider_key(None, url)
    key = (data / "teardown.key").read_bytes()
    (data / "teardown.key").unlink()
    r = _crc("server", "run", "--data-dir", str(data), "--database", url)
    line = _one_error_line(r, 5)
    assert "refuses to start: the teardown key" in line, line
    assert "teardown.key is missing, but database" in line
    assert "holds 1 provider API key(s) of TTL teardowns" in line
    assert "--new-teardown-key" in line and "crc down" in line
    assert not (data / "teardown.key").exists()  # a refused start leaves no file
    assert key.decode().strip() not in r.stdout + r.stderr
    # --new-teardown-key makes one, and the server starts.
    proc = subprocess.Popen(
        crc_argv(
            "server",
            "run",
            "--data-dir",
            str(data),
            "--database",
            url,
            "--new-teardown-key",
            "--json",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline() or "{}")
        assert first.get("event") == "serving", first
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert (data / "teardown.key").exists() and (data / "teardown.key").read_bytes() != key
    assert _mode(data / "teardown.key") == 0o600
