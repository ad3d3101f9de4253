"""A log file that keeps growing while a test reads it (pushes and pulls of a file
that changes as it is sent)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def growing_log(path: Path, size: int) -> Iterator[Path]:
    """``path`` written with ``size`` bytes, then appended to by a thread (a line of
    log output a hundred times every millisecond) until the block ends."""
    path.write_bytes(b"x" * size)
    stop = threading.Event()

    def write() -> None:
        with open(path, "ab") as fh:
            while not stop.is_set():
                fh.write(b"line of log output\n" * 100)
                fh.flush()
                time.sleep(0.001)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        yield path
    finally:
        stop.set()
        writer.join()
