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

    def wait() -> Future[httpx.Response]:
        return pool.submit(http_of(server).get, url, params={"wait": 100}, headers=h)

    waits = [wait() for _ in range(cap)]
    extra = http_of(server)
    deadline = time.monotonic() + 60
    while True:
        r = extra.get(url, params={"wait": 0.5}, headers=h)
        if r.status_code == 429:
            break
        assert_error(r, 404, "timeout")  # not refused (yet): it waited and timed out
        assert time.monotonic() < deadline, f"{cap + 1} waits at once were never refused"
        for i, w in enumerate(waits):
            if w.done():
                # On a loaded machine some of the ``cap`` arrive after a look of
                # ``extra`` took a place, and are refused: they are sent again, so that
                # all ``cap`` end up waiting at once.
                assert_error(w.result(), 429, "rate_limited")
                waits[i] = wait()
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


def test_a_masters_kv_wait_turned_away_is_asked_again_after_retry_after(
    env: Env, http_of: Any
) -> None:
    """The SDK (sync and async, so `crc kv get --wait` too) asks again for a wait the
    server turned away with 429, after its Retry-After, within the caller's ``wait``;
    one whose ``wait`` ends before then gets the refusal at once."""
    import asyncio
    import threading

    from cloudremotecontrol.errors import RateLimited, TimedOut
    from cloudremotecontrol.master.aclient import AsyncClient
    from cloudremotecontrol.master.client import Client

    env.client.create_group("kvcap", ["a"])
    master_url = "/v1/groups/kvcap/kv/k1"
    url, token, fp = env.server.url, env.token, env.server.fingerprint
    refused = {"sync": threading.Event(), "async": threading.Event()}

    async def async_get() -> dict[str, Any]:
        async with AsyncClient(url, token, fp) as client:
            http = await client._client()

            async def seen(r: httpx.Response) -> None:
                if r.status_code == 429:
                    refused["async"].set()

            http.event_hooks["response"].append(seen)
            return await client.kv_get("kvcap", "k2", wait=60)

    with ThreadPoolExecutor(MAX_KV_WAITS_PER_USER + 8) as pool, Client(url, token, fp) as sync:
        waits = _fill(pool, http_of, env.server, master_url, token, MAX_KV_WAITS_PER_USER)
        with pytest.raises(RateLimited, match="key/value waits"):  # 5 s > 2 s: at once
            sync.kv_get("kvcap", "k2", wait=2)
        sync._http.event_hooks["response"].append(
            lambda r: refused["sync"].set() if r.status_code == 429 else None
        )
        got_sync = pool.submit(sync.kv_get, "kvcap", "k2", 60)
        got_async = pool.submit(asyncio.run, async_get())
        # One that is asked again and then times out says the wait its caller gave.
        other = Client(url, token, fp)
        refused["other"] = threading.Event()
        other._http.event_hooks["response"].append(
            lambda r: refused["other"].set() if r.status_code == 429 else None
        )
        never = pool.submit(other.kv_get, "kvcap", "never", 8)
        assert all(refused[who].wait(60) for who in ("sync", "async", "other"))
        env.client.kv_set("kvcap", "k2", {"v": 2})
        env.client.kv_set("kvcap", "k1", {"v": 1})  # the waits held end: places are free
        assert [w.result(timeout=60).status_code for w in waits] == [200] * len(waits)
        assert got_sync.result(timeout=60)["value"] == {"v": 2}
        assert got_async.result(timeout=60)["value"] == {"v": 2}
        with pytest.raises(TimedOut, match=r"^key 'never' was not set within 8 s$"):
            never.result(timeout=60)
        other.close()
    assert_no_traceback_in_server_log(env.server)


def test_a_masters_kv_wait_outlives_a_server_restart(env: Env, tmp_path: Any) -> None:
    """A wait cut by the server going away (a restart) is asked again, within the
    caller's ``wait``, as the agent's `crc agent kv wait` does: `crc kv get --wait` and
    the AsyncClient both get the value set once the server is back."""
    import asyncio
    import json
    import os
    import socket
    import subprocess
    import sys
    import threading

    from cloudremotecontrol.master.aclient import AsyncClient

    env.client.create_group("lab", ["a"])
    base = {k: v for k, v in os.environ.items() if not k.startswith("CRC_")}
    profile = {**base, "CRC_CONFIG_DIR": str(tmp_path / "cfg")}
    login = [sys.executable, "-m", "cloudremotecontrol", "login", "--url", env.server.url]
    login += ["--token", env.token, "--fingerprint", env.server.fingerprint]
    subprocess.run(login, env=profile, check=True, capture_output=True, timeout=60)
    opened, down = threading.Event(), threading.Event()

    async def async_get() -> dict[str, Any]:
        async with AsyncClient(env.server.url, env.token, env.server.fingerprint) as client:
            await client.whoami()
            opened.set()
            await asyncio.to_thread(down.wait, 60)
            return await client.kv_get("lab", "k", wait=60)

    with ThreadPoolExecutor(1) as pool:
        got = pool.submit(asyncio.run, async_get())
        assert opened.wait(60)
        env.server.kill()
        # The server's port, held by a listener that drops whatever connects: each
        # waiter has asked once while the server is gone (and been cut off) before it is
        # back.
        hold = socket.create_server(("127.0.0.1", env.server.port))
        hold.settimeout(60)
        down.set()
        cli = subprocess.Popen(
            [sys.executable, "-m", "cloudremotecontrol", "kv", "get", "lab", "k", "--wait", "60s"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=profile,
        )
        try:
            try:
                for _ in range(2):  # the CLI's and the AsyncClient's
                    conn, _ = hold.accept()
                    conn.close()
            finally:
                hold.close()
            env.server.start()
            env.client.kv_set("lab", "k", {"v": 1})
            assert got.result(timeout=60)["value"] == {"v": 1}
            out, err = cli.communicate(timeout=60)
        finally:
            cli.kill()
            cli.wait()
    assert cli.returncode == 0, err
    assert json.loads(out) == {"v": 1} and "Traceback" not in err
