"""What docs/sdk.md says the SDK takes, a user's ``mypy --strict`` takes too: a tuple
or a set where a list of names goes, a ``pathlib.Path`` where a local file goes; and
the streams are typed as what they yield (``Event``; ``Event | None`` with
``keepalive=True``), not ``Any``."""

from __future__ import annotations

from pathlib import Path

from test_typing import _strict  # `mypy --strict` run as a user's own check

SCRIPT = """\
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import assert_type

from cloudremotecontrol import AsyncClient, Client
from cloudremotecontrol.master.types import Event


def sync(c: Client) -> None:
    c.create_group("x", ("a", "b"))
    c.create_group("x", ["a", {"name": "b"}])
    c.wait_ready("x", machines={"a"})
    c.wait_ready("x", machines=("a",))
    c.wait_messages("x", "m", senders=("a",))
    c.shell("x", "a", argv=("sh",))
    c.push("x", "a", Path("./f"), "/tmp/f")
    c.upload(Path("./f"))
    c.download_pulled("j", Path("./out"))
    assert_type(c.events("x", types=["message"]), Iterator[Event])
    assert_type(c.events("x", follow=True), Iterator[Event])
    assert_type(c.events("x", keepalive=True), Iterator[Event | None])
    assert_type(c.events("x", 0, True, True), Iterator[Event | None])
    for ev in c.events("x", types={"message"}):
        print(ev.type)


async def run(c: AsyncClient) -> None:
    await c.create_group("x", ("a", "b"))
    await c.wait_ready("x", machines={"a"})
    await c.shell("x", "a", argv=("sh",))
    await c.push("x", "a", Path("./f"), "/tmp/f")
    await c.download_pulled("j", Path("./out"))
    assert_type(c.events("x", types=("message",)), AsyncGenerator[Event, None])
    assert_type(c.events("x", keepalive=True), AsyncGenerator[Event | None, None])
    async for ev in c.events("x", follow=True):
        print(ev.type)
"""


def test_sdk_inputs_and_streams_type_check_strict(tmp_path: Path) -> None:
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT)
    assert _strict(script, tmp_path) == ""
