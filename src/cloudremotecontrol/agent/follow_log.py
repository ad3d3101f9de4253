"""Stream a provisioning log (e.g. /var/log/cloud-init-output.log) as progress lines.

The file is read from where the agent last stopped (the offset is kept in the state
dir, so a restart neither repeats nor loses lines), polled twice a second, and follows
truncation. A burst is capped per tick: the newest lines are sent and the number of
skipped ones is said, so a chatty installer cannot flood the channel.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

__all__ = ["follow_log"]

POLL_SECONDS = 0.5
MAX_LINES_PER_TICK = 20
MAX_LINE = 1000


async def follow_log(
    path: str,
    emit: Callable[[str], Awaitable[None]],
    get_offset: Callable[[], int],
    set_offset: Callable[[int], None],
) -> None:
    """Run until cancelled; ``emit(text)`` reports one progress line."""
    offset = get_offset()
    partial = b""
    while True:
        try:
            size = os.path.getsize(path)
        except OSError:
            size = None
        if size is not None:
            if size < offset:  # truncated or replaced: start over
                offset, partial = 0, b""
            if size > offset:
                with open(path, "rb") as fh:
                    fh.seek(offset)
                    data = fh.read(min(size - offset, 1 << 20))
                offset += len(data)
                lines = (partial + data).split(b"\n")
                partial = lines.pop()
                texts = [
                    ln.decode(errors="replace").rstrip("\r")[:MAX_LINE]
                    for ln in lines
                    if ln.strip()
                ]
                if len(texts) > MAX_LINES_PER_TICK:
                    skipped = len(texts) - MAX_LINES_PER_TICK
                    texts = [f"({skipped} log lines skipped)", *texts[-MAX_LINES_PER_TICK:]]
                for text in texts:
                    await emit(text)
                set_offset(offset - len(partial))
        await asyncio.sleep(POLL_SECONDS)
