"""A broken event stream is said only once opening it again failed too (``calls.Resume``):
a token revoked (the server ends its stream, then refuses it) is said by the refusal
alone, and a stream open again at once needs no word."""

from __future__ import annotations

from cloudremotecontrol.master.calls import Resume


def test_a_break_whose_reopening_is_refused_says_nothing() -> None:
    said: list[str] = []
    r = Resume(replicas=1, window=60.0, notify=said.append)
    r.next_wait("https://a", OSError("peer closed connection"))
    # ... then the stream opened again is answered 401: the client raises that.
    assert said == []


def test_a_break_open_again_at_once_says_nothing() -> None:
    said: list[str] = []
    r = Resume(replicas=2, window=60.0, notify=said.append)
    r.next_wait("https://a", OSError("cut"))
    r.opened("https://b")
    r.progressed()
    assert said == []


def test_a_break_is_said_with_its_cause_once_its_first_reopening_failed() -> None:
    said: list[str] = []
    r = Resume(replicas=1, window=60.0, notify=said.append)
    r.next_wait("https://a", OSError("cut"))
    assert said == []
    r.next_wait("https://a", OSError("refused"))
    r.next_wait("https://a", OSError("refused"))
    r.opened("https://a")
    assert said == [
        "event stream from https://a broke (cut): resuming it where it was, for up to 60 s",
        "event stream from https://a resumed",
    ]
