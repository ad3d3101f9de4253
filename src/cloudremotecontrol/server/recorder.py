"""A shell session's recording, in asciinema's v2 format, written to the store in chunks
as the session goes.

The text is kept in memory only until it makes a chunk (``CHUNK`` bytes), the session
ends, or ``FLUSH_SECONDS`` pass: then it is handed to ``sink(n, data, size)`` (one small
write to the database, ops/recordings.py; ``size``: the recording's bytes through this
chunk), one chunk at a time and in order. Writing chunk ``n`` again (a write
interrupted when the server stops) replaces it: it starts with what was written. So what a
session holds is at most about one chunk, whatever its length, and what was recorded
outlives the replica that carried it, up to its last few seconds.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import CrcError

__all__ = ["CHUNK", "FLUSH_SECONDS", "MAX_RECORDING_BYTES", "Recorder", "replay_bytes"]

log = logging.getLogger(__name__)

MAX_RECORDING_BYTES = 64 << 20  # one recording; past it the rest is not recorded
CHUNK = 256 << 10  # a chunk is written once this much is waiting
FLUSH_SECONDS = 5.0  # ... or once it has waited this long
MAX_PENDING = 4 * CHUNK  # the database failing this long: the rest is not recorded

Sink = Callable[[int, bytes, int], Awaitable[None]]


class Recorder:
    """A shell session in asciinema's v2 format (a header line, then one JSON array
    per event: ``[seconds, "o", text]`` output, ``"i"`` input, ``"r"`` resize).

    Bytes that are not UTF-8 are kept as surrogate escapes (``\\udcXX`` in JSON), so
    :func:`replay_bytes` gives back exactly the bytes the terminal sent. The text is
    ASCII (JSON escapes everything else): a chunk boundary never splits a character.

    ``output``, ``input`` and ``resize`` only add to what is waiting; ``flush_due``
    writes a chunk when one is full (the splice awaits it: a session that outruns the
    database waits for it), a timer writes what waited ``FLUSH_SECONDS``, and ``close``
    the rest."""

    def __init__(self, sink: Sink, header: dict[str, Any], record_input: bool) -> None:
        self.sink = sink
        self.start = time.monotonic()
        self.size = 0  # the recording's length so far (the cap counts it)
        self.record_input = record_input
        self.written = 0  # chunks handed to the sink
        self.stored = 0  # their bytes
        self.failed = False  # the sink failed past MAX_PENDING: nothing more is kept
        self._pending: list[str] = []
        self._pending_size = 0
        self._lock = asyncio.Lock()
        self._out = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self._in = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self._line(header)
        self._timer = asyncio.get_running_loop().create_task(self._tick())

    @property
    def pending(self) -> int:
        """Bytes recorded and not written yet (what the session holds in memory)."""
        return self._pending_size

    def _line(self, value: object) -> None:
        if self.size > MAX_RECORDING_BYTES or self.failed:
            return
        text = json.dumps(value) + "\n"
        self.size += len(text)
        self._pending.append(text)
        self._pending_size += len(text)

    def _event(self, kind: str, text: str) -> None:
        if text:
            self._line([round(time.monotonic() - self.start, 6), kind, text])

    def output(self, data: bytes) -> None:
        self._event("o", self._out.decode(data))

    def input(self, data: bytes) -> None:
        if self.record_input:
            self._event("i", self._in.decode(data))

    def resize(self, cols: int, rows: int) -> None:
        self._event("r", f"{cols}x{rows}")

    async def flush_due(self) -> None:
        """Write the full chunks waiting (the rest waits for more, or the timer)."""
        if self._pending_size >= CHUNK:
            await self.flush(full_only=True)

    async def flush(self, full_only: bool = False) -> None:
        """Write what is waiting, as chunks of at most ``CHUNK`` bytes, in order."""
        async with self._lock:
            while self._pending_size >= (CHUNK if full_only else 1) and not self.failed:
                text = "".join(self._pending)
                part, rest = text[:CHUNK], text[CHUNK:]
                # Taken out before the write: what is recorded meanwhile goes after it.
                self._pending = [rest] if rest else []
                self._pending_size = len(rest)
                try:
                    await self.sink(self.written, part.encode("ascii"), self.stored + len(part))
                except BaseException as exc:
                    # Put back (written again next time, whole or not written at all).
                    self._pending.insert(0, part)
                    self._pending_size += len(part)
                    if not isinstance(exc, (CrcError, OSError)):
                        raise
                    if self._pending_size > MAX_PENDING:  # the rest is not recorded
                        self.failed = True
                        self._pending, self._pending_size = [], 0
                        log.warning("recording: the rest is not recorded: %s", exc)
                    return
                self.written += 1
                self.stored += len(part)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            with contextlib.suppress(Exception):
                # Shielded: ``close`` cancels the timer, and then waits for this write.
                await asyncio.shield(self.flush())

    async def close(self) -> None:
        """Write the rest (its last bytes too, had they ended mid-character)."""
        self._timer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._timer
        self._event("o", self._out.decode(b"", final=True))
        await self.flush()


def replay_bytes(cast: str, kind: str = "o") -> bytes:
    """The bytes of a recording's ``kind`` events, exactly as they were sent."""
    out = bytearray()
    for line in cast.splitlines()[1:]:
        event = json.loads(line)
        if isinstance(event, list) and len(event) == 3 and event[1] == kind:
            out += str(event[2]).encode("utf-8", "surrogateescape")
    return bytes(out)
