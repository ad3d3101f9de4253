"""A server's data directory: certificate, key, database and ``server.json``.

Layout::

    DATA_DIR/server.json   {"url", "listen", "fingerprint"}
    DATA_DIR/cert.pem      self-signed certificate (or your own)
    DATA_DIR/key.pem       its private key (0600)
    DATA_DIR/crc.db        SQLite database (unless --database points elsewhere)
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import Conflict, InvalidInput, NotFound

__all__ = ["DEFAULT_LISTEN", "ServerConfig", "init_data_dir", "load_config", "parse_listen"]

DEFAULT_LISTEN = "0.0.0.0:8443"
CONFIG_NAME = "server.json"


@dataclass
class ServerConfig:
    url: str
    listen: str
    fingerprint: str | None
    data_dir: str

    @property
    def cert(self) -> Path:
        return Path(self.data_dir) / "cert.pem"

    @property
    def key(self) -> Path:
        return Path(self.data_dir) / "key.pem"

    @property
    def database(self) -> str:
        return "sqlite:///" + str(Path(self.data_dir) / "crc.db")


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInput(f"invalid listen address {text!r}: expected HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def _guess_host() -> str:
    """An address other machines may reach this one by (the UDP trick sends nothing)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet leaves for a UDP connect
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def init_data_dir(
    data_dir: Path, url: str | None, listen: str, names: list[str], force: bool = False
) -> ServerConfig:
    from .tls import make_self_signed

    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    cfg_path = data_dir / CONFIG_NAME
    if cfg_path.exists() and not force:
        raise Conflict(
            f"{data_dir} is initialised already (use --force to make a new "
            "certificate: every agent and client pinning the old one must change)"
        )
    host, port = parse_listen(listen)
    public = host if host not in ("0.0.0.0", "::") else _guess_host()
    url = url or f"https://{public}:{port}"
    fp = make_self_signed(data_dir / "cert.pem", data_dir / "key.pem", [public, *names])
    cfg = ServerConfig(url=url, listen=listen, fingerprint=fp, data_dir=str(data_dir))
    cfg_path.write_text(
        json.dumps({k: v for k, v in asdict(cfg).items() if k != "data_dir"}, indent=2) + "\n"
    )
    return cfg


def load_config(data_dir: Path) -> ServerConfig:
    path = data_dir / CONFIG_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise NotFound(
            f"{data_dir} is not a server data directory: run "
            f"`crc server init --data-dir {data_dir}` first"
        ) from None
    except ValueError:
        raise InvalidInput(f"{path} is not valid JSON") from None
    return ServerConfig(
        url=data["url"],
        listen=data.get("listen", DEFAULT_LISTEN),
        fingerprint=data.get("fingerprint"),
        data_dir=str(data_dir),
    )
