"""A signal crc was started with ignored stays ignored (``nohup`` ignores SIGHUP; a
background job of a non-interactive shell has SIGINT ignored): crc's handlers never
take its place. And a signal before a job exists (a push's upload: ``prepare``) stops
crc at once, without starting the job. The signals are real (sent to this process)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from cloudremotecontrol.cli.job_cmds import start_and_follow
from cloudremotecontrol.cli.signals import stopped_as_by_ctrl_c

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")

STARTED = {"job_id": "j1", "targets": ["a"]}


class Recorder:
    def __init__(self) -> None:
        self.cancelled: list[str] = []

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        self.cancelled.append(job_id)
        return {"job_id": job_id, "cancelling": ["a"]}

    def follow_job(self, job_id: str, left: list[str], since: int = 0) -> Iterator[Any]:
        os.kill(os.getpid(), signal.SIGHUP)  # while the job is followed
        os.kill(os.getpid(), signal.SIGINT)
        return iter(())


@pytest.fixture
def ignored() -> Iterator[None]:
    """SIGINT and SIGHUP ignored, as crc would have been started with them."""
    before = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_signals_ignored_at_start_stay_ignored_while_a_job_starts_and_runs(
    ignored: None, capsys: pytest.CaptureFixture[str]
) -> None:
    def start() -> dict[str, Any]:
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGINT)
        return dict(STARTED)

    c = Recorder()
    try:
        started, _ = start_and_follow(c, start, as_json=False)
    except KeyboardInterrupt as exc:
        pytest.fail(f"an ignored signal stopped crc: {exc!r} (cancelled: {c.cancelled})")
    assert started == STARTED and c.cancelled == []
    assert "cancel" not in capsys.readouterr().err
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_a_sighup_ignored_at_start_does_not_stop_a_wait(ignored: None) -> None:
    try:
        with stopped_as_by_ctrl_c():
            os.kill(os.getpid(), signal.SIGHUP)
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    except KeyboardInterrupt as exc:
        pytest.fail(f"an ignored SIGHUP stopped the wait: {exc!r}")
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN


@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"]
)
def test_a_signal_before_the_job_exists_stops_at_once_without_starting_it(
    signum: int, capsys: pytest.CaptureFixture[str]
) -> None:
    begun: list[str] = []

    def prepare() -> None:  # a push's hashing and upload
        os.kill(os.getpid(), signum)
        begun.append("prepare went on")

    def start() -> dict[str, Any]:
        begun.append("job")
        return dict(STARTED)

    c = Recorder()
    with pytest.raises(KeyboardInterrupt) as info:
        start_and_follow(c, start, as_json=False, prepare=prepare)
    assert begun == [] and c.cancelled == []
    assert getattr(info.value, "exit_code", 130) == 128 + signum
    assert getattr(info.value, "said", False)  # the line below, not `crc: interrupted`
    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    assert capsys.readouterr().err == (
        f"crc: {name}: stopped before the job was created (nothing to cancel)\n"
    )
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
