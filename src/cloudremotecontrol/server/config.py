"""A server's data directory: certificate, key, database and ``server.json``.

Layout::

    DATA_DIR/server.json   {"url", "listen", "fingerprint"}
    DATA_DIR/cert.pem      self-signed certificate (or your own)
    DATA_DIR/key.pem       its private key (0600)
    DATA_DIR/crc.db        SQLite database (unless --database points elsewhere)

``server.json`` may also hold ``"settings"``: the bounds and policies of a running
server (``ServerSettings``), each overridden by the ``crc server run`` flag of the same
name. The defaults are the safe choice; docs/security.md says what each protects.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import socket
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import Conflict, InvalidInput, NotFound
from ..protocol.limits import AGENT_SILENCE_SECONDS

__all__ = [
    "DEFAULT_LISTEN",
    "ServerConfig",
    "ServerSettings",
    "check_san",
    "check_server_url",
    "init_data_dir",
    "listen_for",
    "load_config",
    "parse_listen",
    "parse_settings",
    "url_port",
]

DEFAULT_LISTEN = "0.0.0.0:8443"
CONFIG_NAME = "server.json"


@dataclass(frozen=True)
class ServerSettings:
    """What a connection, a client and the database may cost (docs/security.md)."""

    # Before a request is authenticated (server/httpguard.py).
    max_header_bytes: int = 64 << 10  # a request's header section; above it: 431
    header_timeout: float = 10.0  # seconds to send a whole header section; then 408
    body_timeout: float = 30.0  # seconds without a byte of a request body; then 408
    keepalive_timeout: float = 5.0  # an idle kept-alive connection is closed after this
    max_unauthenticated: int = 512  # connections without a valid token, in all...
    max_unauthenticated_per_ip: int = 64  # ...and from one address; above: 503
    # TLS handshakes in progress at once, and from one address; the next connections
    # wait (cheaply) for a place; seconds a handshake has once it has a place
    # (server/handshakes.py).
    max_handshakes: int = 64
    max_handshakes_per_ip: int = 16
    handshake_timeout: float = 10.0
    # Agent logins (WebSocket upgrade to welcome) at once; above: 503 + Retry-After
    # (server/admission.py).
    max_logins: int = 256
    # Seconds an agent's connection may stay silent (the agent pings every 45 s; TCP
    # keepalive notices a vanished machine sooner) before the server closes it and the
    # machine turns offline (server/wsprotocol.py).
    agent_silence_timeout: float = AGENT_SILENCE_SECONDS
    # Reverse proxies whose X-Forwarded-For is believed (none: the peer is the client).
    forwarded_allow_ips: tuple[str, ...] = ()
    # Failed enrollments one address may make per minute; then 429 until it passes.
    enroll_failures_per_minute: int = 30
    # Failed dashboard logins one address may make per minute; then 429 until it passes.
    login_failures_per_minute: int = 10
    # Bytes one machine may send per second, after a burst, of what the server stores
    # (progress, facts, messages, and what it sends again; not what a job sent it
    # reports): past it the server reads the machine's next frame later
    # (server/pacing.py).
    machine_bytes_per_second: int = 1 << 20
    machine_burst_bytes: int = 64 << 20
    # Retention, in days (0 keeps for ever): events of live groups, files no job uses
    # any more; the events and jobs of deleted groups go with the retention of events.
    retain_events_days: float = 30.0
    retain_blobs_days: float = 7.0
    retain_recordings_days: float = 30.0  # shell session recordings (asciinema files)
    prune_interval: float = 3600.0  # seconds between two retention sweeps
    # Seconds of silence on an event stream before the server sends a keepalive comment
    # (a follower that waits for nothing in particular sees its link is alive).
    events_keepalive: float = 5.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "forwarded_allow_ips":
                for entry in value:
                    _check_network(entry)
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidInput(f"setting {f.name}: expected a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise InvalidInput(f"setting {f.name}: expected a number >= 0, got {value!r}")
            positive = not f.name.startswith("retain_")
            if positive and value <= 0:
                raise InvalidInput(f"setting {f.name}: expected a number > 0, got {value!r}")
            # The other numbers given as floats are seconds: under one, a timeout that
            # cuts every client off, or a loop that spins (a typo for ms or minutes).
            if positive and f.type == "float" and value < 1:
                raise InvalidInput(
                    f"setting {f.name}: expected at least 1 (seconds), got {value!r}"
                )
            if f.type == "int" and value != int(value):
                raise InvalidInput(f"setting {f.name}: expected a whole number, got {value!r}")
        if self.max_header_bytes < 1024:
            raise InvalidInput("setting max_header_bytes: at least 1024")


def _check_network(entry: str) -> None:
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        raise InvalidInput(
            f"setting forwarded_allow_ips: {entry!r} is not an IP address or network "
            "(e.g. 10.0.0.5 or 10.0.0.0/24)"
        ) from None


def parse_settings(data: Any, overrides: dict[str, Any] | None = None) -> ServerSettings:
    """``server.json``'s ``settings`` (a mapping), then ``overrides`` (flags given)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidInput("server.json: settings must be a JSON object")
    known = {f.name: f for f in fields(ServerSettings)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise InvalidInput(
            f"server.json: unknown setting(s) {', '.join(unknown)} (known: {', '.join(known)})"
        )
    values = dict(data)
    for k, v in (overrides or {}).items():
        if v is not None:
            values[k] = v
    fwd = values.get("forwarded_allow_ips", ())
    if isinstance(fwd, str):
        fwd = [x.strip() for x in fwd.split(",") if x.strip()]
    if not isinstance(fwd, (list, tuple)) or not all(isinstance(x, str) for x in fwd):
        raise InvalidInput("setting forwarded_allow_ips: a list of addresses or networks")
    for entry in fwd:
        _check_network(entry)
    values["forwarded_allow_ips"] = tuple(
        str(ipaddress.ip_network(e, strict=False)) if "/" in e else str(ipaddress.ip_address(e))
        for e in fwd
    )
    return replace(ServerSettings(), **values)


@dataclass
class ServerConfig:
    url: str
    listen: str
    fingerprint: str | None
    data_dir: str
    settings: ServerSettings = ServerSettings()

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
    if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise InvalidInput(f"invalid listen address {text!r}: expected HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _is_host(name: str) -> bool:
    """A DNS name (letters, digits, inner hyphens; labels of 1-63, 253 in all) or an IP
    address."""
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    name = name[:-1] if name.endswith(".") else name
    return 0 < len(name) <= 253 and all(_DNS_LABEL.fullmatch(x) for x in name.split("."))


def check_san(name: str) -> str:
    """A name for the certificate (``crc server init --san``): a DNS name or an IP."""
    if not _is_host(name):
        raise InvalidInput(
            f"invalid --san {name!r}: expected a DNS name (letters, digits, hyphens and "
            "dots, e.g. crc.example.net) or an IP address"
        )
    return name


def check_server_url(url: str) -> str:
    """The server's public URL (``crc server init --url``): ``https://HOST[:PORT]``, no
    path, query, fragment or user name; returned without a trailing ``/``."""
    example = "expected https://HOST or https://HOST:PORT, e.g. https://203.0.113.7:8443"
    bad = f"invalid --url {url!r}: {example}"
    if any(c.isspace() or not c.isprintable() for c in url):
        raise InvalidInput(f"{bad} (no spaces or control characters)")
    parts = urlsplit(url)
    if parts.scheme.lower() != "https":
        raise InvalidInput(f"{bad} (the server speaks HTTPS)")
    if "@" in parts.netloc:
        raise InvalidInput(f"{bad} (no user name or password)")
    if parts.path not in ("", "/") or parts.query or parts.fragment or url.endswith(("?", "#")):
        raise InvalidInput(f"{bad} (no path, query or fragment)")
    try:
        port = parts.port
    except ValueError:
        raise InvalidInput(f"{bad} (the port must be 1-65535)") from None
    if port == 0 or parts.netloc.endswith(":"):
        raise InvalidInput(f"{bad} (the port must be 1-65535)")
    host = parts.hostname or ""
    if not host or not _is_host(host):
        raise InvalidInput(f"{bad} (the host must be a DNS name or an IP address)")
    return url[:-1] if url.endswith("/") else url


def url_port(url: str) -> int:
    """The port a checked server URL names, else HTTPS's 443."""
    return urlsplit(url).port or 443


def listen_for(url: str | None, listen: str | None) -> str:
    """What a new data directory listens on: ``listen`` when given; else the default
    host on the port ``url`` names (so the server listens where the URL says it is),
    else ``DEFAULT_LISTEN`` (also for a URL without a port: binding 443 needs root).
    A URL whose host is an IPv6 address gets the IPv6 wildcard (``[::]``) for host."""
    if listen is not None:
        return listen
    host, port = parse_listen(DEFAULT_LISTEN)
    if url is not None and ":" in (urlsplit(url).hostname or ""):
        host = "[::]"
    if url is not None and urlsplit(url).port is not None:
        port = url_port(url)
    return f"{host}:{port}"


def _guess_host() -> str:
    """An address other machines may reach this one by (the UDP trick sends nothing)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet leaves for a UDP connect
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def init_data_dir(
    data_dir: Path, url: str | None, listen: str | None, names: list[str], force: bool = False
) -> ServerConfig:
    """``listen`` None: ``listen_for`` the URL (its port, on the default host)."""
    from .tls import make_self_signed

    # Checked before anything is written: a bad URL or name never reaches server.json
    # or the certificate.
    if url is not None:
        url = check_server_url(url)
    listen = listen_for(url, listen)
    host, port = parse_listen(listen)
    names = [check_san(n) for n in names]
    cfg_path = data_dir / CONFIG_NAME
    # Nothing is changed before every check passed: a refused init leaves the directory
    # (its mode, its files) as it was.
    if data_dir.is_dir():
        _check_existing_dir(data_dir, force)
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)  # made here: this server's alone
    public = host if host not in ("0.0.0.0", "::") else _guess_host()
    url = url or f"https://{public}:{port}"
    # Made anew (mode 0600 as the file is created): a key.pem there before, of another
    # mode or a link, is not written through.
    for name in ("cert.pem", "key.pem"):
        (data_dir / name).unlink(missing_ok=True)
    fp = make_self_signed(data_dir / "cert.pem", data_dir / "key.pem", [public, *names])
    cfg = ServerConfig(url=url, listen=listen, fingerprint=fp, data_dir=str(data_dir))
    cfg_path.write_text(
        json.dumps(
            {k: v for k, v in asdict(cfg).items() if k not in ("data_dir", "settings")}, indent=2
        )
        + "\n"
    )
    return cfg


#: What a server keeps in its data directory; init over any of them needs --force.
_SERVER_FILES = (CONFIG_NAME, "cert.pem", "key.pem", "teardown.key", "crc.db")


def _check_existing_dir(data_dir: Path, force: bool) -> None:
    """A directory that exists already keeps its mode (it may be a mount point, or have
    its mode on purpose), but one that other users may write to is refused: they could
    replace the certificate or the key, or put a link where the key is written. Files of
    a server there (a server.json, a certificate, a database, a teardown key) are
    replaced only with ``force``, which makes a new certificate and keeps
    ``teardown.key`` and ``crc.db``."""
    mode = data_dir.stat().st_mode
    if mode & 0o022:
        raise InvalidInput(
            f"the server data directory {data_dir} may be written by other users "
            f"(mode {mode & 0o7777:o}): run `chmod go-w {data_dir}`, or give a path that "
            "does not exist (crc makes it, mode 700)"
        )
    if force:
        return
    if (data_dir / CONFIG_NAME).exists():
        raise Conflict(
            f"{data_dir} is initialised already (use --force to make a new "
            "certificate: every agent and client pinning the old one must change)"
        )
    found = [n for n in _SERVER_FILES if os.path.lexists(data_dir / n)]
    if found:
        raise Conflict(
            f"{data_dir} holds a server's files already ({', '.join(found)}) but no "
            f"{CONFIG_NAME}: use --force to make a new certificate and {CONFIG_NAME} "
            "(teardown.key and crc.db are kept), or give another directory"
        )


def _not_a_directory(data_dir: Path) -> InvalidInput:
    where = "a file" if data_dir.exists() else "under a file"
    return InvalidInput(f"the server data directory {data_dir} is {where}, not a directory")


def load_config(data_dir: Path) -> ServerConfig:
    """``DATA_DIR/server.json``: missing is ``NotFound``; unreadable or damaged (not a
    JSON object with a string ``url``, ...) is ``InvalidInput`` naming the file."""
    path = data_dir / CONFIG_NAME
    again = f"run `crc server init --data-dir {data_dir} --force` again or fix it"
    try:
        text = path.read_text()
    except FileNotFoundError:
        if data_dir.exists() and not data_dir.is_dir():
            raise _not_a_directory(data_dir) from None
        raise NotFound(
            f"{data_dir} is not a server data directory: run "
            f"`crc server init --data-dir {data_dir}` first"
        ) from None
    except NotADirectoryError:
        raise _not_a_directory(data_dir) from None
    except IsADirectoryError:
        raise InvalidInput(
            f"{path} is damaged: it is a directory, not a file; remove it and run "
            f"`crc server init --data-dir {data_dir}` again"
        ) from None
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError:  # not UTF-8
        raise InvalidInput(f"{path} is damaged: not valid JSON; {again}") from None
    try:
        data = json.loads(text)
    except ValueError:
        raise InvalidInput(f"{path} is damaged: not valid JSON; {again}") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{path} is damaged: expected a JSON object; {again}")
    url = data.get("url")
    if not isinstance(url, str) or not url:
        raise InvalidInput(f'{path} is damaged: no "url" (a string); {again}')
    listen = data.get("listen", DEFAULT_LISTEN)
    if not isinstance(listen, str):
        raise InvalidInput(f'{path} is damaged: "listen" is not a string; {again}')
    try:
        parse_listen(listen)
    except InvalidInput as exc:
        raise InvalidInput(f"{path} is damaged: {exc.message}; {again}") from None
    fingerprint = data.get("fingerprint")
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise InvalidInput(f'{path} is damaged: "fingerprint" is not a string; {again}')
    return ServerConfig(
        url=url,
        listen=listen,
        fingerprint=fingerprint,
        data_dir=str(data_dir),
        settings=parse_settings(data.get("settings")),
    )
