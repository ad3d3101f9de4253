"""`crc server …` (the real `crc` as a process) on what it cannot use: a listen address
another process holds, a database URL with no file, a damaged data directory, a bad
`--url` / `--san`, a mistyped `--database` for an admin command. Each is one
`crc: error: …` line and a documented exit code, never a traceback, a false "serving"
line, or a file written."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudremotecontrol.master.localrun import crc_argv, free_port


def _crc(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(crc_argv(*args), capture_output=True, text=True, timeout=timeout)


def _one_error_line(r: subprocess.CompletedProcess[str], code: int) -> str:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("crc: error: "), lines
    return lines[0]


def _init(data_dir: Path, port: int) -> None:
    r = _crc(
        "server",
        "init",
        "--data-dir",
        str(data_dir),
        "--listen",
        f"127.0.0.1:{port}",
        "--url",
        f"https://127.0.0.1:{port}",
    )
    assert r.returncode == 0, r.stderr


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port another process's socket (this test's) listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


@pytest.mark.parametrize("extra", [[], ["--json"], ["--insecure"]])
def test_a_listen_address_in_use_is_one_line_exit_5_and_no_serving(
    tmp_path: Path, held_port: int, extra: list[str]
) -> None:
    data = tmp_path / "srv"
    _init(data, held_port)
    r = _crc("server", "run", "--data-dir", str(data), *extra, timeout=60)
    line = _one_error_line(r, 5)
    assert f"127.0.0.1:{held_port} is in use by another process" in line
    assert "serving" not in r.stdout + r.stderr and "stopped" not in r.stdout + r.stderr
    assert r.stdout == ""
    assert not (data / "crc.db").exists()  # nothing started


def test_a_sqlite_url_without_a_path_is_an_input_error(tmp_path: Path) -> None:
    data = tmp_path / "srv"
    port = free_port()
    _init(data, port)
    r = _crc("server", "run", "--data-dir", str(data), "--database", "sqlite:///")
    line = _one_error_line(r, 2)
    assert "invalid database URL 'sqlite:///': no file path" in line
    assert "serving" not in r.stderr


def test_a_server_that_runs_still_says_serving_then_stopped(tmp_path: Path) -> None:
    data = tmp_path / "srv"
    port = free_port()
    _init(data, port)
    proc = subprocess.Popen(
        crc_argv("server", "run", "--data-dir", str(data), "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["event"] == "serving" and first["listen"] == f"127.0.0.1:{port}"
        socket.create_connection(("127.0.0.1", port), timeout=5).close()  # it listens
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert json.loads(out.splitlines()[-1])["event"] == "stopped"


def _damage(data: Path, how: str) -> Path:
    """Make ``data`` damaged; return the --data-dir to give."""
    if how == "not-a-dir":
        data.write_text("a file\n")
        return data
    data.mkdir()
    if how == "dir":
        (data / "server.json").mkdir()
    else:
        (data / "server.json").write_text(how + "\n")
    return data


@pytest.mark.parametrize(
    "how, expected",
    [
        ("{}", 'server.json is damaged: no "url"'),
        ("[]", "server.json is damaged: expected a JSON object"),
        ('{"url": 7}', 'server.json is damaged: no "url"'),
        ('{"url": "https://h:1", "listen": 5}', 'server.json is damaged: "listen"'),
        ("dir", "server.json is damaged: it is a directory"),
        ("not-a-dir", "is a file, not a directory"),
    ],
)
@pytest.mark.parametrize(
    "command", [["list-users"], ["add-user", "carol"], ["list-tokens", "carol"], ["run"]]
)
def test_a_damaged_data_dir_is_one_line_and_exit_2(
    tmp_path: Path, how: str, expected: str, command: list[str]
) -> None:
    where = _damage(tmp_path / "srv", how)
    r = _crc("server", *command, "--data-dir", str(where))
    line = _one_error_line(r, 2)
    assert str(where) in line and expected in line, line
    assert not (where / "crc.db").exists() if where.is_dir() else True


def test_a_data_dir_under_a_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x\n")
    for command in (["list-users"], ["run"]):
        r = _crc("server", *command, "--data-dir", str(a_file / "srv"))
        line = _one_error_line(r, 2)
        assert f"{a_file / 'srv'} is under a file, not a directory" in line


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--url", "not a url"], "invalid --url 'not a url'"),
        (["--url", "http://127.0.0.1:8443"], "the server speaks HTTPS"),
        (["--url", "https://127.0.0.1:8443/crc"], "no path, query or fragment"),
        (["--url", "https://127.0.0.1:8443?x=1"], "no path, query or fragment"),
        (["--url", "https://127.0.0.1:8443#x"], "no path, query or fragment"),
        (["--url", "https://u:pw@127.0.0.1:8443"], "no user name or password"),
        (["--url", "https://127.0.0.1:99999"], "the port must be 1-65535"),
        (["--url", "https://bad_host!:8443"], "the host must be a DNS name or an IP"),
        (["--san", "bad name!"], "invalid --san 'bad name!'"),
        (["--san", "-x.example"], "invalid --san '-x.example'"),
    ],
)
def test_init_refuses_a_bad_url_or_san_and_writes_nothing(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    data = tmp_path / "srv"
    r = _crc("server", "init", "--data-dir", str(data), "--listen", "127.0.0.1:18443", *args)
    line = _one_error_line(r, 2)
    assert expected in line, line
    assert not data.exists()


def test_init_takes_a_good_url_and_sans(tmp_path: Path) -> None:
    from cryptography import x509

    data = tmp_path / "srv"
    r = _crc(
        "server",
        "init",
        "--data-dir",
        str(data),
        "--listen",
        "127.0.0.1:18443",
        "--url",
        "https://crc.example.net:8443/",
        "--san",
        "crc.example.net",
        "--san",
        "10.0.0.5",
        "--san",
        "::1",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["url"] == "https://crc.example.net:8443"
    assert json.loads((data / "server.json").read_text())["url"] == "https://crc.example.net:8443"
    cert = x509.load_pem_x509_certificate((data / "cert.pem").read_bytes())
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "crc.example.net" in alt.get_values_for_type(x509.DNSName)
    assert {str(a) for a in alt.get_values_for_type(x509.IPAddress)} >= {"10.0.0.5", "::1"}


def test_a_command_that_only_reads_never_makes_a_database_it_is_told_of(tmp_path: Path) -> None:
    """(One that writes, add-user, makes a new database as `crc server run` does:
    tests/system/test_store.py migrates one from three add-user processes at once.)"""
    typo = tmp_path / "TYPO.db"
    for command in (["list-users"], ["list-tokens", "carol"]):
        r = _crc("server", *command, "--database", f"sqlite:///{typo}")
        line = _one_error_line(r, 4)
        assert f"no database at {typo}" in line, line
        # True of every admin command: add-user makes one (as `crc server run` does).
        assert "`crc server run` and `crc server add-user` make a new database" in line
        assert "the admin commands that only read (list-users, list-tokens) never do" in line
        assert not typo.exists()
    r = _crc("server", "list-users", "--database", f"sqlite:///{tmp_path}")
    assert "is a directory, not a file" in _one_error_line(r, 2)


def test_init_then_add_user_before_the_first_run_still_works(tmp_path: Path) -> None:
    """The documented order (docs/deploy-vultr.md): the data dir's own database is made
    by the first command that needs it; the same file named by --database works too."""
    data = tmp_path / "srv"
    _init(data, free_port())
    r = _crc("server", "add-user", "alice", "--data-dir", str(data), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["token"].startswith("crcm_")
    r = _crc("server", "list-users", "--database", f"sqlite:///{data / 'crc.db'}", "--json")
    assert r.returncode == 0, r.stderr
    assert [u["user"] for u in json.loads(r.stdout)["users"]] == ["alice"]
    # The audit names the operator "admin": no user may be called so.
    r = _crc("server", "add-user", "admin", "--data-dir", str(data))
    assert r.returncode == 2, r.stderr
    assert "user name 'admin' is reserved" in r.stderr and "Traceback" not in r.stderr
    r = _crc("server", "list-users", "--data-dir", str(data), "--json")
    assert [u["user"] for u in json.loads(r.stdout)["users"]] == ["alice"]


def _database(kind: str, tmp_path: Path) -> str:
    """A --database URL the server cannot use, of KIND."""
    if kind == "not a database":
        (tmp_path / "other.db").write_text("another program's file\n")
        return f"sqlite:///{tmp_path / 'other.db'}"
    if kind == "under a file":
        (tmp_path / "a-file").write_text("x\n")
        return f"sqlite:///{tmp_path / 'a-file' / 'crc.db'}"
    if kind == "postgres unreachable":
        with socket.socket() as s:  # a loopback port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return f"postgresql://crc:s3cret-pw@127.0.0.1:{port}/crc"
    assert kind == "postgres url invalid"
    return "postgresql://crc:s3cret-pw@[::1/crc"


_UNUSABLE = {
    "not a database": (2, "other.db is damaged or not a CloudRemoteControl database"),
    "under a file": (2, "cannot use the database"),
    "postgres unreachable": (6, "cannot connect to PostgreSQL at 127.0.0.1:"),
    "postgres url invalid": (2, "invalid PostgreSQL database URL"),
}


@pytest.mark.parametrize(
    "kind, command",
    [
        (kind, command)
        for kind in _UNUSABLE
        for command in (["run"], ["add-user", "carol"], ["list-users"])
        # A command that only reads says there is no database there (exit 4, above).
        if not (kind == "under a file" and command == ["list-users"])
    ],
)
def test_a_database_that_cannot_be_used_is_one_line_and_its_exit_code(
    tmp_path: Path, kind: str, command: list[str]
) -> None:
    """Not uvicorn's traceback of the failed startup and "the server did not start:
    see the log above" (exit 1), nor sqlite3's or psycopg's traceback of an admin
    command."""
    code, expected = _UNUSABLE[kind]
    data = tmp_path / "srv"
    _init(data, free_port())
    url = _database(kind, tmp_path)
    r = _crc("server", *command, "--data-dir", str(data), "--database", url)
    line = _one_error_line(r, code)
    assert expected in line, line
    assert "s3cret-pw" not in r.stdout + r.stderr
    assert "serving" not in r.stdout + r.stderr and r.stdout == ""
    if kind == "not a database":  # left as it was
        assert (tmp_path / "other.db").read_text() == "another program's file\n"


def _psql(url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


def _tables(url: str) -> list[str]:
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        ).fetchall()
    return [r[0] for r in rows]


@pytest.mark.parametrize(
    "url, expected",
    [
        ("postgresql://crc:s3cret-pw@127.0.0.1:5432", "the PostgreSQL database URL names no"),
        ("postgresql://", "the PostgreSQL database URL names no database"),
        (
            "postgresq://crc:s3cret-pw@127.0.0.1/crc",
            "unsupported database URL 'postgresq://crc:***@",
        ),
    ],
)
def test_a_database_url_without_a_database_or_with_a_typo_is_refused_its_password_unshown(
    tmp_path: Path, url: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a database name libpq takes the user's: crc's tables would be made in the
    `postgres` database (or another's)."""
    monkeypatch.delenv("PGDATABASE", raising=False)
    for command in (["add-user", "carol"], ["list-users"]):
        r = _crc("server", *command, "--database", url)
        line = _one_error_line(r, 2)
        assert expected in line, line
        assert "s3cret-pw" not in r.stdout + r.stderr


