"""The SDK refuses a user's mistake before sending anything, with an error of the
``cloudremotecontrol.errors`` tree: a name or kv key that would reach another endpoint,
a number JSON cannot carry, a token no HTTP header can carry, a pull destination that
cannot be written, a damaged profile, and an answer that is not the API's."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudremotecontrol.errors import InvalidInput, Unavailable
from cloudremotecontrol.master import calls
from cloudremotecontrol.master import client as client_mod
from cloudremotecontrol.master.aclient import AsyncClient
from cloudremotecontrol.master.client import Client
from cloudremotecontrol.master.profile import Profile, load_profile, save_profile
from cloudremotecontrol.master.streams import ShellSession

# Nothing listens here: a check that lets a call through fails with Unavailable instead.
URL = "http://127.0.0.1:9"
TOKEN = "crcm_0123456789abcdef_secretpart"
NAN = float("nan")


@pytest.fixture
def client() -> Iterator[Client]:
    with Client(URL, TOKEN) as c:
        yield c


# -- path segments -------------------------------------------------------------------------

GROUP_CALLS: list[Callable[[str], object]] = [
    lambda g: calls.group(g),
    lambda g: calls.delete_group(g),
    lambda g: calls.disarm_teardown(g),
    lambda g: calls.kv_list(g),
    lambda g: calls.kv_set(g, "k", 1),
    lambda g: calls.events(g, None, False, False),
    lambda g: calls.machine_key(g, "a", None),
]


@pytest.mark.parametrize("name", ["g2/teardown", "lab/kv/foo", "..", ".", "lab/", "LAB"])
@pytest.mark.parametrize("make", GROUP_CALLS)
def test_a_group_name_that_is_no_name_is_refused(make: Callable[[str], object], name: str) -> None:
    with pytest.raises(InvalidInput, match="invalid group"):
        make(name)


def test_a_machine_name_with_a_slash_is_refused() -> None:
    with pytest.raises(InvalidInput, match="invalid machine"):
        calls.machine_key("lab", "a/../../x", None)


@pytest.mark.parametrize("machine", ["", "Dev", "a/b", "-dev"])
def test_a_shell_on_a_machine_name_no_machine_can_have_is_refused_before_sending(
    client: Client, machine: str
) -> None:
    with pytest.raises(InvalidInput, match="invalid machine"):
        client.shell("lab", machine)


def test_crc_shell_refuses_an_empty_machine_name_before_the_server(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    base = {k: v for k, v in os.environ.items() if not k.startswith("CRC_")}
    env = {"CRC_CONFIG_DIR": str(tmp_path / "cfg"), "CRC_URL": URL, "CRC_TOKEN": TOKEN}
    r = subprocess.run(
        [sys.executable, "-m", "cloudremotecontrol", "shell", "lab", ""],
        env={**base, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr == (
        "crc: error: invalid machine '': use 1-63 lowercase letters, digits and inner hyphens\n"
    )


@pytest.mark.parametrize("job_id", ["..", ".", "a/b", "", "../groups"])
def test_an_id_that_would_change_the_endpoint_is_refused(job_id: str) -> None:
    with pytest.raises(InvalidInput):
        calls.job(job_id)


def test_sdk_group_with_a_slash_raises_invalid_input(client: Client) -> None:
    with pytest.raises(InvalidInput, match="invalid group"):
        client.group("lab/kv/foo")
    with pytest.raises(InvalidInput, match="invalid group"):
        client.delete_group("g2/teardown")


BAD_KEYS = ["a/../b", "..", "../../g3", ".", "a/./b", "a//b", "/a", "a/", "", "a b", "a" * 129]
GOOD_KEYS = ["k", "a/b", "a.b", "..a", "a..", "a/.b/c", "x-y_z/1.2", "a" * 128]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_a_kv_key_with_a_dot_or_empty_segment_is_refused(key: str) -> None:
    with pytest.raises(InvalidInput, match="invalid key"):
        calls.kv_set("lab", key, 1)
    with pytest.raises(InvalidInput, match="invalid key"):
        calls.kv_get("lab", key, 0, 0)


@pytest.mark.parametrize("argv", [["set", "lab", "a b", "1"], ["get", "lab", "k\udcff"]])
def test_crc_kv_refuses_a_bad_key_before_reading_the_profile(
    tmp_path: Path, argv: list[str]
) -> None:
    """A usage error (exit 2), not "not logged in" (exit 3): no profile is there."""
    import os
    import subprocess
    import sys

    base = {k: v for k, v in os.environ.items() if not k.startswith("CRC_")}
    r = subprocess.run(
        [sys.executable, "-m", "cloudremotecontrol", "kv", *argv],
        env={**base, "CRC_CONFIG_DIR": str(tmp_path / "cfg")},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert f"Invalid value for 'KEY': invalid key {argv[2]!r}" in r.stderr, r.stderr


@pytest.mark.parametrize("key", GOOD_KEYS)
def test_a_good_kv_key_is_sent_as_it_is(key: str) -> None:
    assert calls.kv_set("lab", key, 1).path == f"/groups/lab/kv/{key}"


@pytest.mark.parametrize("wait", [300.5, 3600, -1])
def test_a_kv_wait_past_the_servers_bound_is_refused_before_sending(wait: float) -> None:
    """The server holds one wait for 300 s at most: a longer (or negative) one is the
    caller's error, said at once with the bound."""
    with pytest.raises(InvalidInput, match=r"invalid wait .*: from 0 to 300 seconds") as e:
        calls.kv_get("lab", "db/ready", wait, 0)
    assert e.value.details.get("field") == "wait"
    assert calls.kv_get("lab", "db/ready", 300, 0).params["wait"] == 300


