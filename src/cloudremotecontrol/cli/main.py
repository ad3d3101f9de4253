"""``crc``: one command for the server, the agent and the master.

Errors map once to exit codes (see ``errors.py``): one line on stderr, never a traceback.
Usage errors (click's own) are one line too, with the usage and where to find help.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import click

from .. import __version__
from ..errors import CrcError
from ..stdfds import fill_closed_std_fds
from . import output
from .agent_cmds import agent
from .bootstrap_cmds import bootstrap
from .master_cmds import register as register_master
from .server_cmds import server


class _Crc(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # The reader went away (`crc events -f | head -1`). Left to click, this would
            # exit 1, an internal error, with no word.
            _output_closed()


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


cli.add_command(server)
cli.add_command(agent)
register_master(cli)
cli.add_command(bootstrap)


def usage_line(exc: click.UsageError) -> str:
    """Click's three-line usage error as one line: what is wrong, the usage, the help."""
    message = " ".join(exc.format_message().split())
    ctx = exc.ctx
    if ctx is None:
        return message
    usage = " ".join(ctx.get_usage().split())
    usage = usage[len("Usage: ") :] if usage.startswith("Usage: ") else usage
    return f"{message} (usage: {usage}; see `{ctx.command_path} --help`)"


def main(argv: list[str] | None = None) -> None:
    fill_closed_std_fds()  # `crc ... 2>&-`: before any socket or file takes 0, 1 or 2
    try:
        rc = cli.main(args=argv, prog_name="crc", standalone_mode=False)
    except CrcError as exc:
        message = exc.message
        if exc.multiline:  # "what:\n  problem\n  problem" -> "what: problem; problem"
            head, *rest = message.split("\n")
            message = " ".join([head, "; ".join(line.strip() for line in rest)])
        click.echo(f"crc: error: {output.safe(message)}", err=True)  # one line
        sys.exit(output.own_error_exit or exc.exit_code)
    except click.exceptions.Abort as exc:  # click's word for a KeyboardInterrupt
        click.echo("crc: aborted", err=True)
        sys.exit(getattr(exc.__cause__, "exit_code", 130))
    except click.exceptions.NoArgsIsHelpError as exc:
        # `crc` or `crc group` alone: the help is what was asked for.
        if exc.ctx is not None:
            click.echo(exc.ctx.get_help())
        sys.exit(0)
    except click.UsageError as exc:  # bad input is crc's own failure: --error-exit's CODE
        click.echo(f"crc: error: {usage_line(exc)}", err=True)
        sys.exit(output.own_error_exit or exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"crc: error: {' '.join(exc.format_message().split())}", err=True)
        sys.exit(output.own_error_exit or exc.exit_code)
    except KeyboardInterrupt as exc:  # Ctrl-C, or a signal taken as it (cli/signals.py)
        click.echo("crc: interrupted", err=True)
        sys.exit(getattr(exc, "exit_code", 130))
    except BrokenPipeError:
        _output_closed()
    sys.exit(rc if isinstance(rc, int) else 0)
