"""``crc demo``: the whole loop on this computer, with no account and no setup."""

from __future__ import annotations

import click

from .output import json_option
from .signals import stopped_as_by_ctrl_c


@click.command()
@click.option("--keep", is_flag=True, help="Keep the temporary directory (logs) afterwards.")
@json_option
def demo(keep: bool, as_json: bool) -> None:
    """Start a server (SQLite, TLS) in a temporary directory, enroll machines mysql, web
    and dev as local agents, provision them, then tear everything down."""
    from ..master.demo import run_demo
    from .scenario_view import make_view

    # Its machines and server live in a directory of its own, which no later `crc down`
    # looks in: a signal tears them down as Ctrl-C does.
    with stopped_as_by_ctrl_c():
        rc = run_demo(make_view(as_json), keep=keep)
    raise SystemExit(rc)
