"""Commands that end with a command line for the machine (``crc run G --to M -- CMD``,
``crc shell G M -- CMD``): what is passed on, and what is a mistyped option of ours."""

from __future__ import annotations

import difflib
from typing import Any

import click

__all__ = ["TrailingCommand"]


class TrailingCommand(click.Command):
    """A command whose last argument (``nargs=-1``) is a command line run on a machine.

    Options it does not know are part of that command line once it has begun (``crc
    run G --to a ls -la``), and anything after ``--`` is. An unknown option before the
    command line begins (``--max-concurency 1 -- echo``, ``--timout 5s echo hi``) is
    refused as click refuses one anywhere else (exit 2, with the option it may have
    meant), never sent to the machines as the command; so is an argument before it
    that looks like an option (``crc run --bogus G``). A command that itself begins
    with ``-`` goes after ``--``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("context_settings", {})["ignore_unknown_options"] = True
        super().__init__(*args, **kwargs)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        raw = list(args)
        rest = super().parse_args(ctx, args)
        trailing = [p for p in self.params if isinstance(p, click.Argument) and p.nargs == -1]
        for param in self.params:
            if not isinstance(param, click.Argument) or param in trailing:
                continue
            value = ctx.params.get(param.name or "")
            if isinstance(value, str) and _looks_like_option(value):
                self._no_such_option(ctx, value)
        for param in trailing:
            line = list(ctx.params.get(param.name or "") or ())
            if line and _looks_like_option(line[0]) and not _after_separator(raw, line):
                self._no_such_option(ctx, line[0])
        return rest

    def _no_such_option(self, ctx: click.Context, arg: str) -> None:
        name = arg.split("=", 1)[0]
        known = [o for p in self.get_params(ctx) for o in (*p.opts, *p.secondary_opts)]
        near = difflib.get_close_matches(name, [o for o in known if o.startswith("-")])
        raise click.NoSuchOption(name, possibilities=near, ctx=ctx)


def _looks_like_option(arg: str) -> bool:
    return arg.startswith("-") and arg != "-"


def _after_separator(raw: list[str], line: list[str]) -> bool:
    """Whether all of ``line`` came after a ``--`` of ``raw`` (the one click took as the
    end of the options: the first whose tokens after it end ``line``)."""
    for i, arg in enumerate(raw):
        if arg == "--":
            after = raw[i + 1 :]
            if len(after) <= len(line) and line[len(line) - len(after) :] == after:
                return len(after) == len(line)
    return False
