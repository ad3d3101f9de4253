"""A push the master cancels stops its download (agent/files.py ``fetch_blob``'s
``stopped``): cancelled before it began, nothing is looked at or written; cancelled
while its body is written, no more is, its partial file is removed and the file it
would replace is left as it was. Against a real HTTP server on loopback. And a file
job whose start cannot be reported leaves no cancel entry behind in the agent."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudremotecontrol.agent import files
from cloudremotecontrol.agent.core import Agent
from cloudremotecontrol.agent.state import AgentState, Credential
from cloudremotecontrol.protocol.messages import FileGet, FilePut
from httpserve import serving_blob

BLOB = b"z" * (3 * files.CHUNK)
SHA = hashlib.sha256(BLOB).hexdigest()


@pytest.fixture
def blob_server() -> Iterator[str]:
    """Serves ``BLOB`` at any path; its URL."""
    with serving_blob(BLOB) as url:
        yield url


def test_a_push_cancelled_before_it_began_looks_at_and_writes_nothing(tmp_path: Path) -> None:
    asked: list[str] = []

    def where() -> tuple[str, None]:
        asked.append("where")
        return "http://127.0.0.1:9", None

    seen: list[list[str]] = []

    def stopped() -> bool:
        seen.append(sorted(p.name for p in tmp_path.iterdir()))  # what exists when asked
        return True

    dest = tmp_path / "app.conf"
    with pytest.raises(files.Stopped):
        files.fetch_blob(
            where, "cred", SHA, len(BLOB), str(dest), None, None, lambda _: None, stopped
        )
    assert asked == []
    # Asked once, first: no partial file was ever created (and then removed).
    assert seen == [[]]
    assert list(tmp_path.iterdir()) == []


def test_a_push_cancelled_while_its_body_is_written_leaves_the_file_as_it_was(
    tmp_path: Path, blob_server: str
) -> None:
    dest = tmp_path / "app.conf"
    dest.write_text("the old content\n")
    checks = 0
    written: list[int | None] = []  # the partial file's size at each check (None: none)

    def stopped() -> bool:
        # False at the start, at the first attempt and for the first chunk written:
        # the master's cancel arrives there.
        nonlocal checks
        checks += 1
        parts = [p for p in tmp_path.iterdir() if p.name != "app.conf"]
        written.append(parts[0].stat().st_size if parts else None)
        return checks > 3

    with pytest.raises(files.Stopped):
        files.fetch_blob(
            lambda: (blob_server, None),
            "cred",
            SHA,
            len(BLOB),
            str(dest),
            None,
            None,
            lambda _: None,
            stopped,
        )
    assert checks == 4  # stopped at the second chunk, not later
    # Before the push, at its attempt, before its first chunk and at the cancel (before
    # the second chunk): one chunk of the three was written, none after the cancel.
    assert written == [None, 0, 0, files.CHUNK]
    assert dest.read_text() == "the old content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.conf"]  # no partial file


@pytest.mark.parametrize(
    "job",
    [
        FilePut(job_id="a" * 32, sha256=SHA, size=len(BLOB), path="/tmp/app.conf"),
        FileGet(job_id="b" * 32, path="/tmp/app.conf"),
    ],
)
def test_a_file_job_whose_start_cannot_be_reported_leaves_no_cancel_entry(
    tmp_path: Path, job: FilePut | FileGet
) -> None:
    state = AgentState(tmp_path / "agent")
    agent = Agent(state, Credential("https://127.0.0.1:9", "crca_x", "m", "lab"))

    def broken(*args: Any, **kw: Any) -> Any:
        raise sqlite3.DatabaseError("database disk image is malformed")

    state.enqueue = broken  # type: ignore[method-assign]
    try:
        agent._jobs[job.job_id] = asyncio.Event()  # as _on_file_job registers it
        with pytest.raises(sqlite3.DatabaseError):
            asyncio.run(agent._file_job(job))
        assert job.job_id not in agent._jobs
    finally:
        state.close()
