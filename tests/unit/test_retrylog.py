"""A background loop's failures are logged in a few lines, not one per attempt."""

from __future__ import annotations

import logging

import pytest

from cloudremotecontrol.errors import Unavailable
from cloudremotecontrol.server import retrylog
from cloudremotecontrol.server.retrylog import RetryLog


def test_first_failure_then_still_failing_at_most_every_period_then_working_again(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(retrylog.time, "monotonic", lambda: now[0])
    log = logging.getLogger("test.retrylog")
    retries = RetryLog(log, "rate control", every=30)
    caplog.set_level(logging.WARNING, "test.retrylog")
    for _ in range(400):  # 100 s of attempts 4 times a second
        retries.failed(Unavailable("the server's database is unavailable"))
        now[0] += 0.25
    retries.worked()
    retries.worked()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "rate control: trying again: the server's database is unavailable",
        "rate control: still failing: the server's database is unavailable (121 attempts)",
        "rate control: still failing: the server's database is unavailable (241 attempts)",
        "rate control: still failing: the server's database is unavailable (361 attempts)",
        "rate control: working again after 400 failed attempts",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    caplog.clear()
    retries.failed(RuntimeError("a bug"))  # after working again: logged at once
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, "rate control: trying again: RuntimeError('a bug')")
    ]
