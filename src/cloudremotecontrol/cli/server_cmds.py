"""``crc server …``: initialise a data directory, run the server, administer users."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..errors import CrcError, InvalidInput, NotFound
from .output import emit_json, json_option, not_empty, print_table

if TYPE_CHECKING:  # the server's modules load only when a command needs them
    from ..server.store.base import Store

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

DATA_DIR_HELP = "Server data directory (certificate, key, SQLite database; default ./crc-server)."


def _data_dir(value: str | None) -> Path:
    return Path(value or "./crc-server").resolve()


@click.group()
def server() -> None:
    """Run and administer a CloudRemoteControl server (Python >= 3.11)."""
    if sys.version_info < (3, 11):
        # The agent and the master run on 3.10; the server uses asyncio.TaskGroup.
        raise CrcError(
            f"the server needs Python >= 3.11, this is {sys.version.split()[0]}: "
            "run `crc server` with a newer python",
            code="python_version",
        )


@server.command()
@click.option("--data-dir", envvar="CRC_DATA_DIR", callback=not_empty(), help=DATA_DIR_HELP)
@click.option(
    "--listen",
    help="HOST:PORT to serve on (default: 0.0.0.0 on the --url's port, else 0.0.0.0:8443).",
)
@click.option(
    "--url",
    help="Public URL agents and masters use (default: guessed from this machine's address).",
)
@click.option("--san", multiple=True, help="Extra DNS name or IP for the certificate.")
@click.option("--force", is_flag=True, help="Overwrite an existing certificate.")
@json_option
def init(
    data_dir: str | None,
    listen: str | None,
    url: str | None,
    san: tuple[str, ...],
    force: bool,
    as_json: bool,
) -> None:
    """Create a data directory with a self-signed TLS certificate; print URL and
    fingerprint (give both to `crc login` and to agents), and the address it listens on.

    Without --listen, the server listens on the port --url names (on every address); a
    --url port that differs from the listen port gets a warning on stderr (only a proxy
    or a port forward then makes the URL reach the server).
    """
    from ..server.config import init_data_dir, parse_listen, url_port
    from ..server.teardown import load_cipher

    where = _data_dir(data_dir)
    try:
        cfg = init_data_dir(where, url, listen, list(san), force)
        load_cipher(Path(cfg.data_dir))  # teardown.key: replicas copy it with the certificate
    except OSError as exc:  # a parent that is a file, a read-only or virtual file system
        raise InvalidInput(
            f"cannot make the server data directory {where}: {exc.strerror or exc}"
        ) from None
    port, listen_port = url_port(cfg.url), parse_listen(cfg.listen)[1]
    if port != listen_port:
        click.echo(
            f"crc: warning: the URL {cfg.url} is on port {port}, the server listens on "
            f"{cfg.listen}: nothing answers at that URL unless a proxy or port forward "
            f"carries port {port} to {listen_port} (--listen sets the listen address)",
            err=True,
        )
    if as_json:
        emit_json(
            {
                "url": cfg.url,
                "listen": cfg.listen,
                "fingerprint": cfg.fingerprint,
                "data_dir": cfg.data_dir,
            }
        )
        return
    click.echo(f"data dir:     {cfg.data_dir}")
    click.echo(f"url:          {cfg.url}")
    click.echo(f"listen:       {cfg.listen}")
    click.echo(f"fingerprint:  {cfg.fingerprint}")
    click.echo(f"next:         crc server run --data-dir {cfg.data_dir}")


# `crc server run` flags that override server.json's "settings" (ServerSettings).
_SETTING_FLAGS: list[tuple[str, type, str]] = [
    ("max_header_bytes", int, "Largest request header section in bytes; above: 431."),
    ("header_timeout", float, "Seconds a client has to send a request's headers; then 408."),
    ("body_timeout", float, "Seconds without a byte of a request body; then 408."),
    ("keepalive_timeout", float, "Seconds an idle kept-alive connection stays open."),
    (
        "max_unauthenticated",
        int,
        "Connections open without a valid token or credential, in all; above: 503.",
    ),
    ("max_unauthenticated_per_ip", int, "The same, from one address."),
    (
        "max_handshakes",
        int,
        "TLS handshakes in progress at once; further connections wait for a place.",
    ),
    ("max_handshakes_per_ip", int, "The same, from one address."),
    ("handshake_timeout", float, "Seconds a TLS handshake has once it has a place."),
    (
        "max_logins",
        int,
        "Agent logins in progress at once; above: 503 with Retry-After (the agent waits).",
    ),
    (
        "agent_silence_timeout",
        float,
        "Seconds an agent's connection may stay silent before the server closes it and "
        "the machine turns offline (agents ping every 45 s).",
    ),
    (
        "forwarded_allow_ips",
        str,
        "Reverse proxies (addresses or networks, comma-separated) whose X-Forwarded-For "
        "is believed. Default: none.",
    ),
    ("enroll_failures_per_minute", int, "Failed enrollments per address per minute; then 429."),
    (
        "login_failures_per_minute",
        int,
        "Failed dashboard logins per address per minute; then 429.",
    ),
    (
        "machine_bytes_per_second",
        int,
        "Bytes per second one machine may send of progress, facts and messages, each "
        "message to peers once per copy (what a job reports is not counted); past it "
        "the server reads its next frame later.",
    ),
    (
        "machine_burst_bytes",
        int,
        "Bytes one machine may send at once before --machine-bytes-per-second applies.",
    ),
    ("retain_events_days", float, "Days events are kept (0: for ever)."),
    ("retain_blobs_days", float, "Days a file no job uses any more is kept (0: for ever)."),
    (
        "retain_recordings_days",
        float,
        "Days a shell session's recording is kept (0: for ever).",
    ),
    ("prune_interval", float, "Seconds between two retention sweeps (the first at start)."),
    (
        "events_keepalive",
        float,
        "Seconds of silence on an event stream before the server sends a keepalive.",
    ),
]


def _setting_options(f: F) -> F:
    for name, kind, help_text in reversed(_SETTING_FLAGS):
        flag = "--" + name.replace("_", "-")
        f = click.option(flag, name, type=kind, default=None, help=help_text)(f)
    return f


@server.command()
@click.option("--data-dir", envvar="CRC_DATA_DIR", callback=not_empty(), help=DATA_DIR_HELP)
@click.option("--listen", help="HOST:PORT to serve on (default: from `server init`).")
@click.option(
    "--database",
    envvar="CRC_DATABASE",
    callback=not_empty("URL"),
    help="Database URL: sqlite:///PATH (default: in the data dir) or postgresql://USER@HOST/DB.",
)
@click.option("--insecure", is_flag=True, help="Serve plain HTTP (loopback only; for development).")
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@_setting_options
@json_option
@click.option("--no-dashboard", is_flag=True, help="Do not serve the web dashboard (/dashboard/).")
@click.option(
    "--replica-url",
    callback=not_empty("URL"),
    help="This replica's own URL, as machines reach it (default: the url of server.json); "
    "a shell or forward opened here for a machine connected to another replica is "
    "dialed back here. https://HOST:PORT (http:// with --insecure).",
)
@click.option(
    "--new-certificate",
    is_flag=True,
    help="PostgreSQL: record this replica's certificate as the one every replica serves, "
    "in place of the one recorded (after renewing it; once). Else a replica whose "
    "certificate differs refuses to start.",
)
@click.option(
    "--new-teardown-key",
    is_flag=True,
    help="PostgreSQL: record this replica's teardown.key as the one every replica holds, "
    "in place of the one recorded (only if that one is lost; once).",
)
def run(
    data_dir: str | None,
    listen: str | None,
    database: str | None,
    insecure: bool,
    log_level: str,
    as_json: bool,
    no_dashboard: bool,
    replica_url: str | None,
    new_certificate: bool,
    new_teardown_key: bool,
    **settings: object,
) -> None:
    """Serve the API (HTTPS) and the web dashboard until interrupted (SIGTERM or Ctrl-C).

    Says where it serves when it starts (URL, fingerprint, database, pid, the dashboard's
    URL) and when it has stopped: on stderr, or as JSON lines on stdout with --json.
    Limits and policies (see docs/security.md) come from the "settings" object of
    DATA_DIR/server.json, each overridden by its flag below."""
    import dataclasses
    import os

    from ..server.config import load_config, parse_settings
    from ..server.runner import serve
    from ..server.store.base import shown_database

    cfg = load_config(_data_dir(data_dir))
    if database:
        _check_database(database, must_exist=False)  # `crc server run` makes a new one
    if replica_url is not None:
        cfg.url = _replica_url(replica_url, insecure)
    given = {k: v for k, v in settings.items() if v is not None}
    if given:
        cfg.settings = parse_settings(dict(dataclasses.asdict(cfg.settings)), given)
    where = listen or cfg.listen
    db = shown_database(database or cfg.database)
    url = cfg.url if not insecure or replica_url else f"http://{where}"
    pid = os.getpid()

    def say(fingerprint: str | None) -> None:
        """The start line, with the fingerprint of the certificate served (not the one
        server.json recorded at init: the certificate may have been replaced since)."""
        if as_json:
            emit_json(
                {
                    "event": "serving",
                    "url": url,
                    "listen": where,
                    "fingerprint": fingerprint,
                    "database": db,
                    "pid": pid,
                    "dashboard": None if no_dashboard else f"{url}/dashboard/",
                }
            )
            return
        pin = "plain HTTP, no TLS" if fingerprint is None else f"fingerprint {fingerprint}"
        text = f"crc server: serving {url} (listening on {where}; {pin}; database {db}; pid {pid})"
        if not no_dashboard:
            text += f"\ndashboard: {url}/dashboard/"
        click.echo(text, err=True)

    serving = False

    def listening(fingerprint: str | None) -> None:  # once the server's listener is up
        nonlocal serving
        serving = True
        say(fingerprint)

    import signal

    def stopped(signum: int, frame: object) -> None:
        # uvicorn shuts down gracefully on SIGTERM, then raises the signal again with
        # the handler it found: this one, so that the line below is printed.
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stopped)
    try:
        serve(
            cfg,
            where,
            database,
            insecure,
            log_level,
            dashboard=not no_dashboard,
            on_listening=listening,
            replica_url=cfg.url if replica_url is not None else None,
            new_certificate=new_certificate,
            new_teardown_key=new_teardown_key,
        )
    finally:
        if serving:  # a server that never served says only why (an error line)
            if as_json:
                emit_json({"event": "stopped", "pid": os.getpid()})
            else:
                click.echo(f"crc server: stopped (pid {os.getpid()})", err=True)


def _replica_url(value: str, insecure: bool) -> str:
    """``--replica-url``, checked: machines dial it back with this server's scheme (a
    machine that pins the certificate sends its credential over https:// only), so a URL
    of the other scheme would fail every stream through this replica, after 20 s."""
    from ..errors import InvalidInput
    from ..protocol.streams import check_replica_url

    try:
        url = check_replica_url(value)
    except InvalidInput as exc:
        raise InvalidInput(f"--replica-url: {exc.message}") from None
    scheme = "http://" if insecure else "https://"
    if not url.startswith(scheme):
        raise InvalidInput(
            f"--replica-url {url} is not {scheme}: "
            + (
                "this replica serves plain HTTP (--insecure)"
                if insecure
                else "this replica serves https:// (machines pin its certificate and "
                "would not dial a plain http:// URL)"
            )
        )
    return url


def _check_database(url: str, *, must_exist: bool) -> None:
    """A ``sqlite:///PATH`` database URL names a file (not nothing, not a directory);
    with ``must_exist``, one that exists (a command that only reads never makes a
    database: a mistyped path would show an empty one)."""
    if not url.startswith("sqlite:///"):
        return  # PostgreSQL, or a scheme open_store refuses
    path = url[len("sqlite:///") :]
    if path == ":memory:" or path.startswith("file:"):
        return
    if not path:
        raise InvalidInput(
            f"invalid database URL {url!r}: no file path (expected sqlite:///PATH, e.g. "
            "sqlite:////var/lib/crc-server/crc.db)"
        )
    if Path(path).is_dir():
        raise InvalidInput(f"invalid database URL {url!r}: {path} is a directory, not a file")
    if must_exist and not Path(path).exists():
        raise NotFound(
            f"no database at {path} (from --database {url}): check the path; `crc server "
            "run` and `crc server add-user` make a new database, the admin commands that "
            "only read (list-users, list-tokens) never do"
        )


def _store(data_dir: str | None, database: str | None, must_exist: bool) -> Store:
    from ..server.config import load_config
    from ..server.store.base import open_store

    if database:
        # A command that writes (add-user) makes a new database, as `crc server run`
        # does; one that only reads (list-users) says it is not there.
        _check_database(database, must_exist=must_exist)
        return open_store(database, existing_only=must_exist)
    # The data dir's own database: made here if the server never ran (init, then
    # add-user, then run is a documented order).
    return open_store(load_config(_data_dir(data_dir)).database)


def _admin(
    data_dir: str | None,
    database: str | None,
    op: Callable[..., T],
    *args: Any,
    write: bool = True,
) -> T:
    import asyncio

    store = _store(data_dir, database, must_exist=not write)

    async def go() -> T:
        await store.start()
        try:
            return await (store.write(op, *args) if write else store.read(op, *args))
        finally:
            await store.close()

    return asyncio.run(go())


def _date(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


_db_option = click.option(
    "--database",
    envvar="CRC_DATABASE",
    callback=not_empty("URL"),
    help="Database URL (instead of --data-dir).",
)
_dd_option = click.option(
    "--data-dir", envvar="CRC_DATA_DIR", callback=not_empty(), help=DATA_DIR_HELP
)


@server.command("add-user")
@click.argument("name")
@_dd_option
@_db_option
@json_option
def add_user(name: str, data_dir: str | None, database: str | None, as_json: bool) -> None:
    """Create user NAME and print its first master token (shown once), named default
    (`crc server list-tokens NAME`; with --json: {"user", "name", "token"}, as
    add-token)."""
    from ..server.ops.users import FIRST_TOKEN, create_user

    token = _admin(data_dir, database, create_user, name)
    if as_json:
        emit_json({"user": name, "name": FIRST_TOKEN, "token": token})
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


@server.command("list-users")
@_dd_option
@_db_option
@json_option
def list_users(data_dir: str | None, database: str | None, as_json: bool) -> None:
    """The server's users: when created, their live master tokens and groups."""
    from ..server.ops.users import list_users as op

    users = _admin(data_dir, database, op, write=False)
    if as_json:
        emit_json({"users": users})
        return
    print_table(
        ["USER", "CREATED", "TOKENS", "GROUPS"],
        [[u["user"], _date(u["created"]), str(u["tokens"]), str(u["groups"])] for u in users],
    )


@server.command("list-tokens")
@click.argument("user")
@_dd_option
@_db_option
@json_option
def list_tokens(user: str, data_dir: str | None, database: str | None, as_json: bool) -> None:
    """USER's master tokens, revoked ones included: names and dates (a token itself is
    shown only once, when made; the server keeps its hash)."""
    from ..server.ops.users import list_tokens as op

    tokens = _admin(data_dir, database, op, user, write=False)
    if as_json:
        emit_json({"user": user, "tokens": tokens})
        return
    print_table(
        ["NAME", "CREATED", "REVOKED"],
        [[t["name"], _date(t["created"]), _date(t["revoked"])] for t in tokens],
    )
