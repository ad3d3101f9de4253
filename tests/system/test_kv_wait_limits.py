"""Key/value long polls (``GET …/kv/KEY?wait=``) at once are capped per machine and per
master user: one machine credential holding a thousand waits (a connection, a file
descriptor each) took every descriptor of the server and locked everyone else out."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from wire_helpers import (
    assert_error,
    assert_no_traceback_in_server_log,
    bearer,
    enroll,
    pinned_http,
)

from cloudremotecontrol.master.localrun import ServerProcess
from conftest import Env

# The documented limits (docs/reference.md, protocol/limits.py).
MAX_KV_WAITS_PER_MACHINE = 16
MAX_KV_WAITS_PER_USER = 128


@pytest.fixture
def http_of() -> Iterator[Callable[[ServerProcess], httpx.Client]]:
    made: list[httpx.Client] = []

    def make(server: ServerProcess) -> httpx.Client:
        made.append(pinned_http(server))
        made[-1].timeout = httpx.Timeout(120)
        return made[-1]

    yield make
    for c in made:
        c.close()


def _fill(
    pool: ThreadPoolExecutor,
    http_of: Callable[[ServerProcess], httpx.Client],
    server: ServerProcess,
    url: str,
    token: str,
    cap: int,
) -> list[Future[httpx.Response]]:
    """``cap`` waits of ``token`` at once (each on a connection of its own), and a look
    for one more, again until it is refused: all ``cap`` are then waiting. Without a
    cap none ever is, and the test fails."""
    h = {"Authorization": bearer(token)}
    waits = [
        pool.submit(http_of(server).get, url, params={"wait": 100}, headers=h) for _ in range(cap)
    ]
    extra = http_of(server)
    deadline = time.monotonic() + 60
    while True:
        r = extra.get(url, params={"wait": 0.5}, headers=h)
        if r.status_code == 429:
            break
        assert_error(r, 404, "timeout")  # not refused (yet): it waited and timed out
        assert time.monotonic() < deadline, f"{cap + 1} waits at once were never refused"
    msg = assert_error(r, 429, "rate_limited", f"at most {cap} may wait")
    assert "key/value waits" in msg
    assert r.headers["retry-after"] == "5"
    assert r.headers["connection"] == "close"  # no descriptor kept for it meanwhile
    assert not any(w.done() for w in waits), [w.result().text for w in waits if w.done()]
    return waits


def test_a_machine_and_a_user_wait_on_keys_at_most_so_many_times_at_once(
    env: Env, http_of: Any
) -> None:
    key = env.client.create_group("kvcap", ["a", "b"])["machines"]
    http = http_of(env.server)
    cred_a, cred_b = enroll(http, key[0]["key"]), enroll(http, key[1]["key"])
    agent_url = "/v1/agent/kv/k1"
    with ThreadPoolExecutor(MAX_KV_WAITS_PER_USER + MAX_KV_WAITS_PER_MACHINE + 8) as pool:
        waits = _fill(pool, http_of, env.server, agent_url, cred_a, MAX_KV_WAITS_PER_MACHINE)
        # Refused at once, every time, while the machine's waits go on.
        for _ in range(20):
            r = http.get(agent_url, params={"wait": 100}, headers={"Authorization": bearer(cred_a)})
            assert_error(r, 429, "rate_limited")
        # A read that does not wait is not refused; another machine waits as before.
        r = http.get(agent_url, headers={"Authorization": bearer(cred_a)})
        assert_error(r, 404, "not_found")
        r = http.get(agent_url, params={"wait": 0.2}, headers={"Authorization": bearer(cred_b)})
        assert_error(r, 404, "timeout")

        # A master user: its own cap.
        master_url = "/v1/groups/kvcap/kv/k1"
        waits += _fill(pool, http_of, env.server, master_url, env.token, MAX_KV_WAITS_PER_USER)
        r = http.get(master_url, headers={"Authorization": bearer(env.token)})
        assert_error(r, 404, "not_found")

        # The key is set: every wait answers it, and the places are free again.
        env.client.kv_set("kvcap", "k1", {"v": 1})
        answers = [w.result(timeout=60) for w in waits]
    assert [a.status_code for a in answers] == [200] * len(waits), [
        a.text for a in answers if a.status_code != 200
    ][:3]
    assert {a.json()["value"]["v"] for a in answers} == {1}
    for url, token in ((agent_url, cred_a), (master_url, env.token)):
        r = http.get(
            url, params={"wait": 100, "newer_than": 0}, headers={"Authorization": bearer(token)}
        )
        assert r.status_code == 200, r.text
    assert_no_traceback_in_server_log(env.server)
