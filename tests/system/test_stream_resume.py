"""A server killed (kill -9) and restarted while a master follows its events: `crc run`
and the SDKs' streams resume from their cursor (nothing lost, nothing twice), and give up
with a clear error once the server stays away longer than they wait."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from cloudremotecontrol.errors import Unavailable
from cloudremotecontrol.master.aclient import AsyncClient
from cloudremotecontrol.master.client import Client


def test_crc_run_goes_on_across_a_server_killed_and_restarted(env):
    env.group_with_agents("lab", ["a"])
    argv = ["run", "lab", "--to", "a", "--shell", "sh", "--", "echo start; sleep 3; echo done"]
    run = subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env.cli_env},
    )
    try:
        assert run.stdout is not None
        assert run.stdout.readline() == "[a] start\n"
        env.server.kill()  # the stream breaks mid-job
        time.sleep(1.0)
        env.server.start()
        out, err = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 0, err
    assert out == "[a] done\n", out  # after the first line: the rest, once
    assert "Traceback" not in err
    # Said while it happens: up to a minute of silence would look like a hang.
    notes = [ln for ln in err.splitlines() if ln.startswith("crc: event stream")]
    assert len(notes) == 2, err
    assert notes[0].startswith(f"crc: event stream from {env.server.url} broke ("), err
    assert notes[0].endswith("): resuming it where it was, for up to 60 s"), err
    assert notes[1] == f"crc: event stream from {env.server.url} resumed", err


def test_an_idle_follower_says_resumed_once_the_stream_is_open_again(env):
    """`crc events -f` with no new event after a restart: "resumed" is said when the
    stream is open again, not left "resuming it..." until an event comes."""
    import queue
    import threading

    env.client.create_group("lab", ["a"])
    follow = subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", "events", "lab", "-f"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env.cli_env},
    )
    notes: queue.Queue[str] = queue.Queue()
    assert follow.stdout is not None and follow.stderr is not None
    reader = threading.Thread(target=lambda: [notes.put(x) for x in follow.stderr], daemon=True)
    reader.start()
    try:
        assert "group.created" in follow.stdout.readline()  # the stream is open
        env.server.kill()
        assert "broke (" in notes.get(timeout=30)
        env.server.start()
        resumed = notes.get(timeout=30)  # (a keepalive comes 5 s after opening)
        assert resumed == f"crc: event stream from {env.server.url} resumed\n", resumed
    finally:
        follow.kill()
        follow.wait()
        reader.join(10)
        follow.stdout.close()
        follow.stderr.close()


def test_async_events_resume_from_their_cursor_after_a_restart(env):
    env.client.create_group("lab", ["a"])
    url, token, fp = env.server.url, env.token, env.server.fingerprint

    async def follow() -> list[tuple[int, str]]:
        seen: list[tuple[int, str]] = []
        async with AsyncClient(url, token, fp) as client:
            await client.kv_set("lab", "before", 1)
            async for ev in client.events("lab", since=0, follow=True):
                seen.append((ev.cursor, ev.type))
                if ev.type == "kv.set" and ev.data.get("key") == "before":
                    await asyncio.to_thread(env.server.kill)
                    await asyncio.to_thread(env.server.start)

                    def after() -> None:
                        with Client(url, token, fp) as fresh:
                            fresh.kv_set("lab", "after", 2)

                    await asyncio.to_thread(after)
                if ev.type == "kv.set" and ev.data.get("key") == "after":
                    return seen
        raise AssertionError(f"the stream ended: {seen}")

    seen = asyncio.run(asyncio.wait_for(follow(), 120))
    cursors = [c for c, _ in seen]
    assert cursors == sorted(set(cursors)), seen  # in order, none twice
    assert [t for _, t in seen].count("kv.set") == 2, seen


def test_a_server_that_stays_away_ends_the_stream_with_a_clear_error(env):
    env.client.create_group("lab", ["a"])
    with Client(env.server.url, env.token, env.server.fingerprint, resume_for=2.0) as c:
        stream = c.events("lab", since=0, follow=True)
        next(stream)  # group.created: the stream is open
        env.server.kill()
        started = time.monotonic()
        with pytest.raises(Unavailable, match="could not be resumed within 2 s"):
            for _ in stream:
                pass
        assert time.monotonic() - started >= 2.0  # it tried for the whole window
