"""`crc audit --action` keeps the records of some actions (a name, or a prefix ending in
a dot; repeated or a comma list), filtered by the server (``GET /v1/audit?action=``) so
that ``--limit`` counts the records shown: a run of key/value writes no longer pushes
the others out. Bad actions (empty, too long, control characters) are refused: exit 2
from the CLI before anything is sent, 400 from the API, InvalidInput from the SDK. The
real server and `crc` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import anyio
import pytest
from wire_helpers import assert_error, pinned_http

from cloudremotecontrol.errors import InvalidInput
from cloudremotecontrol.master.aclient import AsyncClient

CRC = [sys.executable, "-m", "cloudremotecontrol"]


def _crc(env: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CRC, *args],
        env={**os.environ, **env.cli_env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _actions(env: Any, *args: str) -> list[tuple[str, Any]]:
    r = _crc(env, "audit", "--json", *args)
    assert r.returncode == 0, r
    return [
        (x["action"], (x["detail"] or {}).get("version")) for x in json.loads(r.stdout)["records"]
    ]


@pytest.fixture
def busy(db_env: Any) -> Any:
    """A group created, a key re-issued, then many key/value writes (as `crc up` makes),
    on a server on SQLite and on one on PostgreSQL."""
    env = db_env
    env.client.create_group("lab", ["a"])
    env.client.machine_key("lab", "a")
    for n in range(6):
        env.client.kv_set("lab", "step", n)
    return env


def test_the_limit_counts_the_actions_asked_for(busy: Any) -> None:
    env = busy
    assert _actions(env, "--limit", "2") == [("kv.set", 5), ("kv.set", 6)]  # crowded out
    assert _actions(env, "--action", "group.create", "--limit", "1") == [("group.create", None)]
    assert _actions(env, "--action", "kv.", "--limit", "2") == [("kv.set", 5), ("kv.set", 6)]
    both = [("group.create", None), ("machine.key_reissue", None)]
    assert _actions(env, "--action", "group.create,machine.key_reissue") == both
    assert _actions(env, "--action", "machine.", "--action", "group.create") == both
    assert _actions(env, "--action", "group.", "--group", "lab", "--limit", "5") == both[:1]
    assert _actions(env, "--action", "job.") == []  # none yet
    # `kv` is no action and no prefix (a prefix ends in a dot): nothing.
    assert _actions(env, "--action", "kv") == []
    r = _crc(env, "audit", "--action", "machine.key_reissue")  # the table too
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2, r
    assert "machine.key_reissue" in r.stdout and "kv.set" not in r.stdout, r.stdout

    # The SDK, sync and async: the same filter; a string is no list of actions.
    records = env.client.audit(limit=1, actions=["group.create"])
    assert [x["action"] for x in records] == ["group.create"]
    with pytest.raises(InvalidInput, match="invalid actions"):
        env.client.audit(actions="kv.")

    async def from_async() -> list[dict[str, Any]]:
        async with AsyncClient(env.server.url, env.token, env.server.fingerprint) as c:
            return await c.audit("lab", 3, actions=("machine.key_reissue", "group."))

    assert [x["action"] for x in anyio.run(from_async)] == ["group.create", "machine.key_reissue"]


BAD = [
    ("", "empty action"),
    ("kv.,", "empty action"),
    ("kv.set\x1b[2J", "invalid action 'kv.set\\x1b[2J'"),
    ("kv\tset", "invalid action 'kv\\tset'"),
    ("a" * 65, "at most 64 characters"),
    ("KV.set", "invalid action 'KV.set'"),
    ("kv..set", "invalid action 'kv..set'"),
    (",".join(f"a{n}" for n in range(21)), "too many actions"),
]


@pytest.mark.parametrize(("action", "said"), BAD)
def test_a_bad_action_is_refused(env: Any, action: str, said: str) -> None:
    r = _crc(env, "audit", "--action", action)
    assert r.returncode == 2, r
    assert r.stderr.startswith("crc: error: ") and said in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) == 1 and "\x1b" not in r.stderr, r.stderr
    assert r.stdout == "", r
    with pytest.raises(InvalidInput, match="action"):
        env.client.audit(actions=[action])
    with pinned_http(env.server) as http:
        http.headers["Authorization"] = f"Bearer {env.token}"
        answer = http.get("/v1/audit", params={"action": action})
        message = assert_error(answer, 400, "invalid_input")
        assert said in message, message
