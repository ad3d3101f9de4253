"""``crc server run``: serve the app with uvicorn over TLS (or plain HTTP on loopback)."""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .. import logsafe
from ..errors import Conflict, CrcError, InvalidInput
from ..protocol.limits import (
    AGENT_PING_SECONDS,
    AGENT_SILENCE_SECONDS,
    HEARTBEAT_SECONDS,
    MAX_FRAME_BYTES,
)
from .app import create_app
from .config import ServerConfig, ServerSettings, parse_listen
from .forwarded import TrustedProxies
from .handshakes import STARTUP_FAILURE, HandshakeLimits, UvicornServer, bind
from .httpguard import ConnectionGuard, GuardLimits, guarded_protocol
from .hub import CUT_ON_STOP, EventBus
from .pacing import PACE_WARN_BELOW
from .store.base import open_store
from .store.identity import ReplicaIdentity, teardown_key_check
from .store.sqlite import SqliteStore
from .teardown import KEY_FILE, load_cipher
from .tlsfiles import served_fingerprint
from .wsprotocol import listening_protocol

__all__ = ["serve"]


def serve(
    cfg: ServerConfig,
    listen: str,
    database: str | None,
    insecure: bool,
    log_level: str = "warning",
    dashboard: bool = True,
    on_listening: Callable[[str | None], None] | None = None,
    replica_url: str | None = None,
    new_certificate: bool = False,
    new_teardown_key: bool = False,
) -> None:
    """Serve until stopped. ``on_listening`` is called once the server accepts
    connections, with the fingerprint of the certificate served (None: ``insecure``); a
    listen address it cannot take, and a certificate or key it cannot serve, are errors
    raised before anything starts (``Conflict`` when another process holds the address;
    on SQLite, also when another server has the database: store/serverlock.py).
    ``replica_url``: where machines reach this replica (``--replica-url``, checked),
    else server.json's url (TLS) or ``http://LISTEN`` (``insecure``: server.json's url
    is https://).
    ``new_certificate``/``new_teardown_key``: on PostgreSQL, record this replica's
    certificate/teardown key as the one every replica must have, in place of the one
    recorded (store/identity.py); else one that differs is refused at start."""
    host, port = parse_listen(listen)
    if insecure:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise InvalidInput(
                "--insecure serves plain HTTP and is allowed on a loopback "
                "address only (e.g. --listen 127.0.0.1:8080)"
            )
    check_listen(host, port, listen)
    fingerprint = None if insecure else served_fingerprint(cfg.cert, cfg.key)
    settings: ServerSettings = cfg.settings
    store = open_store(database or cfg.database)
    if isinstance(store, SqliteStore):
        store.serving = True  # alone on its database (app.py): another server is refused
    app = create_app(
        store, blob_dir=Path(cfg.data_dir) / "blobs", settings=settings, dashboard=dashboard
    )
    app.state.wheel_dir = Path(cfg.data_dir) / "wheels"  # served by /v1/agent/wheels
    # Where machines reach this replica (streams opened here for a machine connected to
    # another replica: the machine dials back here, server/api_streams.py).
    app.state.replica_url = replica_url or (f"http://{listen}" if insecure else cfg.url)
    app.state.teardown_cipher = load_cipher(  # opt-in TTL teardown; no key made silently
        Path(cfg.data_dir), new_key=new_teardown_key, database=database or cfg.database
    )
    # Replicas of one database must share the certificate and the teardown key: checked
    # (recorded by the first) when the store opens.
    store.identity = _identity(cfg, fingerprint, new_certificate, new_teardown_key)
    # Every log line is redacted (tokens, Authorization headers, keys), whatever logs it.
    logsafe.configure(log_level, "%(asctime)s %(levelname)s %(name)s %(message)s")
    if settings.agent_silence_timeout <= AGENT_PING_SECONDS + HEARTBEAT_SECONDS:
        logging.getLogger(__name__).warning(
            "agent_silence_timeout is %g s: agents ping every %g s, so connections of "
            "healthy idle agents may be closed (the default is %g s)",
            settings.agent_silence_timeout,
            AGENT_PING_SECONDS,
            AGENT_SILENCE_SECONDS,
        )
    if settings.machine_bytes_per_second < PACE_WARN_BELOW:
        logging.getLogger(__name__).warning(
            "machine_bytes_per_second is %d: an agent that sends more than its burst at "
            "once may find its pings answered late behind its paced data and reconnect "
            "(nothing is lost; the default is %d)",
            settings.machine_bytes_per_second,
            ServerSettings.machine_bytes_per_second,
        )
    # One schedule for every 503 given under load: the login bound's and the guard's.
    logins = app.state.logins
    guard = ConnectionGuard(
        GuardLimits(
            max_header_bytes=settings.max_header_bytes,
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            max_unauthenticated=settings.max_unauthenticated,
            max_unauthenticated_per_ip=settings.max_unauthenticated_per_ip,
        ),
        logins=logins,
    )
    config = uvicorn.Config(
        # X-Forwarded-For is believed only from the configured proxies (uvicorn's own
        # default trusts loopback, where anything on the host can connect from).
        TrustedProxies(app, settings.forwarded_allow_ips),
        proxy_headers=False,
        host=host,
        port=port,
        ssl_certfile=None if insecure else str(cfg.cert),
        ssl_keyfile=None if insecure else str(cfg.key),
        # Agents ping; the server listens, and closes one silent too long (wsprotocol.py).
        ws=listening_protocol(settings.agent_silence_timeout),
        ws_per_message_deflate=False,
        ws_max_size=MAX_FRAME_BYTES,
        ws_ping_interval=HEARTBEAT_SECONDS,
        ws_ping_timeout=HEARTBEAT_SECONDS,
        http=guarded_protocol(guard),
        timeout_keep_alive=int(max(1, round(settings.keepalive_timeout))),
        loop="uvloop",
        log_level=log_level,
        log_config=None,  # uvicorn's loggers propagate to the redacting root handler
        access_log=False,
        timeout_graceful_shutdown=3,
        lifespan="on",
        server_header=False,
    )
    config.load()
    if config.ssl is not None:
        # No TLS 1.3 session tickets: no client here resumes sessions, each ticket costs
        # the server an encryption per handshake, and a ticket arriving while a threaded
        # client (websockets' sync client) writes its first request can lose it.
        config.ssl.num_tickets = 0
    # TLS handshakes are bounded and spent on clients still waiting (handshakes.py).
    limits = HandshakeLimits(
        max_handshakes=settings.max_handshakes,
        max_handshakes_per_ip=settings.max_handshakes_per_ip,
        handshake_timeout=settings.handshake_timeout,
    )
    listening = None if on_listening is None else functools.partial(on_listening, fingerprint)
    server = _StoppingServer(config, limits, app.state.bus, listening)
    told = _StartupErrorTold(app.state)
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addFilter(told)
    try:
        server.run()
    except SystemExit as exc:
        if exc.code != STARTUP_FAILURE:
            raise
        known = getattr(app.state, "startup_error", None)
        if isinstance(known, CrcError):  # the database: said once, with its exit code
            raise known from None
        # uvicorn's "startup failed" (3 would read as crc's "unauthorized"): what failed
        # is in the log lines above (the listen address taken meanwhile, the lifespan).
        raise CrcError(f"the server did not start on {listen}: see the log above") from None
    finally:
        uvicorn_log.removeFilter(told)


