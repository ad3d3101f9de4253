"""The ``crc`` command's entry point. Ctrl-C while Python loads crc's modules (its first
tenth of a second) ends it as a Ctrl-C later does, with a line and exit 130, not with a
traceback of the import it cut short."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from .main import main as run
    except KeyboardInterrupt:
        sys.stderr.write("crc: interrupted\n")
        raise SystemExit(130) from None
    run()
