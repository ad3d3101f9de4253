"""`crc logout` removes the profile `crc login` saved, says what it removed (and that the
token itself is not revoked), and is no error when nothing is stored."""

from __future__ import annotations

import json

NO_ENV = {"CRC_URL": None, "CRC_TOKEN": None, "CRC_FINGERPRINT": None}


def test_logout_removes_the_saved_profile_and_says_so(env, crc):
    profile = env.tmp / "cfg-alice" / "config.json"
    r = crc("login", "--url", env.server.url, "--token", env.token)
    assert r.returncode == 0, r.stderr
    assert env.token in profile.read_text()
    r = crc("logout", extra_env=NO_ENV)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"logged out: removed the profile {profile} for {env.server.url}")
    assert "crc server revoke-token" in r.stdout and r.stderr == "", r
    assert not profile.exists()
    r = crc("group", "list", extra_env=NO_ENV)
    assert r.returncode == 3 and "not logged in" in r.stderr, r
    again = crc("logout", extra_env=NO_ENV)
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"not logged in: no profile in {profile.parent} (nothing removed)\n"
    doc = json.loads(crc("logout", "--json", extra_env=NO_ENV).stdout)
    assert doc == {"removed": False, "profile": str(profile), "url": None, "environment": []}


def test_logout_with_a_token_in_the_environment_says_it_still_logs_crc_in(env, crc):
    profile = env.tmp / "cfg-alice" / "config.json"
    assert crc("login", "--url", env.server.url, "--token", env.token).returncode == 0
    r = crc("logout", extra_env={"CRC_URL": None, "CRC_FINGERPRINT": None})
    assert r.returncode == 0, r.stderr
    assert not profile.exists()
    assert r.stderr == (
        "crc: warning: CRC_TOKEN is set in the environment, which crc still uses: unset it too\n"
    ), r.stderr


def test_logout_removes_a_damaged_profile_too(env, crc):
    profile = env.tmp / "cfg-alice" / "config.json"
    profile.parent.mkdir(parents=True, exist_ok=True)
    profile.write_text('{"token": "' + env.token + '", "url": 3}')
    doc = json.loads(crc("logout", "--json", extra_env=NO_ENV).stdout)
    assert doc["removed"] is True and doc["url"] is None, doc
    assert not profile.exists()
