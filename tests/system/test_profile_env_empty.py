"""`CRC_URL`, `CRC_TOKEN` and `CRC_FINGERPRINT` set but empty are an error naming the
variable (exit 2), in the CLI and in the SDK's ``from_profile``: never "use the saved
`crc login` profile", so a script that cleared its token does not act with the identity
saved on the computer (docs/reference.md)."""

from __future__ import annotations

import asyncio

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
