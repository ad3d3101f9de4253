"""The certificate and key `crc server run` serves, checked before it starts.

``crc server init`` makes them (tls.py); an operator may put their own there
(docs/postgresql.md). One that is missing, unreadable, not PEM, encrypted or not the
pair of the other is one line naming the file (InvalidInput, exit 2), not the traceback
of the TLS setup (or OpenSSL asking for a passphrase on the terminal).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from ..errors import InvalidInput
from ..tlspin import fingerprint_of

__all__ = ["served_fingerprint"]


def _fix(path: Path) -> str:
    return (
        f"put a matching cert.pem and key.pem in {path.parent}, or make a new pair with "
        f"`crc server init --data-dir {path.parent} --force` (clients then pin its new "
        "fingerprint)"
    )


class _Encrypted(Exception):
    """The key asks for a passphrase (raised by the password callback)."""


def served_fingerprint(cert: Path, key: Path) -> str:
    """The fingerprint of the certificate ``cert`` once checked to be served with
    ``key``; InvalidInput naming the file and what is wrong otherwise."""
    leaf = _certificate(cert)
    _private_key(key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except _Encrypted:
        raise _encrypted(key) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise InvalidInput(
                f"the TLS key {key} is not the key of the certificate {cert}: {_fix(cert)}"
            ) from None
        raise InvalidInput(
            f"cannot serve the TLS certificate {cert} with the key {key}: "
            f"{exc.reason or exc}: {_fix(cert)}"
        ) from None
    except OSError as exc:  # replaced meanwhile
        raise InvalidInput(
            f"cannot read the TLS certificate {cert} or key {key}: {exc.strerror or exc}"
        ) from None
    return fingerprint_of(leaf.public_bytes(serialization.Encoding.DER))


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInput(
            f"cannot read the TLS {what} {path}: {exc.strerror or exc}: {_fix(path)}"
        ) from None


def _certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(path, "certificate"))
    except ValueError:
        raise InvalidInput(
            f"the TLS certificate {path} is not a PEM certificate: {_fix(path)}"
        ) from None


def _private_key(path: Path) -> None:
    try:
        serialization.load_pem_private_key(_read(path, "key"), password=None)
    except TypeError:  # "Password was not given but private key is encrypted"
        raise _encrypted(path) from None
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidInput(f"the TLS key {path} is not a PEM private key: {_fix(path)}") from None


def _encrypted(path: Path) -> InvalidInput:
    return InvalidInput(
        f"the TLS key {path} is encrypted (a passphrase): the server needs it without one "
        "(e.g. `openssl pkey -in KEY -out key.pem`)"
    )


def _no_passphrase() -> bytes:
    raise _Encrypted
