"""The credential an enrollment with a nonce answers: the same for the same key and
nonce (overlapping retries), and given by neither the nonce nor the key alone."""

from __future__ import annotations

from pathlib import Path

from cloudremotecontrol.errors import Unauthorized
from cloudremotecontrol.protocol.tokens import derived_secret, parse_secret
from cloudremotecontrol.server.ops import enrollment, groups, users
from cloudremotecontrol.server.store.sqlite import SqliteStore

NONCE = "n" * 32  # a guessable nonce: what an agent should not pick, and might


def test_a_nonces_credential_needs_the_keys_secret_too(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "crc.db"))
    store.open_sync()
    try:
        user = store.write_sync(users.authenticate_master, store.write_sync(users.create_user, "u"))
        made = store.write_sync(
            groups.create_group, user["user_id"], "lab", [{"name": "a"}, {"name": "b"}]
        )
        key_a, key_b = (m["key"] for m in made["machines"])
        first = store.write_sync(enrollment.enroll, key_a, None, NONCE)["credential"]
        again = store.write_sync(enrollment.enroll, key_a, None, NONCE)["credential"]
        other = store.write_sync(enrollment.enroll, key_b, None, NONCE)["credential"]
        assert first == again  # a retry's answer works as the first one's
        assert other != first
        assert store.write_sync(enrollment.authenticate_machine, again)["name"] == "a"

        # Whoever knows the nonce and the key's id (it is logged), not the key's secret,
        # cannot make the credential.
        kid = parse_secret(key_a, "k")
        assert kid is not None
        guessed = str(derived_secret("a", NONCE, f"enroll {kid.id}"))
        assert guessed != first
        try:
            store.write_sync(enrollment.authenticate_machine, guessed)
        except Unauthorized:
            pass
        else:
            raise AssertionError("a credential made from the nonce alone was accepted")
    finally:
        store.close_sync()
