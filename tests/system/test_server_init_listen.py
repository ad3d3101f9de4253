"""`crc server init` listens where its `--url` says the server is: without `--listen`,
on the URL's port (every address); an explicit `--listen` on another port is kept, with
a warning that only a proxy or a port forward makes the URL reach the server."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cloudremotecontrol.master.localrun import crc_argv, free_port


def _crc(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(crc_argv(*args), capture_output=True, text=True, timeout=timeout)


def _listen(data: Path) -> str:
    return str(json.loads((data / "server.json").read_text())["listen"])


@contextlib.contextmanager
def _serving(data: Path) -> Iterator[dict[str, Any]]:
    """`crc server run --json` on ``data``, until the block ends; its first line."""
    proc = subprocess.Popen(
        crc_argv("server", "run", "--data-dir", str(data), "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["event"] == "serving", first
        yield first
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_init_without_listen_listens_on_the_urls_port_and_serves_there(tmp_path: Path) -> None:
    data = tmp_path / "srv"
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    r = _crc("server", "init", "--data-dir", str(data), "--url", url)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert _listen(data) == f"0.0.0.0:{port}"
    assert f"\nlisten:       0.0.0.0:{port}\n" in r.stdout, r.stdout
    with _serving(data) as first:
        assert (first["url"], first["listen"]) == (url, f"0.0.0.0:{port}")
        socket.create_connection(("127.0.0.1", port), timeout=5).close()  # the URL answers


def test_init_json_says_where_it_listens(tmp_path: Path) -> None:
    data = tmp_path / "srv"
    r = _crc(
        "server",
        "init",
        "--data-dir",
        str(data),
        "--url",
        "https://crc.example.net:9443/",
        "--json",
    )
    assert r.returncode == 0 and r.stderr == "", r.stderr
    out = json.loads(r.stdout)
    assert (out["url"], out["listen"]) == ("https://crc.example.net:9443", "0.0.0.0:9443")


def test_an_explicit_listen_on_another_port_is_kept_with_a_warning(tmp_path: Path) -> None:
    data = tmp_path / "srv"
    r = _crc(
        "server",
        "init",
        "--data-dir",
        str(data),
        "--url",
        "https://crc.example.net:8443",
        "--listen",
        "127.0.0.1:18443",
    )
    assert r.returncode == 0, r.stderr
    assert _listen(data) == "127.0.0.1:18443"
    assert "\nlisten:       127.0.0.1:18443\n" in r.stdout, r.stdout
    assert r.stderr.startswith("crc: warning: the URL https://crc.example.net:8443 is on port 8443")
    assert "proxy or port forward carries port 8443 to 18443" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr


def test_the_same_port_or_no_url_gives_no_warning(tmp_path: Path) -> None:
    r = _crc(
        "server",
        "init",
        "--data-dir",
        str(tmp_path / "a"),
        "--url",
        "https://127.0.0.1:18443",
        "--listen",
        "127.0.0.1:18443",
    )
    assert r.returncode == 0 and r.stderr == "", r.stderr
    r = _crc("server", "init", "--data-dir", str(tmp_path / "b"), "--listen", "0.0.0.0:18444")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert _listen(tmp_path / "b") == "0.0.0.0:18444"
    assert json.loads((tmp_path / "b" / "server.json").read_text())["url"].endswith(":18444")


def test_a_url_without_a_port_keeps_the_default_listen_with_a_warning(tmp_path: Path) -> None:
    """Port 443 would need root: the default 8443 is kept, and the warning says so."""
    data = tmp_path / "srv"
    r = _crc("server", "init", "--data-dir", str(data), "--url", "https://crc.example.net")
    assert r.returncode == 0, r.stderr
    assert _listen(data) == "0.0.0.0:8443"
    assert "crc: warning: the URL https://crc.example.net is on port 443" in r.stderr, r.stderr


def test_an_ipv6_url_listens_on_ipv6_and_serves_there(tmp_path: Path) -> None:
    """`--url https://[::1]:PORT` listened on 0.0.0.0 (IPv4 only): nothing answered at
    the URL it had just printed."""
    data = tmp_path / "srv"
    port = free_port()
    url = f"https://[::1]:{port}"
    r = _crc("server", "init", "--data-dir", str(data), "--url", url)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert _listen(data) == f"[::]:{port}"
    with _serving(data) as first:
        assert (first["url"], first["listen"]) == (url, f"[::]:{port}")
        socket.create_connection(("::1", port), timeout=5).close()  # the URL answers
    r = _crc("server", "init", "--data-dir", str(tmp_path / "v6"), "--url", "https://[::1]")
    assert r.returncode == 0, r.stderr
    assert _listen(tmp_path / "v6") == "[::]:8443"


def test_an_empty_data_dir_or_database_is_a_usage_error(tmp_path: Path) -> None:
    """`--data-dir ""` (a script's unset variable) meant ./crc-server, made or used
    without a word; `--database ""` the data dir's own database."""
    for args in (
        ["server", "init", "--data-dir", "", "--url", "https://127.0.0.1:8443"],
        ["server", "add-user", "zed", "--database", ""],
        ["server", "add-user", "zed", "--data-dir", ""],
        ["server", "run", "--data-dir", ""],
        ["server", "run", "--data-dir", str(tmp_path), "--database", ""],
    ):
        r = subprocess.run(
            crc_argv(*args), capture_output=True, text=True, timeout=60, cwd=tmp_path
        )
        assert r.returncode == 2, (args, r.stderr)
        assert "an empty " in r.stderr and "leave the option out" in r.stderr, r.stderr
        assert not (tmp_path / "crc-server").exists()


def test_a_listen_port_of_digits_int_cannot_read_is_refused(tmp_path: Path) -> None:
    r = _crc("server", "init", "--data-dir", str(tmp_path / "s"), "--listen", "0.0.0.0:²")
    assert r.returncode == 2, r.stderr
    assert "invalid listen address '0.0.0.0:²': expected HOST:PORT" in r.stderr
    assert "Traceback" not in r.stderr
