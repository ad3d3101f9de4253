"""``crc server run``: serve the app with uvicorn over TLS (or plain HTTP on loopback)."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import uvicorn

from ..errors import InvalidInput
from ..protocol.limits import HEARTBEAT_SECONDS, MAX_FRAME_BYTES
from .app import create_app
from .config import ServerConfig, parse_listen
from .store.base import open_store
from .teardown import load_cipher

__all__ = ["serve"]


def serve(
    cfg: ServerConfig,
    listen: str,
    database: str | None,
    insecure: bool,
    log_level: str = "warning",
    dashboard: bool = True,
) -> None:
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
    store = open_store(database or cfg.database)
    app = create_app(store, blob_dir=Path(cfg.data_dir) / "blobs", dashboard=dashboard)
    app.state.wheel_dir = Path(cfg.data_dir) / "wheels"  # served by /v1/agent/wheels
    app.state.teardown_cipher = load_cipher(Path(cfg.data_dir))  # opt-in TTL teardown
    base = f"http://{host}:{port}" if insecure else cfg.url.rstrip("/")
    print(f"serving {base}" + (f"\ndashboard: {base}/dashboard/" if dashboard else ""), flush=True)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=None if insecure else str(cfg.cert),
        ssl_keyfile=None if insecure else str(cfg.key),
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        ws_max_size=MAX_FRAME_BYTES,
        ws_ping_interval=HEARTBEAT_SECONDS,
        ws_ping_timeout=HEARTBEAT_SECONDS,
        http="httptools",
        loop="uvloop",
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=3,
        lifespan="on",
        server_header=False,
    )
    uvicorn.Server(config).run()