def test_both_clients_refuse_a_kv_wait_past_the_bound(client: Client) -> None:
    # -1: a client that let it through would fail at once (nothing listens), not wait.
    with pytest.raises(InvalidInput, match="from 0 to 300 seconds"):
        client.kv_get("lab", "db/ready", wait=-1)
    with pytest.raises(InvalidInput, match="from 0 to 300 seconds"):
        asyncio.run(AsyncClient(URL, TOKEN).kv_get("lab", "db/ready", wait=-1))


@pytest.mark.parametrize("body", [0, False, "", [], [1, 2], "x", 3.5])
def test_a_message_body_that_is_no_object_is_refused_never_sent_as_empty(
    client: Client, body: Any
) -> None:
    # A falsy one (0, false, "", []) used to go as {}: what the caller gave was lost.
    with pytest.raises(InvalidInput, match=r"^message body must be a JSON object$"):
        client.send_message("lab", "a", "user.n", body)

    async def main() -> None:
        async with AsyncClient(URL, TOKEN) as c:
            with pytest.raises(InvalidInput, match=r"^message body must be a JSON object$"):
                await c.send_message("lab", "a", "user.n", body)

    asyncio.run(main())


def test_no_message_body_is_an_empty_one() -> None:
    assert calls.send_message("lab", "a", "user.n", None).json == {
        "to": "a",
        "type": "user.n",
        "body": {},
    }
    assert calls.send_message("lab", "a", "user.n", {})


# -- numbers JSON cannot carry ---------------------------------------------------------------

SYNC_CALLS: list[Callable[[Client], object]] = [
    lambda c: c.kv_set("lab", "k", NAN),
    lambda c: c.kv_set("lab", "k", {"a": float("inf")}),
    lambda c: c.send_message("lab", "a", "user.n", {"x": NAN}),
    lambda c: c.start_job("lab", "a", argv=["true"], timeout=NAN),
    lambda c: c.start_job("lab", "a", argv=["true"], deliver_within=float("inf")),
    lambda c: c.create_group("lab", ["a"], ttl=NAN),
    lambda c: c.create_group("lab", ["a"], key_ttl=float("-inf")),
    lambda c: c.kv_get("lab", "k", wait=NAN),
]


@pytest.mark.parametrize("call", SYNC_CALLS)
def test_sync_client_refuses_nan_and_infinity(
    client: Client, call: Callable[[Client], object]
) -> None:
    with pytest.raises(InvalidInput, match="finite"):
        call(client)


