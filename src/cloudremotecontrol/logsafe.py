"""Logs never carry a secret, at any level.

At ``--log-level debug`` the libraries under the server and the agent log what they
send and receive: websockets logs every handshake header (``Authorization: Bearer
crca_...``), uvicorn and httpx log requests. Rather than hoping that no library ever
logs a secret, every record is redacted where it is written: ``RedactingFormatter``
formats the record (message, arguments, traceback) and then replaces

* the secret part of ``crcm_``/``crca_``/``crck_``/``crcs_`` tokens (master, machine,
  enrollment key, dashboard session; the id is kept: it names the row, it is not a
  secret): ``crca_3f2a..._<redacted>``;
* the value of ``Authorization``, ``Proxy-Authorization``, ``Cookie`` and
  ``Set-Cookie`` headers, however they are printed (``Authorization: Bearer x``,
  ``('authorization', 'Bearer x')``, ``b'cookie': b'x'``), and any ``Bearer x`` /
  ``Basic x``;
* values of keys named like ``api_key``, ``token``, ``password``, ``secret``,
  ``credential`` in ``name=value``, ``name: value`` or JSON/dict form, and
  ``VULTR_API_KEY=...``.

``configure`` installs it as the only handler of the root logger (and makes uvicorn's
loggers propagate there), for ``crc server run`` and ``crc agent run``; the Windows
service host uses ``RedactingFormatter`` for its log file.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

__all__ = ["REDACTED", "RedactingFormatter", "configure", "redact"]

REDACTED = "<redacted>"

_TOKEN = re.compile(r"\b(crc[maks]_[A-Za-z0-9]{1,64}_)[A-Za-z0-9_\-]+")
# Header name, then a separator as printed by http.client, websockets, reprs of
# (name, value) tuples and dicts (with or without bytes prefixes and quotes).
_AUTH_HEADER = re.compile(
    r"""(?ix)
    ((?:(?:proxy-)?authorization|(?:set-)?cookie) ['"]? \s* (?: : | , | = ) \s* (?:b?['"])?)
    [^'"\r\n,}\]]+
    """
)
_SCHEME = re.compile(r"(?i)\b(bearer|basic|token)(\s+)[A-Za-z0-9._~+/=\-]+")
_KEYED = re.compile(
    r"""(?ix)
    \b((?:vultr_api_key|api[_-]?key|apikey|access[_-]?token|token|secret|password|passwd
        |credential|enrollment[_-]?key)
       ['"]? \s* (?: = | : ) \s* (?:b?['"])?)
    (?!<redacted>)[^\s'",}\]&]{6,}
    """
)


def redact(text: str) -> str:
    """``text`` with every secret it shows replaced (see the module docstring)."""
    if not text:
        return text
    text = _TOKEN.sub(lambda m: m.group(1) + REDACTED, text)
    text = _AUTH_HEADER.sub(lambda m: m.group(1) + REDACTED, text)
    text = _SCHEME.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    return _KEYED.sub(lambda m: m.group(1) + REDACTED, text)


class RedactingFormatter(logging.Formatter):
    """A ``logging.Formatter`` whose output (traceback included) is ``redact``-ed."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))

    def formatException(self, ei: Any) -> str:
        return redact(super().formatException(ei))


def configure(level: str, fmt: str, stream: Any = None) -> None:
    """One redacting handler on the root logger at ``level``; the loggers of uvicorn
    (which configures its own handlers otherwise) propagate to it."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(RedactingFormatter(fmt))
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True
        lg.disabled = False
        lg.setLevel(logging.NOTSET)  # the root's level (uvicorn.Config may set its own)