def _identity(
    cfg: ServerConfig, fingerprint: str | None, new_certificate: bool, new_teardown_key: bool
) -> ReplicaIdentity:
    """What this replica must share with the others of its database: the fingerprint
    of the certificate served (None with ``--insecure``: none is served)."""
    key = (Path(cfg.data_dir) / KEY_FILE).read_bytes()  # checked by load_cipher
    return ReplicaIdentity(
        data_dir=cfg.data_dir,
        fingerprint=fingerprint,
        teardown_check=teardown_key_check(key),
        new_certificate=new_certificate,
        new_teardown_key=new_teardown_key,
    )


class _StartupErrorTold(logging.Filter):
    """Once the application's startup failed with a ``CrcError`` (a database that cannot
    be opened or reached, recorded by the lifespan as ``startup_error``), uvicorn's own
    lines about it (the traceback, "Application startup failed") are not logged: `crc
    server run` says what failed in one line (``serve``)."""

    def __init__(self, state: Any) -> None:
        super().__init__()
        self.state = state

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(self.state, "startup_error", None) is None


def check_listen(host: str, port: int, listen: str) -> None:
    """Fail early, in one line, when ``host``:``port`` cannot be listened on (as the
    server will bind it; the sockets are closed at once)."""
    try:
        socks = bind(host, port, 1)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise Conflict(
                f"{listen} is in use by another process (another `crc server run`?): stop "
                "it or choose another --listen HOST:PORT",
                code="address_in_use",
            ) from None
        raise InvalidInput(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    for s in socks:
        s.close()


class _StoppingServer(UvicornServer):
    """Ends the responses that last until their client goes before uvicorn waits for
    the open ones (``timeout_graceful_shutdown``, then a cancellation and a traceback
    each): idle connections and event streams (``CUT_ON_STOP``) are aborted (what a
    stream did not send is read again: its follower resumes from its cursor, here once
    restarted or at another replica); then waits on the event bus are answered (503,
    hub.py), their connections closed once the answer is out."""

    def __init__(
        self,
        config: uvicorn.Config,
        limits: HandshakeLimits,
        bus: EventBus,
        on_listening: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config, limits)
        self.bus = bus
        self.on_listening = on_listening

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.should_exit or self.on_listening is None:
            return
        try:  # the server's own listener is up: connections are accepted from now on
            self.on_listening()
        except OSError:  # an output closed meanwhile: serving goes on
            pass

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:  # no new stream starts meanwhile
            server.close()
        cut = set()
        for connection in list(self.server_state.connections):
            if not isinstance(connection, HttpToolsProtocol):
                continue  # a WebSocket: uvicorn closes it (1012)
            cycle = connection.cycle
            if cycle is None or cycle.response_complete:
                # Idle: aborted, not closed. A TLS close waits for the client's own
                # close_notify, which an idle pooled client never sends: uvicorn then
                # waited out its graceful timeout and logged an ERROR.
                connection.transport.abort()
            elif cycle.scope.get(CUT_ON_STOP):
                connection.transport.abort()
                cut.add(connection)
        # Let the aborted connections be marked lost (connection_lost, a turn of the loop
        # or two) before the bus stops: a stream that then ends unfinished does so on a
        # connection uvicorn knows is gone, which it does not log as an error.
        deadline = asyncio.get_running_loop().time() + 1
        while cut & self.server_state.connections:
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.01)
        self.bus.stop()
        await super().shutdown(sockets)