@pytest.mark.parametrize("call", SYNC_CALLS)
def test_async_client_refuses_nan_and_infinity(call: Callable[[Any], Any]) -> None:
    async def main() -> None:
        async with AsyncClient(URL, TOKEN) as c:
            with pytest.raises(InvalidInput, match="finite"):
                await call(c)

    asyncio.run(main())


# -- waits: a timeout that no wait can keep -------------------------------------------------

# nan passes every comparison with a deadline (a wait for ever), inf and 1e30 are a typo
# (and no platform timer holds them): refused as `crc wait --timeout` refuses them,
# before anything is sent (nothing listens at URL). A negative number is a deadline
# already past: it looks once, as 0 does.
BAD_TIMEOUTS: list[object] = [NAN, float("inf"), 1e30, 10**400, 604800.5, True, "60"]
WAITS: list[Callable[[Any, object], Any]] = [
    lambda c, t: c.wait_ready("lab", timeout=t),
    lambda c, t: c.wait_ready("lab", t, ["a"]),
    lambda c, t: c.wait_message("lab", "done", timeout=t),
    lambda c, t: c.wait_message("lab", "done", "a", 0, t),
    lambda c, t: c.wait_messages("lab", "done", ["a", "b"], timeout=t),
]


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS, ids=lambda t: repr(t)[:12])
@pytest.mark.parametrize("wait", WAITS)
def test_sync_waits_refuse_a_timeout_no_wait_can_keep(
    client: Client, wait: Callable[[Any, object], Any], timeout: object
) -> None:
    with pytest.raises(InvalidInput, match=r"^invalid duration .*: timeout ") as err:
        wait(client, timeout)
    assert err.value.details == {"field": "timeout"}


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS, ids=lambda t: repr(t)[:12])
@pytest.mark.parametrize("wait", WAITS)
def test_async_waits_refuse_a_timeout_no_wait_can_keep(
    wait: Callable[[Any, object], Any], timeout: object
) -> None:
    async def main() -> None:
        async with AsyncClient(URL, TOKEN) as c:
            with pytest.raises(InvalidInput, match=r"^invalid duration .*: timeout "):
                await wait(c, timeout)

    asyncio.run(main())


@pytest.mark.parametrize("timeout", [0, 0.5, 604800, -1, -0.5])
def test_a_timeout_up_to_a_week_is_waited_for(client: Client, timeout: float) -> None:
    """The bound lets a wait through (here to a server that is not there)."""
    with pytest.raises(Unavailable):
        client.wait_ready("lab", timeout=timeout)
    with pytest.raises(Unavailable):
        client.wait_message("lab", "done", timeout=timeout)


@pytest.mark.parametrize("timeout", [NAN, float("inf"), 1e30])
def test_a_shell_session_refuses_a_timeout_no_wait_can_keep(timeout: float) -> None:
    session = ShellSession(None, {"stream": "s"})  # checked before the socket is read
    for wait in (session.recv, lambda t: session.expect("$ ", t), session.wait):
        with pytest.raises(InvalidInput, match=r"^invalid duration .*: timeout "):
            wait(timeout)


def test_a_nan_anywhere_in_a_request_is_refused() -> None:
    with pytest.raises(InvalidInput, match="finite"):
        calls.start_run("lab", {"steps": [{"retries": NAN}]})


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"steps": [{1: "a"}]}, "keys must be strings"),  # json.dumps would send "1"
        ({"steps": [{"vars": b"x"}]}, "not a JSON value: bytes"),
        ({"steps": [{"machines": {"a", "b"}}]}, "not a JSON value: set"),
    ],
)
def test_a_request_json_cannot_carry_is_refused(body: dict[Any, Any], says: str) -> None:
    with pytest.raises(InvalidInput, match=says):
        calls.start_run("lab", body)


# -- tokens ------------------------------------------------------------------------------------


@pytest.mark.parametrize("pasted", [TOKEN + "\n", " " + TOKEN + " ", "\t" + TOKEN + "\r\n"])
def test_whitespace_around_a_token_is_stripped(pasted: str) -> None:
    assert client_mod.clean_token(pasted) == TOKEN
    with Client(URL, pasted) as c:
        assert c._token == TOKEN

    async def main() -> None:
        async with AsyncClient(URL, pasted) as c:
            assert c._token == TOKEN

    asyncio.run(main())


