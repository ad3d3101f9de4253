"""Enrollments of one agent that overlap (a retry sent while an earlier request is still
being served, on one server or on two replicas of one PostgreSQL database) all answer
the one credential that works: none is replaced by a request the store ran later."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from wire_helpers import assert_no_traceback_in_server_log, bearer, pinned_http

from cloudremotecontrol.master.client import Client
from cloudremotecontrol.master.localrun import ServerProcess

REQUESTS = 8
NONCE = "n0nce-of-this-agent-" + "x" * 24


@pytest.fixture(params=["sqlite", "postgresql"])
def servers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """One server on SQLite; two replicas on one PostgreSQL database."""
    database = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    first = ServerProcess(tmp_path / "srv", database=database).start()
    out = [first]
    try:
        if database is not None:
            out.append(first.replica(tmp_path / "r1").start())
        yield out
    finally:
        for srv in out:
            srv.stop()


def _enroll_at_once(servers: list[ServerProcess], key: str) -> list[Any]:
    """REQUESTS enrollments with the same key and nonce, sent together, spread over the
    servers: (status, body) of each."""
    start = threading.Barrier(REQUESTS)

    def one(i: int) -> tuple[int, Any]:
        with pinned_http(servers[i % len(servers)]) as http:
            start.wait(timeout=30)
            r = http.post("/v1/agent/enroll", json={"key": key, "nonce": NONCE})
            return r.status_code, r.json()

    with ThreadPoolExecutor(REQUESTS) as pool:
        return list(pool.map(one, range(REQUESTS)))


def _works(server: ServerProcess, cred: str) -> bool:
    with pinned_http(server) as http:
        r = http.get("/v1/agent/whoami", headers={"Authorization": bearer(cred)})
        return r.status_code == 200


def test_overlapping_enrollments_of_one_agent_all_get_the_working_credential(
    servers: list[ServerProcess],
) -> None:
    first = servers[0]
    client = Client(first.url, first.add_user("alice"), first.fingerprint)
    try:
        keys = [m["key"] for m in client.create_group("lab", ["a", "b"])["machines"]]
        # a: the first enrollment itself sent several times at once.
        # b: enrolled once, its answer lost, then retried several times at once.
        with pinned_http(first) as http:
            r = http.post("/v1/agent/enroll", json={"key": keys[1], "nonce": NONCE})
            assert r.status_code == 200, r.text
        for key in keys:
            answers = _enroll_at_once(servers, key)
            assert all(status == 200 for status, _ in answers), answers
            creds = {body["credential"] for _, body in answers}
            assert len(creds) == 1, f"{len(creds)} different credentials answered: {answers}"
            (cred,) = creds
            assert all(_works(srv, cred) for srv in servers), cred
        # Someone else with the key (no nonce, or another one) is still refused.
        with pinned_http(first) as http:
            for body in ({"key": keys[0]}, {"key": keys[0], "nonce": "y" * 43}):
                r = http.post("/v1/agent/enroll", json=body)
                assert r.status_code == 401, r.text
    finally:
        client.close()
    for srv in servers:
        assert_no_traceback_in_server_log(srv)
