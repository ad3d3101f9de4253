"""A key/value wait the SDK asks again (after a 429 or a server restart) is sent with
the time left of the caller's wait, never a negative one: a sleep that overran the
deadline ends it ``TimedOut``, as the first wait would have."""

from __future__ import annotations

import time

import pytest

from cloudremotecontrol.errors import RateLimited, TimedOut, Unavailable
from cloudremotecontrol.master import calls


def test_the_time_left_is_what_is_sent_again() -> None:
    left = calls.kv_wait_left("k", 30, time.monotonic() + 10, 0)
    assert 9 < left <= 10


def test_a_sleep_that_overran_the_deadline_ends_the_wait_timed_out() -> None:
    with pytest.raises(TimedOut, match=r"^key 'k' was not set within 30 s$"):
        calls.kv_wait_left("k", 30, time.monotonic() - 0.01, 0)
    with pytest.raises(
        TimedOut, match=r"^key 'k' did not change within 30 s \(no version above 2\)$"
    ):
        calls.kv_wait_left("k", 30, time.monotonic() - 0.01, 2)


def test_a_429_is_asked_again_only_within_the_wait() -> None:
    refused = RateLimited("too many key/value waits at once", retry_after=2)
    delay = calls.kv_wait_delay(refused, time.monotonic() + 60)
    assert delay is not None and 2 <= delay <= 3
    assert calls.kv_wait_delay(refused, time.monotonic() + 1) is None
    other = Unavailable("not a CloudRemoteControl server", code="not_crc_server")
    assert calls.kv_wait_delay(other, time.monotonic() + 60) is None


def test_a_retry_after_of_digits_int_cannot_read_is_ignored() -> None:
    """``"²"`` is a digit to ``str.isdigit()`` and not to ``int()``: a 429 saying it is a
    429 without a delay, not a crash of the client reading it."""
    body = b'{"error": {"code": "rate_limited", "message": "too many at once"}}'
    for header, kept in (("2", 2), ("²", None), ("¹²", None)):
        with pytest.raises(RateLimited) as exc:
            calls.raise_for("https://x", 429, "application/json", body, header)
        assert exc.value.details.get("retry_after") == kept