@pytest.mark.parametrize(
    "bad", ["\u201c" + TOKEN + "\u201d", TOKEN[:10] + " " + TOKEN[10:], TOKEN + "\x00", "", "  "]
)
def test_a_token_no_header_can_carry_is_refused_without_showing_it(bad: str) -> None:
    for make in (Client, AsyncClient):
        with pytest.raises(InvalidInput) as caught:
            make(URL, bad)
        assert "secretpart" not in str(caught.value) and caught.value.exit_code == 2


# -- an answer that is not the API's ---------------------------------------------------------


@pytest.mark.parametrize("body", [b"hello\n", b"<html></html>", b"[1, 2]", b"", b"null"])
def test_an_answer_that_is_not_a_json_object_says_not_crc(body: bytes) -> None:
    with pytest.raises(Unavailable, match="not a CloudRemoteControl server"):
        calls.answer_of(URL, 200, "text/plain; charset=utf-8", body)


def test_a_whoami_answer_without_a_user_says_not_crc() -> None:
    with pytest.raises(Unavailable, match="CloudRemoteControl"):
        calls.whoami().result({"ok": True})


# -- pull destination --------------------------------------------------------------------------


def test_a_pull_destination_in_no_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no directory"):
        client_mod.check_download_target(str(tmp_path / "missing" / "x"))
    with pytest.raises(InvalidInput, match="is a directory"):
        client_mod.check_download_target(str(tmp_path))
    client_mod.check_download_target(str(tmp_path / "x"))  # fine


def test_download_pulled_refuses_before_fetching(client: Client, tmp_path: Path) -> None:
    # Nothing listens at URL: reaching the network would raise Unavailable instead.
    with pytest.raises(InvalidInput, match="cannot write"):
        client.download_pulled("0" * 32, str(tmp_path / "missing" / "x"))

    async def main() -> None:
        async with AsyncClient(URL, TOKEN) as c:
            with pytest.raises(InvalidInput, match="cannot write"):
                await c.download_pulled("0" * 32, str(tmp_path / "missing" / "x"))

    asyncio.run(main())


