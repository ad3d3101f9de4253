"""A target selector's comma-joined KEY=VALUE pairs must all match, so each key appears
once: ``role=db,role=web`` is refused as invalid input by the server (HTTP 400), the SDK
and the CLI (exit 2) for every request that takes a target, instead of being read as
its last value (the machines with ``role=web`` alone)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from wire_helpers import assert_error, bearer, pinned_http

from cloudremotecontrol.errors import InvalidInput

MACHINES = [
    {"name": "x", "labels": {"role": "db", "zone": "a"}},
    {"name": "y", "labels": {"role": "web", "zone": "a"}},
    {"name": "z", "labels": {"role": "db", "zone": "b"}},
]
REPEATED = {"role=db,role=web": "role", "role=web,role=db": "role", "zone=b,zone=a": "zone"}


def refusal(selector: str, key: str) -> str:
    return (
        f"selector {selector!r} names label {key} twice: a selector matches machines "
        "that have every KEY=VALUE it lists"
    )


@pytest.fixture
def http(server: Any) -> Iterator[httpx.Client]:
    with pinned_http(server) as c:
        yield c


def jobs_and_cursor(env: Any) -> tuple[list[Any], Any]:
    return env.client.list_jobs("g"), env.client.event_cursor("g")


def test_a_selector_naming_a_key_twice_is_refused_by_the_api_and_the_sdk(env, http):
    env.client.create_group("g", MACHINES)
    before = jobs_and_cursor(env)
    alice = {"Authorization": bearer(env.token)}
    for selector, key in REPEATED.items():
        for path, body in [
            ("/v1/groups/g/jobs", {"to": selector, "argv": ["true"]}),
            ("/v1/groups/g/messages", {"to": selector, "type": "user.x", "body": {}}),
            ("/v1/groups/g/hosts-sync", {"to": selector}),
        ]:
            resp = http.post(path, json=body, headers=alice)
            assert_error(resp, 400, "invalid_input", refusal(selector, key))
        for call in [
            lambda s=selector: env.client.start_job("g", s, argv=["true"]),
            lambda s=selector: env.client.send_message("g", s, "user.x", {}),
            lambda s=selector: env.client.hosts_sync("g", s),
        ]:
            with pytest.raises(InvalidInput) as exc:
                call()
            assert exc.value.message == refusal(selector, key)
    assert jobs_and_cursor(env) == before  # nothing was started or sent
    # Different keys combine: a machine must have every pair.
    assert env.client.start_job("g", "role=db,zone=a", argv=["true"])["targets"] == ["x"]
    assert env.client.start_job("g", "role=db", argv=["true"])["targets"] == ["x", "z"]


def test_the_cli_refuses_a_selector_naming_a_key_twice(env, crc, tmp_path: Path):
    env.client.create_group("g", MACHINES)
    before = jobs_and_cursor(env)
    local = tmp_path / "f.conf"
    local.write_text("x\n")
    state = str(tmp_path / "agent-state")
    for selector, key in REPEATED.items():
        for args in [
            ("run", "g", "--to", selector, "--", "true"),
            ("push", "g", "--to", selector, str(local), "/tmp/f.conf"),
            ("hosts", "sync", "g", "--to", selector),
            ("send", "g", "--to", selector, "user.x", "{}"),
            ("agent", "emit", "user.x", "{}", "--to", selector, "--state-dir", state),
        ]:
            r = crc(*args, timeout=30)
            assert r.returncode == 2, (args, r.returncode, r.stdout, r.stderr)
            assert r.stderr == f"crc: error: {refusal(selector, key)}\n", (args, r.stderr)
    assert jobs_and_cursor(env) == before
    r = crc("run", "--help")
    assert "every pair (each key once)" in " ".join(r.stdout.split()), r.stdout
