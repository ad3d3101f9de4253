"""``crc agent …``: the agent itself and the commands scripts on the machine use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..errors import InvalidInput
from .output import emit_json, json_option

_state_option = click.option(
    "--state-dir", envvar="CRC_AGENT_STATE_DIR",
    help="Agent state directory (default: /var/lib/crc-agent as root, "
         "%ProgramData%\\CloudRemoteControl\\agent on Windows).")


def _state_dir(value: str | None) -> Path:
    if value:
        return Path(value).resolve()
    from ..agent.platform import current

    return Path(current().default_state_dir())


@click.group()
def agent() -> None:
    """The agent that runs on each machine, and commands for scripts on that machine."""


@agent.command("run")
@click.option("--url", envvar="CRC_URL", help="Server URL (first run only).")
@click.option("--key", envvar="CRC_KEY", help="Single-use enrollment key (first run only).")
@click.option("--key-file", type=click.Path(dir_okay=False),
              help="Read the enrollment key from this file (keeps it out of `ps`).")
@click.option("--fingerprint", envvar="CRC_FINGERPRINT",
              help="Pinned SHA-256 of the server certificate (sha256:…).")
@_state_option
@click.option("--gate-ready", is_flag=True,
              help="Say ready only when a script calls `crc agent ready`.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def run_cmd(url: str | None, key: str | None, key_file: str | None, fingerprint: str | None,
            state_dir: str | None, gate_ready: bool, log_level: str) -> None:
    """Enroll (first run) and stay connected, executing what the master sends."""
    import logging

    from ..agent.core import Revoked
    from ..agent.service import run_agent

    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s crc-agent %(levelname)s %(message)s")
    if key_file:
        try:
            key = Path(key_file).read_text().strip()
        except OSError as exc:
            raise InvalidInput(f"cannot read key file {key_file}: {exc.strerror}") from None
    import os

    # Jobs inherit the agent's environment: the key must not be in it.
    os.environ.pop("CRC_KEY", None)
    try:
        run_agent(_state_dir(state_dir), url, key, fingerprint, gate_ready)
    except Revoked as exc:
        click.echo(f"crc agent: stopping: {exc.message}", err=True)


def _call(state_dir: str | None, request: dict[str, Any]) -> dict[str, Any]:
    from ..agent.control import call

    return call(_state_dir(state_dir), request)


@agent.command()
@click.argument("text")
@click.option("--percent", type=click.FloatRange(0, 100), help="Progress 0-100.")
@_state_option
@json_option
def progress(text: str, percent: float | None, state_dir: str | None, as_json: bool) -> None:
    """Report a progress line (shown live in `crc wait` and `crc status`)."""
    _call(state_dir, {"op": "progress", "text": text, "percent": percent})
    if as_json:
        emit_json({"ok": True})


@agent.command()
@_state_option
@json_option
def ready(state_dir: str | None, as_json: bool) -> None:
    """Tell the master this machine is ready (SystemReady)."""
    _call(state_dir, {"op": "ready"})
    if as_json:
        emit_json({"ok": True})


@agent.command()
@click.argument("type_")
@click.argument("body", required=False)
@_state_option
@json_option
def emit(type_: str, body: str | None, state_dir: str | None, as_json: bool) -> None:
    """Send a data message TYPE (user.NAME) with an optional JSON BODY to the master."""
    try:
        parsed = json.loads(body) if body else {}
    except ValueError:
        raise InvalidInput("BODY is not valid JSON") from None
    if not type_.startswith("user."):
        type_ = "user." + type_
    _call(state_dir, {"op": "emit", "type": type_, "body": parsed})
    if as_json:
        emit_json({"ok": True})


@agent.command()
@_state_option
@json_option
def status(state_dir: str | None, as_json: bool) -> None:
    """Show the running agent's machine, group, server and connection."""
    reply = _call(state_dir, {"op": "status"})
    reply.pop("ok", None)
    if as_json:
        emit_json(reply)
        return
    for k, v in reply.items():
        click.echo(f"{k}: {v}")
