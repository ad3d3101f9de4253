"""An SDK client used again after something ended: after ``halt()`` (it ends the streams
being read then, not the client), after its shell session ended, and in a second
``asyncio.run``. Against a real server and agent."""

from __future__ import annotations

import asyncio
import gc
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest

from cloudremotecontrol import AsyncClient, Client
from cloudremotecontrol.errors import Unavailable
from cloudremotecontrol.protocol.streams import StreamExit


@pytest.fixture
def lab(env: Any) -> Any:
    env.group_with_agents("lab", ["a"])
    return env


def _client(env: Any) -> Client:
    return Client(env.server.url, env.token, env.server.fingerprint)


def _aclient(env: Any) -> AsyncClient:
    return AsyncClient(env.server.url, env.token, env.server.fingerprint)


# -- halt() ends the streams open then, not every later call -----------------------------


def test_after_halt_events_and_run_wait_work_again(lab, tmp_path: Path) -> None:
    """A halted client gave [] for every later events() and started run_wait's job then
    raised Unavailable: a script retrying on Unavailable ran the command twice."""
    mark = tmp_path / "ran"
    with _client(lab) as c:
        c.halt()
        assert [ev.type for ev in c.events("lab")], "events() after halt() is empty"
        result = c.run_wait("lab", "a", argv=["sh", "-c", f"echo x >> {mark}; exit 3"])
        assert result.results["a"].exit_code == 3
        assert mark.read_text() == "x\n"
        # halt() still ends the follow in progress when it is called.
        threading.Timer(1.0, c.halt).start()
        with pytest.raises(Unavailable, match="halted") as info:
            c.run_wait("lab", "a", command="sleep 3")
        assert info.value.code == "halted"
        # ...and once more, the client works.
        assert c.run_wait("lab", "a", argv=["true"]).ok


def test_halt_ends_a_follow_open_then_and_not_one_opened_later(lab) -> None:
    with _client(lab) as c:
        cursor = c.event_cursor("lab")
        open_then = c.events("lab", since=cursor, follow=True, keepalive=True)
        c.halt()
        assert list(open_then) == []  # made before halt(): halted
        later = c.events("lab", since=0, follow=True)
        assert next(later).cursor > 0  # made after: read as usual
        later.close()


def test_async_after_halt_events_and_run_wait_work_again(lab, tmp_path: Path) -> None:
    mark = tmp_path / "ran"

    async def go() -> None:
        async with _aclient(lab) as c:
            c.halt()
            assert [ev.type async for ev in c.events("lab")], "events() after halt() is empty"
            result = await c.run_wait("lab", "a", argv=["sh", "-c", f"echo x >> {mark}; exit 3"])
            assert result.results["a"].exit_code == 3
            loop = asyncio.get_running_loop()
            loop.call_later(1.0, c.halt)
            with pytest.raises(Unavailable, match="halted") as info:
                await c.run_wait("lab", "a", command="sleep 3")
            assert info.value.code == "halted"
            assert (await c.run_wait("lab", "a", argv=["true"])).ok

    asyncio.run(go())
    assert mark.read_text() == "x\n"


# -- a shell session used after it ended: Unavailable, with its exit code ----------------


def test_async_shell_used_after_it_ended_raises_unavailable(lab) -> None:
    """recv raised a bare StreamClosed (no message), send and resize websockets'
    ConnectionClosedOK: nothing from the documented error tree."""

    async def go() -> None:
        async with _aclient(lab) as c:
            sh = await c.shell("lab", "a", argv=["sh", "-c", "exit 3"])
            while not isinstance(await sh.recv(), StreamExit):
                pass
            assert sh.exit_code == 3
            for use in (sh.recv, lambda: sh.send(b"x"), lambda: sh.resize(100, 30)):
                with pytest.raises(Unavailable, match=r"has ended \(exit code 3\)") as info:
                    await use()
                assert info.value.details.get("exit_code") == 3
            await sh.close()
            with pytest.raises(Unavailable, match=r"ended|closed"):
                await sh.send(b"x")

    asyncio.run(go())


def test_sync_shell_used_after_it_ended_raises_unavailable(lab) -> None:
    with _client(lab) as c:
        with c.shell("lab", "a", argv=["sh", "-c", "exit 3"]) as sh:
            assert sh.wait(60) == 3
            assert sh.recv() == b""  # as documented: b"" once the session ended
            for use in (lambda: sh.send(b"x"), lambda: sh.resize(100, 30)):
                with pytest.raises(Unavailable, match=r"has ended \(exit code 3\)") as info:
                    use()
                assert info.value.details.get("exit_code") == 3
            with pytest.raises(Unavailable, match="ended"):
                sh.expect("anything", timeout=5)


# -- one AsyncClient in two asyncio.run() ------------------------------------------------


def test_async_client_works_in_a_second_event_loop(lab) -> None:
    """The httpx.AsyncClient of the first loop was used on the second: RuntimeError
    ("Event loop is closed"). Then the connections of the first loops were left for the
    garbage collector, which warned of them (``unclosed transport``) wherever it ran:
    each loop closes its own as it ends."""
    c = _aclient(lab)

    async def names() -> list[str]:
        return [m["name"] for m in (await c.group("lab"))["machines"]]

    async def run_and_close() -> int:
        result = await c.run_wait("lab", "a", argv=["sh", "-c", "exit 2"])
        await c.close()
        return result.exit_code

    gc.collect()  # what earlier tests left
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", ResourceWarning)
        assert asyncio.run(names()) == ["a"]
        assert asyncio.run(names()) == ["a"]
        assert asyncio.run(run_and_close()) == 2
        gc.collect()
    unclosed = [str(w.message) for w in seen if issubclass(w.category, ResourceWarning)]
    assert unclosed == []
