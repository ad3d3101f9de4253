"""``crc``: one command for the server, the agent and the master.

Errors map once to exit codes (see ``errors.py``): one line on stderr, never a traceback.
Usage errors (click's own) are one line too, with the usage and where to find help.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from typing import Any, NoReturn

import click

from .. import __version__
from ..errors import CrcError
from ..stdfds import fill_closed_std_fds
from . import output
from .entry import interruption

# Each command: the module (in this package) that defines it, and its name there. The
# module is imported when the command is looked up (run, or listed by `crc --help`):
# `crc agent run` and a machine's scripts (`crc agent progress`, `ready`, `emit`) load
# the agent's commands alone, not the master's and the server's.
COMMANDS = {
    "agent": ("agent_cmds", "agent"),
    "audit": ("master_cmds", "audit"),
    "bootstrap": ("bootstrap_cmds", "bootstrap"),
    "demo": ("demo_cmd", "demo"),
    "down": ("scenario_cmds", "down"),
    "events": ("master_cmds", "events"),
    "forward": ("stream_cmds", "forward"),
    "group": ("master_cmds", "group"),
    "hosts": ("job_cmds", "hosts"),
    "job": ("job_cmds", "job"),
    "kv": ("master_cmds", "kv"),
    "login": ("master_cmds", "login"),
    "logout": ("master_cmds", "logout"),
    "pull": ("job_cmds", "pull"),
    "push": ("job_cmds", "push"),
    "run": ("job_cmds", "run"),
    "send": ("master_cmds", "send"),
    "server": ("server_cmds", "server"),
    "sessions": ("stream_cmds", "sessions"),
    "shell": ("stream_cmds", "shell"),
    "status": ("master_cmds", "status"),
    "up": ("scenario_cmds", "up"),
    "wait": ("wait_cmd", "wait"),
}


class _Crc(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, name = COMMANDS[cmd_name]
            command = getattr(importlib.import_module(f"{__package__}.{module}"), name)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.commands and args[0] not in COMMANDS:
            # An unknown name: click suggests from the commands loaded, so load them all.
            for name in COMMANDS:
                self.get_command(ctx, name)
        return super().resolve_command(ctx, args)

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except BrokenPipeError:
            # `crc --help | head -0`, `crc --version | head -0`: printed while the
            # arguments are read, before invoke. Left to click, exit 1 with no word.
            _output_closed()

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            # Past click as it is: click would make it an Abort, after a blank line.
            raise _Interrupted(exc) from None
        except BrokenPipeError:
            # The reader went away (`crc events -f | head -1`). Left to click, this would
            # exit 1, an internal error, with no word.
            _output_closed()


class _Interrupted(Exception):
    """A command's KeyboardInterrupt (Ctrl-C, or a signal taken as it), carried to
    ``main`` past click."""

    def __init__(self, interrupt: KeyboardInterrupt) -> None:
        super().__init__(str(interrupt))
        self.interrupt = interrupt


def _interrupted(exc: BaseException) -> NoReturn:
    """End on an interruption: exit 130 (128 + the signal: cli/signals.py), saying
    ``crc: interrupted`` unless the command already said it was (cli/signals.py,
    ``said``: `crc up`'s summary and what is left, `crc down`'s machines left)."""
    if not getattr(exc, "said", False):
        if getattr(exc, "exit_code", 130) == 130:  # Ctrl-C, not SIGTERM or SIGHUP
            with contextlib.suppress(OSError, ValueError):
                if sys.stderr.isatty():  # the line after the terminal's "^C"
                    click.echo(err=True)
        _say("crc: interrupted")
    sys.exit(getattr(exc, "exit_code", 130))


def _say(line: str) -> None:
    """``line`` on stderr. If stderr cannot take it (a closed pipe: `crc ... 2>&1 |
    head -0`), nothing: the exit code that follows still tells what happened, as it
    does with stderr closed (`2>&-`)."""
    try:
        click.echo(line, err=True)
    except OSError:
        output.quiet_if_closed(sys.stderr)


def _output_closed() -> NoReturn:
    output.quiet_if_closed(sys.stdout)
    output.quiet_if_closed(sys.stderr)
    raise SystemExit(output.OUTPUT_CLOSED_EXIT)


@click.group(
    cls=_Crc,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="crc")
def cli() -> None:
    """CloudRemoteControl: enroll fresh cloud machines, watch them provision, tell them
    what to do, let them know each other, and tear everything down.

    \b
    Quick start:  crc demo
    Server:       crc server init / run / add-user
    Master:       crc login, crc group create, crc wait, crc run, crc status, crc events
    Machine:      crc agent run / progress / ready / emit
    """


def usage_line(exc: click.UsageError) -> str:
    """Click's three-line usage error as one line: what is wrong, the usage, the help."""
    message = " ".join(exc.format_message().split())
    ctx = exc.ctx
    if ctx is None:
        return message
    usage = " ".join(ctx.get_usage().split())
    usage = usage[len("Usage: ") :] if usage.startswith("Usage: ") else usage
    return f"{message} (usage: {usage}; see `{ctx.command_path} --help`)"


def _escape_what_output_cannot_hold() -> None:
    """Text standard output's (or error's) encoding cannot hold is printed as its escape
    (``\\u2713`` under latin-1), never a UnicodeEncodeError: machine text (progress,
    names in tables) can hold any character."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(ValueError, OSError):
                reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> None:
    fill_closed_std_fds()  # `crc ... 2>&-`: before any socket or file takes 0, 1 or 2
    _escape_what_output_cannot_hold()
    try:
        rc = cli.main(args=argv, prog_name="crc", standalone_mode=False)
    except CrcError as exc:
        message = exc.message
        if exc.multiline:  # "what:\n  problem\n  problem" -> "what: problem; problem"
            head, *rest = message.split("\n")
            message = " ".join([head, "; ".join(line.strip() for line in rest)])
        _say(f"crc: error: {output.safe(message)}")  # one line
        sys.exit(output.own_error_exit or exc.exit_code)
    except _Interrupted as exc:
        _interrupted(exc.interrupt)
    except click.exceptions.Abort as exc:  # click's prompt cut by Ctrl-C (or ended)
        if isinstance(exc.__context__, KeyboardInterrupt):
            _interrupted(exc.__context__)
        _say("crc: aborted")
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as exc:
        # `crc` or `crc group` alone: the help is what was asked for.
        if exc.ctx is not None:
            try:
                click.echo(exc.ctx.get_help())
            except BrokenPipeError:  # `crc group | head -0`
                _output_closed()
        sys.exit(0)
    except click.UsageError as exc:  # bad input is crc's own failure: --error-exit's CODE
        _say(f"crc: error: {usage_line(exc)}")
        sys.exit(output.own_error_exit or exc.exit_code)
    except click.ClickException as exc:
        _say(f"crc: error: {' '.join(exc.format_message().split())}")
        sys.exit(output.own_error_exit or exc.exit_code)
    except KeyboardInterrupt as exc:  # Ctrl-C, or a signal taken as it (cli/signals.py)
        _interrupted(exc)
    except RuntimeError as exc:  # a Ctrl-C Python wrapped (cli/entry.py), or a fault
        interrupt = interruption(exc)
        if interrupt is None:
            raise
        _interrupted(interrupt)
    except BrokenPipeError:
        _output_closed()
    sys.exit(rc if isinstance(rc, int) else 0)