def test_an_empty_postgresql_database_is_set_up_only_by_a_command_that_writes(
    pg_url: str,
) -> None:
    for command in (["list-users"], ["list-tokens", "carol"]):
        r = _crc("server", *command, "--database", pg_url)
        assert "holds no CloudRemoteControl data: check the URL" in _one_error_line(r, 4)
    assert _tables(pg_url) == []  # nothing made in it
    r = _crc("server", "add-user", "carol", "--database", pg_url)
    assert r.returncode == 0, r.stderr
    r = _crc("server", "list-users", "--database", pg_url, "--json")
    assert [u["user"] for u in json.loads(r.stdout)["users"]] == ["carol"]


def test_a_postgresql_database_with_another_applications_tables_is_refused(
    tmp_path: Path, pg_url: str
) -> None:
    _psql(pg_url, "CREATE TABLE users (id INTEGER)")
    data = tmp_path / "srv"
    _init(data, free_port())
    for command in (["run"], ["add-user", "carol"]):
        r = _crc("server", *command, "--data-dir", str(data), "--database", pg_url)
        line = _one_error_line(r, 2)
        assert "cannot set up crc's tables in database 127.0.0.1:5432/" in line, line
        assert 'relation "users" already exists: give crc a database of its own' in line
        assert "serving" not in r.stdout
    assert _tables(pg_url) == ["users"]  # what the migration began is rolled back


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_database_a_newer_crc_set_up_is_refused(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """An older replica beside newer ones (or a downgrade) would misread or overwrite
    what the newer schema stores."""
    url = (
        f"sqlite:///{tmp_path / 'crc.db'}"
        if backend == "sqlite"
        else str(request.getfixturevalue("pg_url"))
    )
    r = _crc("server", "add-user", "carol", "--database", url)
    assert r.returncode == 0, r.stderr
    if backend == "sqlite":
        import sqlite3

        with sqlite3.connect(tmp_path / "crc.db") as db:
            db.execute("INSERT INTO schema_version (version) VALUES (999)")
    else:
        _psql(url, "INSERT INTO schema_version (version) VALUES (999)")
    data = tmp_path / "srv"
    _init(data, free_port())
    for command in (["run"], ["add-user", "dave"], ["list-users"]):
        r = _crc("server", *command, "--data-dir", str(data), "--database", url)
        line = _one_error_line(r, 5)
        assert "the database's schema is version 999, newer than this crc knows (" in line
        assert "serving" not in r.stdout
