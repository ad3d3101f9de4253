"""``crc``: one command for the server, the agent and the master.

Errors map once to exit codes (see ``errors.py``): one line on stderr, never a traceback.
"""

from __future__ import annotations

import sys

import click

from .. import __version__
from ..errors import CrcError
from .agent_cmds import agent
from .bootstrap_cmds import bootstrap
from .master_cmds import register as register_master
from .server_cmds import server


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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


def main(argv: list[str] | None = None) -> None:
    try:
        rc = cli.main(args=argv, prog_name="crc", standalone_mode=False)
    except CrcError as exc:
        click.echo(f"crc: error: {exc.message}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("crc: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("crc: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(141)
    sys.exit(rc if isinstance(rc, int) else 0)
