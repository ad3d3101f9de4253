"""`crc server run` (the real `crc` as a process) on its own files: a SQLite database
another `crc server run` serves, a TLS certificate or key it cannot serve, a file store
(DATA_DIR/blobs) it cannot use. Each is one `crc: error: …` line naming the file and a
documented exit code before anything changes, never a traceback; and the fingerprint it
prints is the one of the certificate it serves, not the one server.json recorded."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from test_server_cli_faults import _crc, _init, _one_error_line

from cloudremotecontrol.master.localrun import crc_argv, free_port
from conftest import Env


def test_a_second_server_on_a_sqlite_database_is_refused_and_changes_nothing(
    env: Env,
) -> None:
    """It would mark the first one's machines offline (and void its claims, cut its
    streams) as it starts, alone on its database."""
    env.group_with_agents("g1", ["m1"])
    srv = env.server
    assert srv.proc is not None
    r = _crc(
        "server", "run", "--data-dir", str(srv.data_dir), "--listen", f"127.0.0.1:{free_port()}"
    )
    line = _one_error_line(r, 5)
    assert f"the database {srv.data_dir / 'crc.db'} is in use by another" in line, line
    assert f"(pid {srv.proc.pid})" in line, line
    assert "serving" not in r.stdout + r.stderr and r.stdout == ""
    # The first one's machine is still online, and it still serves.
    assert env.wait_state("g1", ["m1"], "ready", timeout=5)
    assert env.client.group("g1")["machines"][0]["state"] == "ready"
    # The admin commands run beside it.
    assert srv.add_user("bob").startswith("crcm_")
    assert "bob" in [u["user"] for u in srv.admin("list-users")["users"]]


def test_the_database_is_free_again_once_its_server_stopped_or_was_killed(
    tmp_path: Path,
) -> None:
    from cloudremotecontrol.master.localrun import ServerProcess

    srv = ServerProcess(tmp_path / "srv").start()
    try:
        srv.kill()  # SIGKILL: no stop of its own
        srv.start()
        srv.stop()
        srv.start()
    finally:
        srv.stop()


def _other_pair(tmp_path: Path) -> Path:
    other = tmp_path / "other"
    _init(other, free_port())
    return other


def _encrypt(key: Path) -> None:
    loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
    key.write_bytes(
        loaded.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass-phrase"),
        )
    )


def _spoil(data: Path, how: str, tmp_path: Path) -> Path:
    """Spoil DATA's certificate or key; return the file named."""
    cert, key = data / "cert.pem", data / "key.pem"
    if how == "no key":
        key.unlink()
    elif how == "no cert":
        cert.unlink()
    elif how == "garbage cert":
        cert.write_text("garbage\n")
    elif how == "garbage key":
        key.write_text("garbage\n")
    elif how == "key is a directory":
        key.unlink()
        key.mkdir()
    elif how == "another server's key":
        key.write_bytes((_other_pair(tmp_path) / "key.pem").read_bytes())
    else:
        assert how == "encrypted key"
        _encrypt(key)
    return cert if "cert" in how else key


_TLS = {
    "no key": "cannot read the TLS key {key}: No such file or directory",
    "no cert": "cannot read the TLS certificate {cert}: No such file or directory",
    "garbage cert": "the TLS certificate {cert} is not a PEM certificate",
    "garbage key": "the TLS key {key} is not a PEM private key",
    "key is a directory": "cannot read the TLS key {key}: Is a directory",
    "another server's key": "the TLS key {key} is not the key of the certificate {cert}",
    "encrypted key": "the TLS key {key} is encrypted (a passphrase)",
}


@pytest.mark.parametrize("how", list(_TLS))
def test_a_certificate_or_key_it_cannot_serve_is_one_line_and_exit_2(
    tmp_path: Path, how: str
) -> None:
    data = tmp_path / "srv"
    _init(data, free_port())
    _spoil(data, how, tmp_path)
    r = subprocess.run(
        crc_argv("server", "run", "--data-dir", str(data)),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    line = _one_error_line(r, 2)
    assert _TLS[how].format(cert=data / "cert.pem", key=data / "key.pem") in line, line
    assert f"crc server init --data-dir {data} --force" in line or how == "encrypted key"
    assert "serving" not in r.stdout + r.stderr and r.stdout == ""
    assert not (data / "crc.db").exists()  # nothing started


def test_insecure_serves_no_certificate_and_needs_none(tmp_path: Path) -> None:
    data = tmp_path / "srv"
    _init(data, free_port())
    (data / "key.pem").unlink()
    with _running(data, "--insecure") as first:
        assert first["fingerprint"] is None


@pytest.mark.parametrize("how", ["blobs is a file", "blobs/tmp is a file"])
def test_a_file_store_it_cannot_use_is_one_line_and_exit_2(tmp_path: Path, how: str) -> None:
    data = tmp_path / "srv"
    _init(data, free_port())
    if how == "blobs is a file":
        (data / "blobs").write_text("not a directory\n")
    else:
        (data / "blobs").mkdir()
        (data / "blobs" / "tmp").write_text("not a directory\n")
    r = _crc("server", "run", "--data-dir", str(data))
    line = _one_error_line(r, 2)
    assert f"cannot use the file store {data / 'blobs'}: " in line, line
    assert "serving" not in r.stdout + r.stderr and r.stdout == ""


def _running(data: Path, *args: str) -> _Serving:
    return _Serving(data, list(args))


class _Serving:
    """`crc server run --json` on DATA until the block ends; its "serving" line."""

    def __init__(self, data: Path, args: list[str]) -> None:
        self.argv = crc_argv("server", "run", "--data-dir", str(data), "--json", *args)
        self.proc: subprocess.Popen[str] | None = None
        self.err = ""

    def __enter__(self) -> dict[str, object]:
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if not first:
            self.__exit__()
            raise AssertionError(f"no serving line: {self.err}")
        answer: dict[str, object] = json.loads(first)
        assert answer["event"] == "serving", answer
        return answer

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        _, self.err = self.proc.communicate(timeout=30)


@pytest.fixture
def replaced(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A data dir whose cert.pem and key.pem were replaced by another pair (as
    docs/postgresql.md says to put one's own), and that pair's fingerprint."""
    data = tmp_path / "srv"
    _init(data, free_port())
    other = _other_pair(tmp_path)
    for name in ("cert.pem", "key.pem"):
        (data / name).write_bytes((other / name).read_bytes())
    yield data, str(json.loads((other / "server.json").read_text())["fingerprint"])


def test_the_fingerprint_printed_is_the_one_of_the_certificate_served(
    replaced: tuple[Path, str],
) -> None:
    data, fingerprint = replaced
    assert json.loads((data / "server.json").read_text())["fingerprint"] != fingerprint
    with _running(data) as first:
        assert first["fingerprint"] == fingerprint


def test_a_server_json_without_a_fingerprint_still_prints_the_served_one(
    replaced: tuple[Path, str],
) -> None:
    data, fingerprint = replaced
    cfg = json.loads((data / "server.json").read_text())
    del cfg["fingerprint"]
    (data / "server.json").write_text(json.dumps(cfg))
    proc = subprocess.Popen(
        crc_argv("server", "run", "--data-dir", str(data)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert line.startswith("crc server: serving "), line
    assert f"; fingerprint {fingerprint};" in line, line
