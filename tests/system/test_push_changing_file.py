"""`crc push` of a file that changes while it is uploaded: exactly the bytes hashed are
sent (a growing log: its start), a file cut short or rewritten is a clear error (exit 2,
no traceback), and a FIFO is refused up front instead of waiting for a writer."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from wire_helpers import assert_no_traceback_in_server_log

from cloudremotecontrol.errors import InvalidInput
from cloudremotecontrol.master import aclient as aclient_mod
from cloudremotecontrol.master import client as client_mod
from cloudremotecontrol.master.aclient import AsyncClient
from conftest import Env
from growing import growing_log


def test_push_of_a_growing_log_sends_what_was_hashed(env: Env, crc: Any, tmp_path: Path) -> None:
    env.group_with_agents("lab", ["a"])
    with growing_log(tmp_path / "app.log", 40 << 20) as log:
        for i in range(2):
            out = tmp_path / f"out{i}.log"
            r = crc("push", "lab", "--to", "a", str(log), str(out), timeout=120)
            assert r.returncode == 0, r.stderr
            assert "Traceback" not in r.stderr
            got = out.read_bytes()
            assert len(got) >= 40 << 20
            with open(log, "rb") as fh:
                assert fh.read(len(got)) == got  # the start of the log, as it was hashed
    assert_no_traceback_in_server_log(env.server)


def _change_after_hashing(monkeypatch: pytest.MonkeyPatch, change: Any) -> None:
    """The file changes between its hashing and its upload (deterministically)."""
    real = client_mod.file_digest

    def digest_then_change(local: str) -> tuple[str, int]:
        out = real(local)
        change(Path(local))
        return out

    monkeypatch.setattr(client_mod, "file_digest", digest_then_change)
    monkeypatch.setattr(aclient_mod, "file_digest", digest_then_change)


def _append(p: Path) -> None:
    with open(p, "ab") as fh:
        fh.write(b"more" * 100000)


def _truncate(p: Path) -> None:
    os.truncate(p, 1000)


def _rewrite(p: Path) -> None:
    with open(p, "r+b") as fh:
        fh.seek(123)
        fh.write(b"CHANGED")


@pytest.mark.parametrize("sdk", ["sync", "async"])
@pytest.mark.parametrize(
    ("change", "problem"), [(_append, None), (_truncate, "truncated"), (_rewrite, "rewritten")]
)
def test_a_file_changed_after_it_was_hashed(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sdk: str, change: Any, problem: Any
) -> None:
    src = tmp_path / "data.bin"
    data = os.urandom(3 << 20)
    src.write_bytes(data)
    _change_after_hashing(monkeypatch, change)

    def upload() -> dict[str, Any]:
        if sdk == "sync":
            return env.client.upload(str(src))

        async def go() -> dict[str, Any]:
            async with AsyncClient(env.server.url, env.token, env.server.fingerprint) as c:
                return await c.upload(str(src))

        return asyncio.run(go())

    if problem is None:  # grown: the bytes hashed go up, the rest stays for next time
        out = upload()
        assert out["sha256"] == hashlib.sha256(data).hexdigest()
        assert out["size"] == len(data)
    else:
        with pytest.raises(InvalidInput, match=f"changed while it was read.*{problem}"):
            upload()
    assert_no_traceback_in_server_log(env.server)


def test_push_of_a_fifo_is_refused_at_once(env: Env, crc: Any, tmp_path: Path) -> None:
    env.group_with_agents("lab", ["a"])
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    r = crc("push", "lab", "--to", "a", str(fifo), str(tmp_path / "out"), timeout=30)
    assert r.returncode == 2, r.stderr
    assert "is not a regular file but a FIFO" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()
    assert env.client.list_jobs("lab") == []