# -- profile -------------------------------------------------------------------------------------


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("CRC_URL", "CRC_TOKEN", "CRC_FINGERPRINT"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("text", ["[1,2]", '"x"', "3", '{"url": 5, "token": "t"}', "{bad"])
def test_a_damaged_profile_says_run_login_again(
    tmp_path: Path, no_env: pytest.MonkeyPatch, text: str
) -> None:
    no_env.setenv("CRC_CONFIG_DIR", str(tmp_path))
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(InvalidInput, match="is damaged: run `crc login` again"):
        load_profile()


def test_a_config_dir_that_is_a_file_is_a_clear_error(
    tmp_path: Path, no_env: pytest.MonkeyPatch
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    no_env.setenv("CRC_CONFIG_DIR", str(afile))
    with pytest.raises(InvalidInput, match="cannot save the login profile"):
        save_profile(Profile(URL, TOKEN))
    no_env.setenv("CRC_URL", URL)
    no_env.setenv("CRC_TOKEN", TOKEN)
    assert load_profile().url == URL  # nothing stored there: the environment is enough


def test_an_oserror_while_saving_a_pull_is_invalid_input(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The directory checked, then gone or full when the file is written."""
    import errno
    import tempfile

    def full(*args: Any, **kw: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    async def adone(call: Any) -> Any:
        return {"sha256": "0" * 64, "size": 1}

    monkeypatch.setattr(tempfile, "mkstemp", full)
    monkeypatch.setattr(client, "_do", lambda call: {"sha256": "0" * 64, "size": 1})
    # A full disk is this computer's trouble, not the user's input: exit 6.
    with pytest.raises(Unavailable, match=r"cannot write .*No space left"):
        client.download_pulled("0" * 32, str(tmp_path / "x"))

    async def main() -> None:
        async with AsyncClient(URL, TOKEN) as c:
            monkeypatch.setattr(c, "_do", adone)
            with pytest.raises(Unavailable, match=r"cannot write .*No space left"):
                await c.download_pulled("0" * 32, str(tmp_path / "x"))

    asyncio.run(main())


# -- files -------------------------------------------------------------------------------------


def test_a_file_over_the_push_limit_is_refused_before_it_is_read(
    client: Client, tmp_path: Path
) -> None:
    # A sparse file: its size is known at once, and nothing of it is read (it used to be
    # hashed, then sent whole, before the server's 413).
    from cloudremotecontrol.errors import TooLarge
    from cloudremotecontrol.protocol.limits import MAX_FILE_BYTES

    big = tmp_path / "big.img"
    with open(big, "wb") as fh:
        fh.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(TooLarge, match="larger than 4 GiB"):
        client.push("lab", "a", str(big), "/tmp/big.img")

    async def main() -> None:
        async with AsyncClient(URL, TOKEN) as c:
            with pytest.raises(TooLarge, match="larger than 4 GiB"):
                await c.push("lab", "a", str(big), "/tmp/big.img")

    asyncio.run(main())


def test_a_download_target_may_be_a_path(tmp_path: Path) -> None:
    """``download_pulled`` takes a path object as well as a str (as os.replace does)."""
    client_mod.check_download_target(tmp_path / "new.log")
    (tmp_path / "kept.log").write_text("old")
    client_mod.check_download_target(tmp_path / "kept.log")
    with pytest.raises(InvalidInput, match="not a regular file"):
        client_mod.check_download_target(Path("/dev/null"))
    with pytest.raises(InvalidInput, match="is a directory"):
        client_mod.check_download_target(tmp_path)


def test_a_string_where_a_list_of_names_goes_is_refused_not_split_into_characters() -> None:
    """`create_group("lab", "ab")` made machines a and b; `events(types="message")` asked
    for types m, e, s...; a shell's `argv="ls"` ran `l`."""
    from cloudremotecontrol.master.streams import shell_body
    from cloudremotecontrol.master.waits import ReadyWait

    with pytest.raises(InvalidInput, match=r"^invalid machines: a list, not str 'ab'$"):
        calls.create_group("lab", "ab", None, None, None)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match=r"^invalid types: a list, not str 'message'$"):
        calls.events("lab", 0, True, False, "message")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match=r"^invalid argv: a list, not str 'ls'$"):
        shell_body("a", "ls", None, 80, 24, None, None)  # type: ignore[arg-type]
    group = {"group": "lab", "machines": [{"name": "a", "state": "ready"}]}
    with pytest.raises(InvalidInput, match=r"^invalid machines: a list, not str 'a'$"):
        ReadyWait(group, "a")
    # Lists and tuples are what they were.
    assert [
        m["name"] for m in calls.create_group("lab", ("a", "b"), None, None, None).json["machines"]
    ] == ["a", "b"]  # type: ignore[arg-type]
    assert calls.events("lab", 0, True, False, ("message",)).params["type"] == "message"
    assert ReadyWait(group, ["a"]).wanted == {"a"}
    assert ReadyWait(group, {"a"}).wanted == {"a"}  # any iterable but a string
    with pytest.raises(InvalidInput, match=r"^invalid machines: a list, not int 5$"):
        ReadyWait(group, 5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "resume_for", "words"),
    [
        ("https://127.0.0.1:9/dashboard/", 60.0, "with no path, query or fragment"),
        ("https://127.0.0.1:9,https://127.0.0.1:10/x", 60.0, "with no path, query or fragment"),
        (None, 60.0, "the server URL must be a string, not NoneType"),
        (URL, "x", "invalid resume_for 'x'"),
        (URL, NAN, "invalid resume_for nan"),
        (URL, -1, "invalid resume_for -1"),
        (URL, True, "invalid resume_for True"),
    ],
)
def test_a_client_refuses_what_it_could_never_use_when_it_is_made(
    url: Any, resume_for: Any, words: str
) -> None:
    for make in (Client, AsyncClient):
        with pytest.raises(InvalidInput, match=re.escape(words)):
            make(url, TOKEN, resume_for=resume_for)


def test_a_client_takes_a_base_url_with_a_trailing_slash_and_whole_seconds() -> None:
    with Client(URL + "/", TOKEN, resume_for=0) as c:
        assert c.urls == [URL] and c.resume_for == 0.0
