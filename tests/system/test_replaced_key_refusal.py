"""A key replaced by `crc bootstrap` is told apart from a mistyped one: whoever presents
it with its own secret hears "replaced by a newer key" (naming the group and machine,
and whether the machine enrolled with the newer key since); a key id with any other
secret still hears "rejected"; a replaced key of a deleted group hears "revoked", as its
group's other keys. Same code and status (401 ``key_rejected``) for all, never a key in
the server's log: a real server on SQLite and on PostgreSQL, a real agent."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from wire_helpers import assert_error, pinned_http

from cloudremotecontrol.protocol.tokens import parse_secret


def _refused(http: Any, key: str) -> str:
    return assert_error(http.post("/v1/agent/enroll", json={"key": key}), 401, "key_rejected")


def _other_secret(key: str) -> str:
    """The key's id with a secret of the same shape that is not its own."""
    parsed = parse_secret(key, "k")
    assert parsed is not None
    secret = parsed.secret
    flipped = ("B" if secret[0] != "B" else "C") + secret[1:]
    return key[: len(key) - len(secret)] + flipped


def test_a_replaced_key_is_told_apart_only_to_whoever_holds_it(db_env: Any) -> None:
    env = db_env
    first = env.client.create_group("lab", ["a", "b"])["machines"][0]["key"]
    second = env.client.machine_key("lab", "a")["key"]
    newest = env.client.machine_key("lab", "a")["key"]
    with pinned_http(env.server) as http:
        for old in (first, second):  # each key replaced, not only the last one
            said = _refused(http, old)
            assert said.startswith("enrollment key replaced by a newer key"), said
            assert "`crc bootstrap lab a`" in said and "copy it exactly" not in said, said
            # The same key id with another secret: nothing but "rejected".
            said = _refused(http, _other_secret(old))
            assert said.startswith("enrollment key rejected") and "copy it exactly" in said
            assert "replaced" not in said and "lab" not in said, said
        # A key nobody issued is "rejected", as before.
        said = _refused(http, _other_secret(newest).replace("crck_", "crck_0", 1))
        assert "replaced" not in said, said

    # The machine enrolls with the newest key: the old one says so.
    env.agent("a", newest)
    env.wait_state("lab", ["a"], "ready")
    with pinned_http(env.server) as http:
        said = _refused(http, first)
        assert "replaced by a newer key" in said, said
        assert "machine a of group lab has enrolled with the newer key already" in said, said
    log = env.server.log_path.read_text(errors="replace")
    for key in (first, second, newest):
        assert parse_secret(key, "k").secret not in log  # type: ignore[union-attr]


def test_an_agent_with_a_replaced_key_stops_saying_it_was_replaced(env: Any) -> None:
    old = env.client.create_group("lab", ["a"])["machines"][0]["key"]
    env.client.machine_key("lab", "a")
    base = {k: v for k, v in os.environ.items() if not k.startswith("CRC_")}
    argv = [sys.executable, "-m", "cloudremotecontrol.agent", "run", "--url", env.server.url]
    argv += ["--fingerprint", env.server.fingerprint]
    argv += ["--state-dir", str(env.tmp / "st"), "--hosts-file", str(env.tmp / "hosts")]
    r = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env={**base, "CRC_KEY": old}
    )
    assert r.returncode == 3, r.stderr
    assert "enrollment key replaced by a newer key" in r.stderr, r.stderr
    assert "`crc bootstrap lab a`" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert old not in r.stderr
    assert not (env.tmp / "st" / "credential.json").exists()


def test_a_replaced_key_of_a_deleted_group_is_revoked_with_it(env: Any) -> None:
    old = env.client.create_group("gone", ["a"])["machines"][0]["key"]
    env.client.machine_key("gone", "a")
    env.client.delete_group("gone")
    with pinned_http(env.server) as http:
        said = _refused(http, old)
        assert "revoked: its group gone was deleted" in said, said
        assert "replaced" not in said, said
        said = _refused(http, _other_secret(old))
        assert "revoked" not in said and "gone" not in said, said
