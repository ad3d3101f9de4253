"""``crc server …``: initialise a data directory, run the server, administer users."""

from __future__ import annotations

from pathlib import Path

import click

from .output import emit_json, json_option

DATA_DIR_HELP = "Server data directory (certificate, key, SQLite database)."


def _data_dir(value: str | None) -> Path:
    return Path(value or "./crc-server").resolve()


@click.group()
def server() -> None:
    """Run and administer a CloudRemoteControl server."""


@server.command()
@click.option("--data-dir", envvar="CRC_DATA_DIR", help=DATA_DIR_HELP)
@click.option("--listen", default="0.0.0.0:8443", show_default=True, help="HOST:PORT to serve on.")
@click.option(
    "--url",
    help="Public URL agents and masters use (default: guessed from this machine's address).",
)
@click.option("--san", multiple=True, help="Extra DNS name or IP for the certificate.")
@click.option("--force", is_flag=True, help="Overwrite an existing certificate.")
@json_option
def init(
    data_dir: str | None,
    listen: str,
    url: str | None,
    san: tuple[str, ...],
    force: bool,
    as_json: bool,
) -> None:
    """Create a data directory with a self-signed TLS certificate; print URL and
    fingerprint (give both to `crc login` and to agents)."""
    from ..server.config import init_data_dir
    from ..server.teardown import load_cipher

    cfg = init_data_dir(_data_dir(data_dir), url, listen, list(san), force)
    load_cipher(Path(cfg.data_dir))  # teardown.key: replicas copy it with the certificate
    if as_json:
        emit_json({"url": cfg.url, "fingerprint": cfg.fingerprint, "data_dir": cfg.data_dir})
        return
    click.echo(f"data dir:     {cfg.data_dir}")
    click.echo(f"url:          {cfg.url}")
    click.echo(f"fingerprint:  {cfg.fingerprint}")
    click.echo(f"next:         crc server run --data-dir {cfg.data_dir}")


@server.command()
@click.option("--data-dir", envvar="CRC_DATA_DIR", help=DATA_DIR_HELP)
@click.option("--listen", help="HOST:PORT to serve on (default: from `server init`).")
@click.option(
    "--database",
    envvar="CRC_DATABASE",
    help="Database URL: sqlite:///PATH (default: in the data dir) or postgresql://USER@HOST/DB.",
)
@click.option("--insecure", is_flag=True, help="Serve plain HTTP (loopback only; for development).")
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.option("--no-dashboard", is_flag=True, help="Do not serve the web dashboard (/dashboard/).")
def run(
    data_dir: str | None,
    listen: str | None,
    database: str | None,
    insecure: bool,
    log_level: str,
    no_dashboard: bool,
) -> None:
    """Serve the API (HTTPS) and the web dashboard until interrupted; print their URLs."""
    from ..server.config import load_config
    from ..server.runner import serve

    cfg = load_config(_data_dir(data_dir))
    serve(cfg, listen or cfg.listen, database, insecure, log_level, dashboard=not no_dashboard)


def _store(data_dir: str | None, database: str | None):  # type: ignore[no-untyped-def]
    from ..server.config import load_config
    from ..server.store.base import open_store

    url = database or load_config(_data_dir(data_dir)).database
    return open_store(url)


def _admin(data_dir: str | None, database: str | None, op, *args):  # type: ignore[no-untyped-def]
    import asyncio

    store = _store(data_dir, database)

    async def go():  # type: ignore[no-untyped-def]
        await store.start()
        try:
            return await store.write(op, *args)
        finally:
            await store.close()

    return asyncio.run(go())


_db_option = click.option(
    "--database", envvar="CRC_DATABASE", help="Database URL (instead of --data-dir)."
)
_dd_option = click.option("--data-dir", envvar="CRC_DATA_DIR", help=DATA_DIR_HELP)


@server.command("add-user")
@click.argument("name")
@_dd_option
@_db_option
@json_option
def add_user(name: str, data_dir: str | None, database: str | None, as_json: bool) -> None:
    """Create user NAME and print its first master token (shown once)."""
    from ..server.ops.users import create_user

    token = _admin(data_dir, database, create_user, name)
    if as_json:
        emit_json({"user": name, "token": token})
    else:
        click.echo(token)


@server.command("add-token")
@click.argument("user")
@click.argument("token_name")
@_dd_option
@_db_option
@json_option
def add_token(
    user: str, token_name: str, data_dir: str | None, database: str | None, as_json: bool
) -> None:
    """Give USER another master token named TOKEN_NAME (shown once)."""
    from ..server.ops.users import add_token as op

    token = _admin(data_dir, database, op, user, token_name)
    if as_json:
        emit_json({"user": user, "name": token_name, "token": token})
    else:
        click.echo(token)


@server.command("revoke-token")
@click.argument("user")
@click.argument("token_name")
@_dd_option
@_db_option
@json_option
def revoke_token(
    user: str, token_name: str, data_dir: str | None, database: str | None, as_json: bool
) -> None:
    """Revoke USER's master token TOKEN_NAME."""
    from ..server.ops.users import revoke_token as op

    _admin(data_dir, database, op, user, token_name)
    if as_json:
        emit_json({"user": user, "name": token_name, "revoked": True})
    else:
        click.echo(f"revoked token {token_name!r} of {user}")
