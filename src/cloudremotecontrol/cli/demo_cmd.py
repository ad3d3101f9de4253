"""``crc demo``: the whole loop on this computer, with no account and no setup."""

from __future__ import annotations

import click

from .output import json_option


@click.command()
@click.option("--keep", is_flag=True, help="Keep the temporary directory (logs) afterwards.")
@json_option
def demo(keep: bool, as_json: bool) -> None:
    """Start a server (SQLite, TLS) in a temporary directory, enroll machines mysql, web
    and dev as local agents, provision them, then tear everything down."""
    from ..master.demo import run_demo
    from .scenario_view import make_view

    raise SystemExit(run_demo(make_view(as_json), keep=keep))
