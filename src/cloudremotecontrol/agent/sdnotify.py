"""sd_notify(3) without libsystemd: readiness and watchdog pings for ``Type=notify``.

systemd passes ``NOTIFY_SOCKET`` (a Unix datagram socket path; ``@`` means the abstract
namespace) and, with ``WatchdogSec=``, ``WATCHDOG_USEC``. The agent sends ``READY=1``
once scripts can reach it, then ``WATCHDOG=1`` at half the interval from its event loop,
so a hung loop gets it restarted. Without ``NOTIFY_SOCKET`` (no systemd, Windows) all of
this does nothing. The variables are removed from the environment at first use, so jobs
the agent starts cannot speak for it.
"""

from __future__ import annotations

import asyncio
import os
import socket

__all__ = ["notify", "supervise"]

_env: dict[str, str] | None = None


def _settings() -> dict[str, str]:
    global _env
    if _env is None:
        _env = {
            k: v
            for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
            if (v := os.environ.pop(k, None)) is not None
        }
    return _env


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``READY=1``) to systemd; False if there is none to tell."""
    addr = _settings().get("NOTIFY_SOCKET")
    family = getattr(socket, "AF_UNIX", None)
    if not addr or family is None or addr[0] not in "/@":
        return False
    target = "\0" + addr[1:] if addr[0] == "@" else addr
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), target)
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half the timeout), or None if not asked."""
    env = _settings()
    usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
    if not usec or not (usec.isascii() and usec.isdigit()) or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


async def supervise() -> None:
    """Say READY=1 now, then ping the watchdog until cancelled (then say STOPPING=1)."""
    notify("READY=1")
    interval = watchdog_interval()
    try:
        while interval:
            await asyncio.sleep(interval)
            notify("WATCHDOG=1")
        await asyncio.Event().wait()  # nothing to ping: wait for cancellation
    finally:
        notify("STOPPING=1")
