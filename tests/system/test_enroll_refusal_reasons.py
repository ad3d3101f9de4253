"""An enrollment key refused says why in words that fit what happened to it: replaced by
a newer key (`crc bootstrap`; more in test_replaced_key_refusal.py), its group deleted,
its group expired - still with the same code and status (``key_rejected``, 401), and
never with the key in the server's log."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from wire_helpers import assert_error, pinned_http


@pytest.fixture
def http(server: Any) -> Iterator[httpx.Client]:
    with pinned_http(server) as c:
        yield c


def _refused(http: httpx.Client, key: str) -> str:
    return assert_error(http.post("/v1/agent/enroll", json={"key": key}), 401, "key_rejected")


def test_a_key_replaced_by_crc_bootstrap_says_it_was(env, http):
    old = env.client.create_group("lab", ["a"])["machines"][0]["key"]
    new = env.client.machine_key("lab", "a")["key"]
    said = _refused(http, old)
    assert "replaced by a newer key" in said and "`crc bootstrap lab a`" in said, said
    assert "copy it exactly" not in said, said  # the server keeps the replaced key's hash
    assert old not in env.server.log_path.read_text(errors="replace")
    assert new not in said


def test_an_unused_key_of_a_deleted_group_says_the_group_was_deleted(env, http):
    key = env.client.create_group("gone", ["a", "b"])["machines"][0]["key"]
    env.client.delete_group("gone")
    said = _refused(http, key)
    assert "revoked: its group gone was deleted" in said, said
    assert "single use" not in said, said
    assert key not in env.server.log_path.read_text(errors="replace")


def test_an_unused_key_of_an_expired_group_says_the_group_expired(env, http):
    key = env.client.create_group("brief", ["a"], ttl=1)["machines"][0]["key"]
    deadline = time.monotonic() + 30
    while not env.client.group("brief")["expired"]:
        assert time.monotonic() < deadline, "the group never expired"
        time.sleep(0.2)
    said = _refused(http, key)
    assert "revoked: its group brief expired" in said, said
    assert "single use" not in said, said


def test_an_expired_key_says_how_to_get_a_new_one(env, http):
    m = env.client.create_group("lab", ["a"], key_ttl=1)["machines"][0]
    time.sleep(max(0.0, m["key_expires"] + 0.2 - time.time()))  # same host, same clock
    said = _refused(http, m["key"])
    assert "enrollment key expired" in said and "`crc bootstrap lab a` issues a new one" in said
