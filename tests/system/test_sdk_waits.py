"""The SDK's waits and `crc wait` end at their deadline also when nothing arrives, and
Ctrl-C ends `crc wait` at once.

The server here sends a keepalive on a quiet event stream only every 60 s
(``--events-keepalive``): a wait that looked at its deadline only when the stream said
something ended a minute late. The bounds below are safety nets, far above the
deadlines and far below that minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from cloudremotecontrol.errors import Unavailable
from cloudremotecontrol.master.aclient import AsyncClient
from cloudremotecontrol.master.localrun import ServerProcess

QUIET = 60.0  # seconds between two keepalives of an idle event stream
SAFETY = 25.0  # a wait of 1 s must have ended well before this


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """The `env` and `crc` fixtures (conftest.py) on a server with rare keepalives."""
    srv = ServerProcess(tmp_path / "srv", args=["--events-keepalive", str(QUIET)]).start()
    yield srv
    srv.stop()


@pytest.fixture
def quiet(env: Any) -> str:
    """A group whose one machine never enrolls: nothing happens in it."""
    env.client.create_group("quiet", ["a"])
    return "quiet"


def _in_thread(fn: Callable[[], Any]) -> dict[str, Any]:
    got: dict[str, Any] = {}

    def run() -> None:
        try:
            got["value"] = fn()
        except Exception as exc:  # noqa: BLE001 -- looked at by the test
            got["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(SAFETY)
    assert not t.is_alive(), f"a wait of 1 s still runs after {SAFETY:g} s"
    return got


def _timed_out(got: dict[str, Any]) -> str:
    error = got.get("error")
    assert isinstance(error, Unavailable) and error.code == "timeout", got
    return error.message


def test_client_wait_message_ends_at_its_timeout(env, quiet):
    got = _in_thread(lambda: env.client.wait_message(quiet, "never", timeout=1))
    assert _timed_out(got) == "no user.never message within 1 s"
    got = _in_thread(lambda: env.client.wait_messages(quiet, "never", ["a"], since=0, timeout=1))
    assert _timed_out(got) == "no user.never message from a within 1 s"


def test_client_wait_ready_ends_at_its_timeout(env, quiet):
    got = _in_thread(lambda: env.client.wait_ready(quiet, timeout=1))
    assert _timed_out(got) == "timed out after 1 s: not ready: a"


def test_async_client_waits_end_at_their_timeout(env, quiet):
    def run(method: str, *args: Any, **kw: Any) -> Any:
        async def go() -> Any:
            async with AsyncClient(env.server.url, env.token, env.server.fingerprint) as c:
                return await getattr(c, method)(*args, **kw)

        return asyncio.run(go())

    got = _in_thread(lambda: run("wait_message", quiet, "never", timeout=1))
    assert _timed_out(got) == "no user.never message within 1 s"
    got = _in_thread(lambda: run("wait_ready", quiet, timeout=1))
    assert _timed_out(got) == "timed out after 1 s: not ready: a"


def test_a_wait_that_ends_in_time_still_returns_what_came(env, crc):
    """Following on a thread of its own changes nothing for a wait that succeeds."""
    env.group_with_agents("busy", ["a"])
    got = _in_thread(lambda: env.client.wait_ready("busy", timeout=20))
    assert [m["state"] for m in got["value"]["machines"]] == ["ready"]
    r = crc("wait", "busy", "--timeout", "20s", timeout=SAFETY)
    assert (r.returncode, r.stdout) == (0, "all 1 machine(s) of busy are ready\n"), r.stderr
    state = str(env.tmp / "agents" / "a")
    r = crc("agent", "emit", "hello", '{"n": 1}', "--state-dir", state, timeout=SAFETY)
    assert r.returncode == 0, r.stderr
    got = _in_thread(lambda: env.client.wait_message("busy", "hello", timeout=20))
    assert (got["value"].sender, got["value"].body) == ("a", {"n": 1})


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_crc_wait_ends_at_its_timeout(env, crc, quiet, json_flag):
    r = crc("wait", quiet, "--timeout", "1s", *json_flag, timeout=SAFETY)
    assert r.returncode == 6, r.stdout + r.stderr
    assert r.stderr == "crc: error: timed out after 1 s: not ready: a\n", r.stderr
    r = crc("wait", quiet, "--message", "never", "--timeout", "1s", *json_flag, timeout=SAFETY)
    assert r.returncode == 6, r.stdout + r.stderr
    assert r.stderr == "crc: error: no user.never message within 1 s\n", r.stderr


def _spawn(env: Any, *args: str) -> pexpect.spawn:
    """`crc wait ARGS` on a pty."""
    child = pexpect.spawn(
        sys.executable,
        ["-m", "cloudremotecontrol", "wait", *args],
        env={**os.environ, **env.cli_env, "TERM": "xterm-256color"},
        dimensions=(40, 200),
        timeout=SAFETY,
    )
    child.logfile_read = io.BytesIO()
    return child


def test_crc_wait_on_a_terminal_ends_at_its_timeout_and_at_ctrl_c(env, quiet):
    child = _spawn(env, quiet, "--timeout", "1s")
    child.expect_exact("quiet: 0/1 ready")
    child.expect(pexpect.EOF)
    child.close()
    out = child.logfile_read.getvalue()
    assert child.exitstatus == 6, out
    assert b"crc: error: timed out after 1 s: not ready: a" in out, out
    # Ctrl-C is heard at once, while the events are read on a thread of their own.
    for args in ([], ["--message", "never"]):
        child = _spawn(env, quiet, "--timeout", "15m", *args)
        if args:
            child.expect(pexpect.TIMEOUT, timeout=2)  # waiting, silently
        else:
            child.expect_exact("quiet: 0/1 ready")
        child.sendintr()  # Ctrl-C, as the terminal sends it
        child.expect(pexpect.EOF)
        child.close()
        out = child.logfile_read.getvalue()
        assert child.exitstatus == 130, out
        assert out.rstrip().endswith(b"crc: interrupted") and b"Traceback" not in out, out


def test_a_waits_reader_stops_instead_of_reconnecting_once_the_wait_has_ended(env, quiet):
    """The thread reading the events of an ended wait goes when its stream breaks; it
    used to reconnect for a minute (with jitter from the caller's global ``random``)."""

    def readers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == f"crc-follow-{quiet}"]

    got = _in_thread(lambda: env.client.wait_message(quiet, "never", timeout=1))
    _timed_out(got)
    lingering = readers()
    assert lingering, "the reader is expected to be blocked on the quiet stream"
    env.server.stop()  # its stream breaks: the reader must not try again
    for t in lingering:
        t.join(SAFETY)
        assert not t.is_alive(), "the reader of an ended wait still reconnects"


def test_an_async_clients_halt_ends_a_stream_that_is_reconnecting(env, quiet):
    """``AsyncClient.halt()`` ends a followed event stream waiting to reconnect to a
    server that went away, instead of it trying again for a minute."""

    async def main() -> str:
        async with AsyncClient(env.server.url, env.token, env.server.fingerprint) as c:
            seen = asyncio.Event()

            async def follow() -> int:
                n = 0
                async for _ in c.events(quiet, follow=True, keepalive=True):
                    n += 1
                    seen.set()
                return n

            task = asyncio.create_task(follow())
            for n in range(int(SAFETY)):  # events until one comes: the stream is open
                await c.kv_set(quiet, "k", n)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(seen.wait(), 1)
                    break
            assert seen.is_set(), "the followed stream never said anything"
            env.server.stop()  # it breaks: the client waits to reconnect
            await asyncio.sleep(0.5)
            assert not task.done(), "the stream is expected to be reconnecting"
            c.halt()
            await asyncio.wait_for(task, SAFETY)
            return "ended"

    assert asyncio.run(main()) == "ended"
