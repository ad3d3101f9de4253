"""`CRC_URL`, `CRC_TOKEN` and `CRC_FINGERPRINT` set but empty are an error naming the
variable (exit 2), in the CLI and in the SDK's ``from_profile``: never "use the saved
`crc login` profile", so a script that cleared its token does not act with the identity
saved on the computer (docs/reference.md)."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from cloudremotecontrol.errors import InvalidInput
from cloudremotecontrol.master.aclient import AsyncClient
from cloudremotecontrol.master.client import Client

VARIABLES = ["CRC_URL", "CRC_TOKEN", "CRC_FINGERPRINT"]


@pytest.fixture
def logged_in(env, crc, tmp_path) -> dict[str, str | None]:
    """A `crc login` profile saved in a config dir of its own, and no CRC_* override."""
    cfg = str(tmp_path / "cfg")
    r = crc("login", extra_env={"CRC_CONFIG_DIR": cfg})
    assert r.returncode == 0, r.stderr
    env.client.create_group("saved", ["a"])
    profile_only: dict[str, str | None] = {v: None for v in VARIABLES}
    r = crc("group", "list", extra_env={**profile_only, "CRC_CONFIG_DIR": cfg})
    assert r.returncode == 0 and "saved" in r.stdout, r.stdout + r.stderr  # the profile works
    return {**profile_only, "CRC_CONFIG_DIR": cfg}


@pytest.mark.parametrize("value", ["", "  "])
@pytest.mark.parametrize("variable", VARIABLES)
def test_an_empty_variable_is_an_error_not_the_saved_profile(crc, logged_in, variable, value):
    r = crc("group", "list", extra_env={**logged_in, variable: value})
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr == (
        f"crc: error: {variable} is set but empty: give it a value, or unset it to use "
        "the `crc login` profile\n"
    )
    assert r.stdout == "" and "saved" not in r.stdout


@pytest.mark.parametrize("variable", VARIABLES)
def test_the_sdk_refuses_an_empty_variable_too(logged_in, monkeypatch, variable):
    monkeypatch.setenv("CRC_CONFIG_DIR", str(logged_in["CRC_CONFIG_DIR"]))
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with Client.from_profile() as c:  # the saved profile, as the CLI reads it
        assert [g["group"] for g in c.list_groups()] == ["saved"]
    monkeypatch.setenv(variable, "")
    with pytest.raises(InvalidInput, match=f"^{variable} is set but empty"):
        Client.from_profile()
    with pytest.raises(InvalidInput, match=f"^{variable} is set but empty"):
        asyncio.run(_async_from_profile())


async def _async_from_profile() -> None:
    async with AsyncClient.from_profile() as c:
        await c.list_groups()


@pytest.mark.parametrize("value", ["", "  "])
@pytest.mark.parametrize("variable", VARIABLES)
def test_crc_login_refuses_an_empty_variable_as_every_command_does(
    env, crc, tmp_path, variable, value
):
    """`crc login` read an empty variable as "not given": it asked for the token (at a
    terminal), logged in without a pin, or said --url was missing. Now, as for every
    other command, it is an error naming the variable (exit 2), and nothing is saved."""
    cfg = tmp_path / "cfg"
    given = {
        "CRC_URL": ["--url", env.server.url],
        "CRC_TOKEN": ["--token", env.token],
        "CRC_FINGERPRINT": ["--fingerprint", str(env.server.fingerprint)],
    }
    others = [arg for name, args in given.items() if name != variable for arg in args]
    unset: dict[str, str | None] = {v: None for v in VARIABLES}
    extra = {**unset, "CRC_CONFIG_DIR": str(cfg), variable: value}
    r = crc("login", *others, extra_env=extra)
    assert r.returncode == 2, r.stdout + r.stderr
    option = given[variable][0]
    assert r.stderr == (
        f"crc: error: {variable} is set but empty: give it a value, or unset it and give {option}\n"
    )
    assert r.stdout == "" and not (cfg / "config.json").exists()
    # The option given on the command line is what counts: the variable is not read.
    r = crc("login", *others, *given[variable], extra_env=extra)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (cfg / "config.json").exists()


def test_crc_login_at_a_terminal_does_not_ask_for_a_token_when_crc_token_is_empty(env, tmp_path):
    import pexpect

    base = {k: v for k, v in os.environ.items() if not k.startswith("CRC_")}
    child = pexpect.spawn(
        sys.executable,
        ["-m", "cloudremotecontrol", "login", "--url", env.server.url],
        env={**base, "CRC_CONFIG_DIR": str(tmp_path / "cfg"), "CRC_TOKEN": ""},
        timeout=60,
    )
    child.expect(pexpect.EOF)
    child.close()
    shown = child.before.decode()
    assert child.exitstatus == 2, shown
    assert "CRC_TOKEN is set but empty" in shown and "Master token" not in shown, shown
