"""`crc pull` REMOTE with control characters (an escape sequence, a carriage return, a
newline, DEL, C1) is refused as a push's REMOTE is: by the CLI (exit 2, one line), the
SDK's clients (InvalidInput) and the API (400 naming the field), before any job."""

from __future__ import annotations

import asyncio

import pytest
from wire_helpers import assert_error, bearer, pinned_http

from cloudremotecontrol.errors import InvalidInput
from cloudremotecontrol.master.aclient import AsyncClient

ESCAPES = "/tmp/x/esc\x1b[31mRED\rX\nline2.txt"
RAW = "\x1b\r\n\x7f\x9b\t\x01"
REMOTES = (ESCAPES, "/tmp/x/del\x7f.txt", "/tmp/x/c1\x9b31m.txt", "/tmp/x/tab\t.txt", "/tmp/\x01")


def test_crc_pull_refuses_a_remote_with_control_characters_before_any_job(env, crc, tmp_path):
    env.group_with_agents("lab", ["a"])
    local = tmp_path / "back.txt"
    for remote in REMOTES:
        r = crc("pull", "lab", "--from", "a", remote, str(local))
        assert r.returncode == 2, (remote, r.returncode, r.stdout, r.stderr)
        assert r.stderr.startswith("crc: error: remote path "), r.stderr
        assert "contains a control character" in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1 and r.stderr.endswith("\n"), repr(r.stderr)
        assert not any(c in r.stdout + r.stderr[:-1] for c in RAW), repr(r.stderr)
    assert not local.exists()
    assert env.client.list_jobs("lab") == []  # no job made
    # Non-ASCII that is no control still goes.
    remote = tmp_path / "café ünï.txt"
    remote.write_text("hé\n")
    r = crc("pull", "lab", "--from", "a", str(remote), str(local))
    assert r.returncode == 0, r.stderr
    assert local.read_text() == "hé\n"


def test_both_sdk_clients_refuse_a_pull_remote_with_control_characters(env):
    env.client.create_group("lab", ["a"])  # never connects: nothing would run anyway

    async def start(remote: str) -> None:
        async with AsyncClient(env.server.url, env.token, env.server.fingerprint) as c:
            await c.start_pull("lab", "a", remote)

    for remote in REMOTES:
        with pytest.raises(InvalidInput, match="contains a control character") as caught:
            env.client.start_pull("lab", "a", remote)
        assert caught.value.details == {"field": "path"}
        with pytest.raises(InvalidInput, match="contains a control character") as caught:
            asyncio.run(start(remote))
        assert caught.value.details == {"field": "path"}
    assert env.client.list_jobs("lab") == []


def test_the_api_refuses_a_pull_remote_with_control_characters_naming_the_field(env):
    env.client.create_group("lab", ["a"])
    with pinned_http(env.server) as http:
        for remote in REMOTES:
            resp = http.post(
                "/v1/groups/lab/pulls",
                json={"machine": "a", "path": remote},
                headers={"authorization": bearer(env.token)},
            )
            assert_error(resp, 400, "invalid_input", "control character")
            assert resp.json()["error"]["details"] == {"field": "path"}, resp.text
            assert not any(c in resp.text for c in "\x1b\r\x7f\x9b\t\x01"), resp.text
    assert env.client.list_jobs("lab") == []  # no job made
