"""Event streams on a real server while commits come in bursts: the server wakes a
stream at most once per short interval then, and a follower still gets every event, the
last one included, without another commit after it."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

from cloudremotecontrol.master.aclient import AsyncClient
from cloudremotecontrol.master.client import Client


def test_a_follower_gets_every_event_of_jobs_run_at_once(env: Any) -> None:
    names = ["a", "b", "c", "d"]
    env.group_with_agents("lab", names)
    start = env.client.event_cursor("lab")
    seen: list[int] = []
    final: list[int] = []
    deadline = time.monotonic() + 120

    def follow() -> None:
        with Client(env.server.url, env.token, env.server.fingerprint) as c:
            for ev in c.events("lab", since=start, follow=True, keepalive=True):
                if ev is not None:
                    seen.append(ev.cursor)
                if (final and seen and seen[-1] >= final[0]) or time.monotonic() > deadline:
                    return

    follower = threading.Thread(target=follow)
    follower.start()
    # Several jobs at once: their events are committed in quick succession, so most
    # wake-ups of the follower fall within the interval of the one before.
    jobs = [env.client.start_job("lab", "all", argv=["echo", str(i)]) for i in range(5)]
    for job in jobs:
        results = [e.result for e in env.client.follow_job(job["job_id"], job["targets"])]
        assert sorted(r.machine for r in results if r is not None) == names
    final.append(env.client.event_cursor("lab"))
    follower.join(150)
    assert not follower.is_alive()
    assert seen == [e.cursor for e in env.client.events("lab", since=start)]
    assert seen[-1] == final[0]


def _following_client(env: Any) -> tuple[Client, threading.Event]:
    """A client, and an event set once the client it follows events with has read them."""
    following = threading.Event()
    client = Client(env.server.url, env.token, env.server.fingerprint)
    make_sibling = client._sibling

    def sibling() -> Client:  # the client that follows the events: seen when it does
        s = make_sibling()
        s._http.event_hooks["response"].append(
            lambda r: following.set() if r.request.url.path.endswith("/events") else None
        )
        return s

    client._sibling = sibling  # type: ignore[method-assign]
    return client, following


def test_a_message_wait_whose_group_is_deleted_says_so(env: Any) -> None:
    """The group deleted while a message wait follows its events: NotFound (exit 4, as
    a key/value wait on it), not a stream that merely ended (exit 6)."""
    from concurrent.futures import ThreadPoolExecutor

    import pytest

    from cloudremotecontrol.errors import NotFound

    env.client.create_group("lab", ["a"])
    client, following = _following_client(env)
    with client, ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(client.wait_message, "lab", "user.never", None, None, 60)
        assert following.wait(60)
        env.client.delete_group("lab")
        with pytest.raises(NotFound, match="group 'lab' was deleted while waiting"):
            waiting.result(timeout=60)


def test_a_ready_wait_whose_group_is_deleted_says_so(env: Any) -> None:
    """Its machines revoked by the deletion of their group: NotFound (exit 4), not
    InvalidInput (exit 2, a usage error's code) for a revoked machine."""
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    import pytest

    from cloudremotecontrol.errors import NotFound

    env.client.create_group("lab", ["a"])
    client, following = _following_client(env)
    cli = subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", "wait", "lab", "--timeout", "60s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env.cli_env},
    )
    try:
        assert cli.stdout is not None
        assert cli.stdout.readline() == "[a] pending\n"  # where things stand: waiting
        with client, ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(client.wait_ready, "lab", 60)
            assert following.wait(60)
            env.client.delete_group("lab")
            with pytest.raises(NotFound, match="group 'lab' was deleted while waiting"):
                waiting.result(timeout=60)
        _, err = cli.communicate(timeout=60)
    finally:
        cli.kill()
        cli.wait()
    assert cli.returncode == 4 and "Traceback" not in err, err


def test_halt_ends_a_quiet_followed_stream_at_its_next_keepalive(env):
    """``halt()`` ends a stream followed without ``keepalive=True`` when nothing happens
    in its group: the server's keepalives (every 5 s) are where it looks. It waited for
    the group's next event, for ever on a quiet group."""
    quiet = "quiet"
    env.client.create_group(quiet, ["a"])  # its machine never enrolls: nothing happens
    c = Client(env.server.url, env.token, env.server.fingerprint)
    ended = threading.Event()

    def follow() -> None:
        for _ in c.events(quiet, follow=True):
            pass
        ended.set()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    try:
        assert not ended.wait(1.0), "a followed stream ended by itself"
        c.halt()
        assert ended.wait(30), "halt() did not end the quiet stream"
    finally:
        c.halt()
        if not ended.is_set():  # let a stuck reader go: its stream breaks, halted
            env.server.stop()
        reader.join(30)
        c.close()

    async def main() -> str:
        async with AsyncClient(env.server.url, env.token, env.server.fingerprint) as ac:

            async def follow_async() -> None:
                async for _ in ac.events(quiet, follow=True):
                    pass

            task = asyncio.create_task(follow_async())
            await asyncio.sleep(1.0)
            assert not task.done(), "a followed stream ended by itself"
            ac.halt()
            await asyncio.wait_for(task, 30)
            return "ended"

    assert asyncio.run(main()) == "ended"
