"""What `crc ... --help` shows: examples for up, down, events and wait (every flag they
use a real option of the command), `crc down`'s exit codes, and GROUP for a group
wherever a command takes one."""

from __future__ import annotations

import re

import click
import pytest
from click.testing import CliRunner

from cloudremotecontrol.cli.main import cli


def _help(*argv: str) -> str:
    result = CliRunner().invoke(cli, [*argv, "--help"], prog_name="crc", terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def _command(*argv: str) -> click.Command:
    ctx = click.Context(cli, info_name="crc")
    cmd: click.Command | None = cli
    for name in argv:
        assert isinstance(cmd, click.Group)
        cmd = cmd.get_command(ctx, name)
        assert cmd is not None, argv
    assert cmd is not None
    return cmd


@pytest.mark.parametrize("name", ["up", "down", "events", "wait"])
def test_help_shows_examples_whose_flags_the_command_takes(name: str) -> None:
    text = _help(name)
    assert "Examples:" in text, text
    block = text[text.index("Examples:") : text.index("Options:")]
    lines = [line.strip() for line in block.splitlines()[1:] if line.strip()]
    assert len(lines) >= 2, block
    options = {opt for p in _command(name).params for opt in (*p.opts, *p.secondary_opts)}
    for line in lines:
        command = line.split("#")[0].split(">")[0].split()
        assert command[:2] == ["crc", name], line  # one line each, never wrapped
        for word in command[2:]:
            if word.startswith("-"):
                assert word in options, (word, line)


def test_down_help_lists_its_exit_codes() -> None:
    text = " ".join(_help("down").split())
    codes = text[text.index("Exit code:") : text.index("Examples:")]
    for code in ("0", "1", "2", "3", "4", "5", "6", "7", "8", "130"):
        assert re.search(rf"\b{code}\b", codes), (code, codes)


@pytest.mark.parametrize(
    "argv",
    [
        ["bootstrap"],
        ["events"],
        ["forward"],
        ["group", "create"],
        ["group", "delete"],
        ["group", "show"],
        ["hosts", "sync"],
        ["job", "list"],
        ["kv", "get"],
        ["kv", "list"],
        ["kv", "set"],
        ["pull"],
        ["push"],
        ["run"],
        ["send"],
        ["sessions", "list"],
        ["shell"],
        ["status"],
        ["wait"],
    ],
)
def test_a_group_argument_reads_group(argv: list[str]) -> None:
    usage = _help(*argv).splitlines()[0]
    assert usage.startswith(f"Usage: crc {' '.join(argv)} [OPTIONS] GROUP"), usage


@pytest.mark.parametrize("argv", [["down"], ["audit"]])
def test_a_group_option_reads_group(argv: list[str]) -> None:
    assert re.search(r"--group GROUP\b", _help(*argv)), argv


def test_no_usage_names_a_group_name() -> None:
    """NAME stays only where it names something else: `crc server add-user NAME`."""

    def walk(cmd: click.Command, path: list[str]) -> list[tuple[str, str]]:
        ctx = click.Context(cmd, info_name=path[-1])
        if isinstance(cmd, click.Group):
            found = []
            for sub in cmd.list_commands(ctx):
                child = cmd.get_command(ctx, sub)
                assert child is not None
                found += walk(child, [*path, sub])
            return found
        return [(" ".join(path), " ".join(cmd.collect_usage_pieces(ctx)))]

    named = [path for path, usage in walk(cli, ["crc"]) if re.search(r"\bNAME\b", usage)]
    assert named == ["crc server add-user"], named
