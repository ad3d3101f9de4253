"""Event streams on a real server while commits come in bursts: the server wakes a
stream at most once per short interval then, and a follower still gets every event, the
last one included, without another commit after it."""

from __future__ import annotations

import threading
import time
from typing import Any

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
