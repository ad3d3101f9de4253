"""The master's login profile: server URL, token, pinned fingerprint (and certificate).

Kept in ``$CRC_CONFIG_DIR/config.json`` (default: the user config dir, e.g.
``~/.config/crc``), mode 0600. ``CRC_URL``, ``CRC_TOKEN`` and ``CRC_FINGERPRINT``
override it, so scripts and CI need no file at all; one set but empty is an error.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import InvalidInput, Unauthorized

__all__ = [
    "Profile",
    "config_dir",
    "env_override",
    "load_profile",
    "remove_profile",
    "save_profile",
]


@dataclass
class Profile:
    url: str
    token: str
    fingerprint: str | None = None
    cert_pem: str | None = None


def config_dir() -> Path:
    env = os.environ.get("CRC_CONFIG_DIR")
    if env:
        return Path(env)
    from platformdirs import user_config_dir

    return Path(user_config_dir("crc", appauthor=False))


def _path() -> Path:
    return config_dir() / "config.json"


def _read(path: Path) -> dict[str, str | None]:
    """The stored profile: {} when there is none; InvalidInput when it cannot be read or
    is not what `crc login` writes (a JSON object of strings)."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    try:
        stored = json.loads(data.decode("utf-8"))
    except ValueError:  # not UTF-8 (UnicodeDecodeError is one), not JSON
        stored = None
    if (
        not isinstance(stored, dict)
        or not all(v is None or isinstance(v, str) for v in stored.values())
        or not _is_pem(stored.get("cert_pem"))
    ):
        raise InvalidInput(f"{path} is damaged: run `crc login` again")
    return stored


def _is_pem(text: str | None) -> bool:
    """A cached certificate as `crc login` keeps it: none, or one PEM certificate."""
    if text is None:
        return True
    import ssl

    try:
        ssl.PEM_cert_to_DER_cert(text)
    except ValueError:
        return False
    return True


def load_profile() -> Profile:
    path = _path()
    stored = _read(path)
    url = env_override("CRC_URL") or stored.get("url")
    token = env_override("CRC_TOKEN") or stored.get("token")
    fingerprint = env_override("CRC_FINGERPRINT") or stored.get("fingerprint")
    if not url or not token:
        raise Unauthorized(
            "not logged in: run `crc login --url URL --token TOKEN "
            "--fingerprint SHA256` (or set CRC_URL and CRC_TOKEN)"
        )
    same_server = url == stored.get("url") and fingerprint == stored.get("fingerprint")
    return Profile(url, token, fingerprint, stored.get("cert_pem") if same_server else None)


def env_override(name: str, unset: str = "to use the `crc login` profile") -> str | None:
    """The variable ``name`` overriding the profile; None when it is not set.

    Set but empty (or blank) is an error, not "use the profile": a script that clears
    ``CRC_TOKEN`` to act with no token must not act with the identity `crc login` saved.
    ``unset`` says what unsetting it does (`crc login`: its option is asked for)."""
    value = os.environ.get(name)
    if value is not None and not value.strip():
        raise InvalidInput(f"{name} is set but empty: give it a value, or unset it {unset}")
    return value


def save_profile(profile: Profile) -> Path:
    """Write the profile (0600, atomically); InvalidInput when it cannot be written
    (``CRC_CONFIG_DIR`` a file, a directory not writable)."""
    path = _path()
    tmp = path.with_suffix(".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(profile), fh, indent=2)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        why = "it is not a directory" if isinstance(exc, FileExistsError) else exc.strerror
        raise InvalidInput(
            f"cannot save the login profile in {path.parent}: {why} (set "
            "CRC_CONFIG_DIR to a directory you can write)"
        ) from None
    return path


def remove_profile() -> tuple[Path, str | None] | None:
    """Remove the stored profile (`crc logout`): its server URL, token, fingerprint and
    cached certificate. The path removed and the URL it named (None if unreadable: a
    damaged profile is removed all the same, it may hold a token); None when there was
    none. InvalidInput when it cannot be removed."""
    path = _path()
    try:
        url: str | None = _read(path).get("url")
    except InvalidInput:
        url = None
    with contextlib.suppress(OSError):
        path.with_suffix(".tmp").unlink(missing_ok=True)  # a save cut short: may hold a token
    try:
        path.unlink()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        why = "it is a directory" if path.is_dir() else exc.strerror
        raise InvalidInput(f"cannot remove the login profile {path}: {why}") from None
    return path, url
