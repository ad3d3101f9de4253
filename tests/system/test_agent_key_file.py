"""`crc agent run --key-file`: the single-use key is read only to enroll, and its file
is removed once the credential is saved (as `crc agent install` does); an enrolled
agent started again with the same command line runs without it."""

from __future__ import annotations

import os
import stat

from conftest import Env


def test_key_file_is_removed_after_enrolling_and_not_needed_to_restart(env: Env) -> None:
    key = env.client.create_group("lab", ["a"])["machines"][0]["key"]
    key_file = env.tmp / "key"
    key_file.write_text(key + "\n")
    agent = env.agent("a", None, extra=["--key-file", str(key_file)])
    env.wait_state("lab", ["a"], "ready")
    assert not key_file.exists(), "the used key stays on disk"
    state_dir = env.tmp / "agents" / "a"
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(state_dir / "credential.json").st_mode) == 0o600
    # The service's command line does not change after enrollment: it still names the
    # key file, which is gone.
    agent.stop()
    env.wait_state("lab", ["a"], "offline")
    again = env.agent("a", None, extra=["--key-file", str(key_file)])
    env.wait_state("lab", ["a"], "ready")
    assert again.alive(), again.log()
    assert "cannot read key file" not in again.log()


def test_an_unreadable_key_file_still_stops_an_agent_not_enrolled(env: Env) -> None:
    env.client.create_group("lab", ["a"])
    agent = env.agent("a", None, extra=["--key-file", str(env.tmp / "missing")])
    assert agent.wait(60) == 2
    assert "cannot read key file" in agent.log()


def test_the_key_file_wins_over_an_old_crc_key_in_the_environment(env: Env) -> None:
    """An image or cloud-init environment may still export an old ``CRC_KEY``: the key
    file the startup script wrote is the one used (and removed)."""
    key = env.client.create_group("lab", ["a"])["machines"][0]["key"]
    key_file = env.tmp / "key"
    key_file.write_text(key + "\n")
    stale = "crck_" + "0" * 8 + "_" + "x" * 32
    agent = env.agent("a", None, extra=["--key-file", str(key_file)], env={"CRC_KEY": stale})
    env.wait_state("lab", ["a"], "ready")
    assert agent.alive(), agent.log()
    assert not key_file.exists()
