"""A server that takes connections but never answers (frozen with SIGSTOP: its socket
still accepts) ends every SDK call after about the client's ``timeout``, and each wait
at its own deadline: ``Unavailable``, never a hang. ``close()`` from another thread ends
a wait in progress at once with ``client_closed``. A client's ``timeout`` is checked
when it is made.

The bounds are safety nets, far above the timeouts (3 s, 2 s) given."""

from __future__ import annotations

import asyncio
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cloudremotecontrol.errors import InvalidInput, TimedOut, Unavailable
from cloudremotecontrol.master.aclient import AsyncClient
from cloudremotecontrol.master.client import Client
from cloudremotecontrol.master.localrun import ServerProcess

TIMEOUT = 3.0  # the clients' timeout
SAFETY = 10.0  # on top of the timeout a call was given: it must have ended by then


@pytest.fixture
def frozen(env: Any) -> Iterator[tuple[ServerProcess, Client]]:
    """A client (timeout 3 s) that has used its server, then the server frozen."""
    srv: ServerProcess = env.server
    c = Client(srv.url, env.token, srv.fingerprint, timeout=TIMEOUT)
    try:
        c.create_group("g", ["a"])
        c.kv_set("g", "k", 1)
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGSTOP)
        try:
            yield srv, c
        finally:
            srv.proc.send_signal(signal.SIGCONT)
    finally:
        c.close()


def _ends(fn: Callable[[], Any], within: float) -> BaseException:
    """What ``fn`` raised; it must have ended within ``within`` seconds."""
    got: dict[str, BaseException] = {}

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 -- looked at by the test
            got["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    start = time.monotonic()
    t.start()
    t.join(within)
    assert not t.is_alive(), f"still running after {within:g} s"
    assert time.monotonic() - start < within
    assert "error" in got, "it returned, from a server that never answers"
    return got["error"]


def _create_h(c: Client) -> Any:
    return c.create_group("h", ["b"])


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.whoami(),
        lambda c: c.group("g"),
        _create_h,
    ],
    ids=["whoami", "group", "create_group"],
)
def test_plain_call_ends_after_its_timeout(frozen: Any, call: Any) -> None:
    _srv, c = frozen
    exc = _ends(lambda: call(c), TIMEOUT + SAFETY)
    assert isinstance(exc, Unavailable), repr(exc)
    assert "did not answer in time" in str(exc), exc
    # A request that changes something may have been done: the user is told to look.
    assert ("may have been done" in str(exc)) == (call is _create_h), exc


def test_waits_end_at_their_deadline(frozen: Any) -> None:
    _srv, c = frozen
    exc = _ends(lambda: c.wait_message("g", "never", timeout=2), 2 + SAFETY)
    assert isinstance(exc, Unavailable) and exc.code == "timeout", repr(exc)
    exc = _ends(lambda: c.wait_ready("g", timeout=2), 2 + SAFETY)
    assert isinstance(exc, Unavailable) and exc.code == "timeout", repr(exc)


def test_kv_wait_ends_after_its_wait_and_timeout(frozen: Any) -> None:
    _srv, c = frozen
    exc = _ends(lambda: c.kv_get("g", "k", wait=2, newer_than=5), 2 + TIMEOUT + 2 * SAFETY)
    assert isinstance(exc, Unavailable) and not isinstance(exc, TimedOut), repr(exc)


def test_async_calls_and_waits_end(env: Any) -> None:
    srv: ServerProcess = env.server

    async def main() -> list[BaseException]:
        out: list[BaseException] = []
        async with AsyncClient(srv.url, env.token, srv.fingerprint, timeout=TIMEOUT) as c:
            await c.create_group("g", ["a"])
            assert srv.proc is not None
            srv.proc.send_signal(signal.SIGSTOP)
            try:
                for work, within in (
                    (c.whoami(), TIMEOUT + SAFETY),
                    (c.wait_message("g", "never", timeout=2), 2 + SAFETY),
                    (c.wait_ready("g", timeout=2), 2 + SAFETY),
                    (c.kv_get("g", "k", wait=2), 2 + TIMEOUT + 2 * SAFETY),
                ):
                    start = time.monotonic()
                    with pytest.raises(Unavailable) as info:
                        await asyncio.wait_for(work, within)
                    assert time.monotonic() - start < within
                    out.append(info.value)
            finally:
                srv.proc.send_signal(signal.SIGCONT)
        return out

    errors = asyncio.run(main())
    assert [e.code for e in errors[1:3]] == ["timeout", "timeout"]


def test_a_wait_of_0_s_still_looks_once(env: Any) -> None:
    """A wait of 0 s looks once (master/waits.py): its first calls are given a few
    seconds, not what is left of the wait (nothing), and it ends with what it saw."""
    srv: ServerProcess = env.server
    with Client(srv.url, env.token, srv.fingerprint) as c:
        c.create_group("z", ["a"])
        for _ in range(5):  # each look on its own: a connection kept or made anew
            with pytest.raises(Unavailable) as info:
                c.wait_ready("z", timeout=0)
            assert "not ready: a" in str(info.value), info.value
            with pytest.raises(Unavailable) as info:
                c.wait_message("z", "never", sender="a", timeout=0)
            assert "no user.never message from a within 0 s" in str(info.value), info.value

    async def main() -> list[str]:
        async with AsyncClient(srv.url, env.token, srv.fingerprint) as ac:
            said = []
            for _ in range(5):
                with pytest.raises(Unavailable) as info:
                    await ac.wait_ready("z", timeout=0)
                said.append(str(info.value))
            return said

    for said in asyncio.run(main()):
        assert "not ready: a" in said, said


def test_close_ends_a_wait_in_progress(env: Any) -> None:
    c = Client(env.server.url, env.token, env.server.fingerprint)
    c.create_group("q", ["a"])
    got: dict[str, BaseException] = {}

    def wait() -> None:
        try:
            c.wait_message("q", "never", timeout=30)
        except BaseException as exc:  # noqa: BLE001 -- looked at by the test
            got["error"] = exc

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(1.5)  # the wait follows the group's events by now
    c.close()
    t.join(15)  # far below the wait's own 30 s
    assert not t.is_alive(), "close() did not end the wait"
    exc = got.get("error")
    assert isinstance(exc, InvalidInput) and exc.code == "client_closed", repr(exc)


@pytest.mark.parametrize("bad", ["5", -1, 0, math.nan, math.inf, True, None])
def test_timeout_is_checked_when_the_client_is_made(env: Any, bad: Any) -> None:
    srv = env.server
    with pytest.raises(InvalidInput) as info:
        Client(srv.url, env.token, srv.fingerprint, timeout=bad)
    assert info.value.details.get("field") == "timeout"
    with pytest.raises(InvalidInput) as info:
        AsyncClient(srv.url, env.token, srv.fingerprint, timeout=bad)
    assert info.value.details.get("field") == "timeout"
