"""The ``crc`` command's entry point. Ctrl-C while Python loads crc's modules (its first
tenth of a second) ends it as a Ctrl-C later does, with a line and exit 130, not with a
traceback of the import it cut short."""

from __future__ import annotations

import sys


def interruption(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C behind ``exc``: ``exc`` itself, or the cause Python gave it where it
    wraps what is raised. Python 3.11 raises a RuntimeError *from* the KeyboardInterrupt
    when the Ctrl-C lands in a class's ``__set_name__`` (a ``cached_property`` of
    ``ipaddress``, loaded with a command's module)."""
    for _ in range(8):  # a cause chain is short; a cycle must not hang crc
        if isinstance(exc, KeyboardInterrupt):
            return exc
        if exc.__cause__ is None:
            return None
        exc = exc.__cause__
    return None


def main() -> None:
    try:
        from .main import main as run
    except (KeyboardInterrupt, RuntimeError) as exc:
        if interruption(exc) is None:
            raise
        sys.stderr.write("crc: interrupted\n")
        raise SystemExit(130) from None
    run()
