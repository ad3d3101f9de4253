"""Ctrl-C (or SIGTERM/SIGHUP) that lands while `crc run` is still starting its job is
held until the job has an id, then cancels it; a second one stops crc at once. The
signals are real (sent to this process); the client is a stand-in that records calls."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from cloudremotecontrol.cli.job_cmds import start_and_follow

STARTED = {"job_id": "j1", "targets": ["a"]}


class Recorder:
    def __init__(self) -> None:
        self.cancelled: list[str] = []

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        self.cancelled.append(job_id)
        return {"job_id": job_id, "cancelling": ["a"]}

    def follow_job(self, job_id: str, left: list[str], since: int = 0) -> Iterator[Any]:
        return iter(())  # the job's events are not what this test is about


def _start_with(*signums: int) -> Any:
    def start() -> dict[str, Any]:
        for signum in signums:
            os.kill(os.getpid(), signum)
        return dict(STARTED)

    return start


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_starting_cancels_the_job_once_it_has_an_id(
    signum: int, capsys: pytest.CaptureFixture[str]
) -> None:
    before = signal.getsignal(signum)
    c = Recorder()
    started, results = start_and_follow(c, _start_with(signum), as_json=False)
    assert started == STARTED and results == {}
    assert c.cancelled == ["j1"]
    err = capsys.readouterr().err
    assert "cancelling job j1 on every machine" in err, err
    assert signal.getsignal(signum) is before  # the handlers are put back


def test_a_second_signal_while_starting_stops_at_once() -> None:
    c = Recorder()
    with pytest.raises(KeyboardInterrupt):
        start_and_follow(c, _start_with(signal.SIGINT, signal.SIGINT), as_json=False)
    assert c.cancelled == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_no_signal_no_cancel() -> None:
    c = Recorder()
    announced: list[dict[str, Any]] = []
    start_and_follow(c, _start_with(), as_json=False, announce=announced.append)
    assert c.cancelled == [] and announced == [STARTED]


def test_a_ctrl_c_just_after_the_announcement_cancels_the_job(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Ctrl-C that lands after crc said the job's id (and which targets are not
    connected), while it sets about following the job, cancels it too: it does not stop
    crc and leave the job waiting for its targets."""
    import contextlib

    from cloudremotecontrol.cli import job_cmds

    real = job_cmds.stopped_as_by_ctrl_c

    @contextlib.contextmanager
    def signalled_first(once: bool = True) -> Iterator[None]:
        os.kill(os.getpid(), signal.SIGINT)  # as following the job begins
        with real(once):
            yield

    monkeypatch.setattr(job_cmds, "stopped_as_by_ctrl_c", signalled_first)
    c = Recorder()
    announced: list[dict[str, Any]] = []
    try:
        start_and_follow(c, _start_with(), as_json=False, announce=announced.append)
    except KeyboardInterrupt:
        pytest.fail(f"Ctrl-C stopped crc, the job left as it was (cancelled: {c.cancelled})")
    assert announced == [STARTED] and c.cancelled == ["j1"]
    assert "cancelling job j1 on every machine" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX kill")
def test_a_sigterm_landing_in_a_finalizer_still_stops_the_command() -> None:
    """A SIGTERM whose handler ran inside a ``__del__`` (the garbage collector finalizing
    a Popen, say) raised there and was lost ("Exception ignored in"), and with it every
    later one: the command went on to its end. It is raised again in the command's code."""
    import time

    from cloudremotecontrol.cli.signals import Terminated, stopped_as_by_ctrl_c

    class Dropped:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:  # the handler runs here, in __del__
                pass

    stopped_at = None
    with pytest.raises(Terminated) as info, stopped_as_by_ctrl_c():
        Dropped()  # dropped at once: its __del__ runs now
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.01)
        stopped_at = "never"
    assert stopped_at is None and info.value.exit_code == 128 + signal.SIGTERM


class StreamGivesUp(Recorder):
    def follow_job(self, job_id: str, left: list[str], since: int = 0) -> Iterator[Any]:
        from cloudremotecontrol.errors import Unavailable

        raise Unavailable(
            "event stream from https://x:1 broke and could not be resumed within 60 s: refused"
        )


def test_a_stream_that_gives_up_says_the_job_goes_on_at_the_server() -> None:
    """The job is the server's: crc did not cancel it, and says where to see its end."""
    from cloudremotecontrol.cli.job_cmds import follow_to_end
    from cloudremotecontrol.errors import Unavailable

    client = StreamGivesUp()
    with pytest.raises(Unavailable) as caught:
        follow_to_end(client, dict(STARTED), as_json=False)
    assert caught.value.message == (
        "event stream from https://x:1 broke and could not be resumed within 60 s: refused; "
        "job j1 was not cancelled and goes on at the server: `crc job show j1` shows its "
        "results"
    )
    assert caught.value.exit_code == 6 and client.cancelled == []


class ServerAway(Recorder):
    def follow_job(self, job_id: str, left: list[str], since: int = 0) -> Iterator[Any]:
        raise KeyboardInterrupt  # Ctrl-C while the stream waits for the server

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        from cloudremotecontrol.errors import Unavailable

        raise Unavailable("cannot reach https://x:1: [Errno 111] Connection refused")


def test_ctrl_c_whose_cancel_cannot_reach_the_server_says_the_job_may_still_run() -> None:
    from cloudremotecontrol.cli.job_cmds import follow_to_end
    from cloudremotecontrol.errors import Unavailable

    with pytest.raises(Unavailable) as caught:
        follow_to_end(ServerAway(), dict(STARTED), as_json=False)
    assert caught.value.message == (
        "cannot reach https://x:1: [Errno 111] Connection refused; job j1 was not cancelled "
        "and may still be running: `crc job cancel j1` once the server is back"
    )
