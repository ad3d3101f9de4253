"""Which ``crc up`` is working on a group: a lease on the server, for runs from other
configuration directories or computers (the local run lock, ``runlock.py``, keeps apart
only those that share this computer's configuration directory).

The lease is the group's key/value entry ``crc.up/lease``::

    {"state": "held" | "released" | "none", "holder": ID, "run_id": RUN, "who": TEXT,
     "state_file": PATH, "period": SECONDS, "as_of": SERVER_TIME | null}

``holder`` is kept in the local state file (``state.py``): the same configuration
directory is the same holder, so a `crc up` resumed there after Ctrl-C or a crash goes on
at once, whatever lease its predecessor left. The running `crc up` writes the entry again
every ``period`` seconds; one not renewed for ``EXPIRY_FACTOR`` periods is stale (its `crc
up` was killed) and the next `crc up` takes the group over.

Every time is the server's (the ``updated`` time of the entry), never this computer's
clock. The key/value store has no compare-and-set, but each write returns its version: a
`crc up` that read version ``v`` and wrote ``v + 1`` knows nobody wrote between. So
taking the lease is: read it, write one's own, read it back (the server's time now), then
judge — and if another run holds it after all, put its entry back as it was (``as_of``
keeps the time of its own last write, so putting it back does not prolong it) and refuse.
A run that holds the lease and finds another's entry written within its own lease's life
writes its own again; one written after that means the lease was taken over (this run
stood still longer than the lease lasts), said once.

A group that has no lease entry yet (its `crc up` made it a moment ago and is about to
write one) counts as held by the holder that made it (``settings.crc_up.holder``) for a
lease's life from the group's creation.

``CRC_UP_LEASE_SECONDS`` sets the renewal period (default ``DEFAULT_PERIOD``; tests set a
short one). ``crc down`` does not take the lease: it is the emergency stop, and says so
when a live lease of another `crc up` is there (``note_for_down``).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from ...errors import Conflict, CrcError, NotFound
from ..client import Client

__all__ = [
    "DEFAULT_PERIOD",
    "EXPIRY_FACTOR",
    "LEASE_KEY",
    "PERIOD_ENV",
    "Lease",
    "LeaseHeld",
    "lease_period",
    "new_holder",
    "note_for_down",
]

LEASE_KEY = "crc.up/lease"
PERIOD_ENV = "CRC_UP_LEASE_SECONDS"
DEFAULT_PERIOD = 20.0
EXPIRY_FACTOR = 3


class LeaseHeld(Conflict):
    """Another `crc up` (another configuration directory or computer) holds the group."""


def lease_period() -> float:
    """The renewal period: ``CRC_UP_LEASE_SECONDS`` if set to a positive number."""
    try:
        value = float(os.environ.get(PERIOD_ENV, ""))
    except ValueError:
        return DEFAULT_PERIOD
    return value if 0 < value < 1e6 else DEFAULT_PERIOD


def new_holder() -> str:
    return uuid.uuid4().hex


def _expiry(period: object) -> float:
    p = float(period) if isinstance(period, (int, float)) and period > 0 else DEFAULT_PERIOD
    return p * EXPIRY_FACTOR


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def _who(record: dict[str, Any]) -> str:
    who = str(record.get("who") or "crc up")
    where = record.get("state_file")
    return f"{who}, keys in {where}" if where else who


class Lease:
    """The lease of ``group`` for one `crc up` (``holder``, ``run_id``)."""

    def __init__(
        self,
        new_client: Callable[[], Client],
        group: str,
        holder: str,
        run_id: str,
        state_file: str,
        note: Callable[[str], None],
        period: float | None = None,
    ) -> None:
        self.new_client = new_client
        self.group = group
        self.holder = holder
        self.run_id = run_id
        self.state_file = state_file
        self.note = note
        self.period = lease_period() if period is None else period
        self.expiry = self.period * EXPIRY_FACTOR
        self.held = False
        self.lost = False
        self._mine_at: float | None = None  # server time of this run's last write
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Client | None = None

    def _record(self, state: str = "held") -> dict[str, Any]:
        return {
            "state": state,
            "holder": self.holder,
            "run_id": self.run_id,
            "who": f"crc up, pid {os.getpid()} on {socket.gethostname()}",
            "state_file": self.state_file,
            "period": self.period,
            "as_of": None,
        }

    def _write(self, c: Client, record: dict[str, Any]) -> tuple[int, float | None]:
        """Write ``record``; its version and the server's time it was written at (read
        back; None if another write came first)."""
        version = int(c.kv_set(self.group, LEASE_KEY, record)["version"])
        back = c.kv_get(self.group, LEASE_KEY)
        at = _float(back.get("updated"))
        return version, at if int(back["version"]) == version else None

    # -- taking it ----------------------------------------------------------------------
    def hold_new(self, client: Client) -> None:
        """Take the lease of a group this run has just made (nobody else may hold it)."""
        _, at = self._write(client, self._record())
        self._mine_at = at
        self._started()

    def acquire(self, client: Client, group: dict[str, Any]) -> None:
        """Take the lease of an existing group, or raise ``LeaseHeld``."""
        try:
            cur = client.kv_get(self.group, LEASE_KEY)
        except NotFound:
            cur = None
        before = int(cur["version"]) if cur else 0
        prev = cur["value"] if cur and isinstance(cur.get("value"), dict) else None
        version, at = self._write(client, self._record())
        now = at
        if now is None:  # another write right after this one
            back = client.kv_get(self.group, LEASE_KEY)
            now = _float(back.get("updated"))
        if version != before + 1:
            # Another `crc up` wrote between: it is taking the group (or renewing).
            raise self._refused(None, None, self.expiry)
        other = self._live_holder(prev, cur, group, now)
        if other is not None:
            self._put_back(client, prev, cur)
            raise self._refused(*other)
        self._mine_at = at
        self._started()

    def _live_holder(
        self,
        prev: dict[str, Any] | None,
        cur: dict[str, Any] | None,
        group: dict[str, Any],
        now: float | None,
    ) -> tuple[dict[str, Any], float | None, float] | None:
        """The record of another holder whose lease is live at server time ``now``, how
        long ago it was renewed and when it expires; None when this run may take it."""
        state = prev.get("state") if prev else None
        if prev is not None and cur is not None and state == "held":
            if prev.get("holder") == self.holder:
                return None  # this configuration directory's own (Ctrl-C, a crash)
            since = _float(prev.get("as_of")) or _float(cur.get("updated"))
            expiry = _expiry(prev.get("period"))
            if now is None or since is None or now - since < expiry:
                return prev, (None if now is None or since is None else now - since), expiry
            return None  # stale: its `crc up` was killed
        if state == "released":
            return None
        # No lease written yet: the holder that made the group, for a lease's life.
        made = (group.get("settings") or {}).get("crc_up")
        made = made if isinstance(made, dict) else {}
        maker = made.get("holder")
        created = _float(group.get("created"))
        if not maker or maker == self.holder:
            return None
        expiry = _expiry(made.get("lease_period"))
        if now is None or created is None or now - created < expiry:
            return {"who": "the `crc up` that made the group"}, None, expiry
        return None

    def _put_back(
        self, client: Client, prev: dict[str, Any] | None, cur: dict[str, Any] | None
    ) -> None:
        if prev is None or cur is None:
            record: dict[str, Any] = {"state": "none"}
        else:
            record = dict(prev)
            record["as_of"] = _float(prev.get("as_of")) or _float(cur.get("updated"))
        try:
            client.kv_set(self.group, LEASE_KEY, record)
        except CrcError:  # the holder writes its own again at its next renewal
            pass

    def _refused(
        self, record: dict[str, Any] | None, ago: float | None, expiry: float
    ) -> LeaseHeld:
        who = _who(record) if record else "another `crc up`"
        when = f"; it renewed its lease {ago:.0f}s ago" if ago is not None else ""
        return LeaseHeld(
            f"another `crc up` (from another configuration directory or computer) is "
            f"working on group {self.group} ({who}{when}): wait for it to end, or run "
            f"`crc down` / `crc up` from the configuration directory that holds its keys; "
            f"a `crc up` that was killed is taken over once its lease expires (after "
            f"{expiry:g}s without renewal)",
            group=self.group,
        )

    # -- keeping it ---------------------------------------------------------------------
    def _started(self) -> None:
        self.held = True
        if self._thread is not None:  # the group made again in place of one it held
            return
        self._client = self.new_client()
        self._thread = threading.Thread(target=self._renew_loop, name="crc-up-lease", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self._renew()
            except Exception:  # noqa: BLE001,S112 -- a server blip: renewed next time
                continue
            if self.lost:
                return

    def _renew(self) -> None:
        c = self._client
        if c is None:
            return
        try:
            cur = c.kv_get(self.group, LEASE_KEY)
        except NotFound:
            cur = None
        value = cur["value"] if cur and isinstance(cur.get("value"), dict) else {}
        if cur and value.get("state") == "held" and value.get("holder") != self.holder:
            since = _float(value.get("as_of")) or _float(cur.get("updated"))
            if self._mine_at is not None and since is not None:
                if since - self._mine_at > self.expiry:
                    self.lost = True
                    self.note(
                        f"warning: another `crc up` took group {self.group} over "
                        f"({_who(value)}): this one stood still longer than its lease "
                        f"lasts ({self.expiry:g}s); stop it (Ctrl-C)"
                    )
                    return
        _, at = self._write(c, self._record())
        if at is not None:
            self._mine_at = at

    def release(self) -> None:
        """Stop renewing; say the group is free (if the entry is still this run's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        c, self._client = self._client, None
        if c is None:
            return
        try:
            if self.held and not self.lost:
                cur = c.kv_get(self.group, LEASE_KEY)
                value = cur.get("value")
                if isinstance(value, dict) and value.get("holder") == self.holder:
                    c.kv_set(self.group, LEASE_KEY, self._record("released"))
        except CrcError:  # group deleted, server gone: the lease expires by itself
            pass
        finally:
            self.held = False
            c.close()


def note_for_down(client: Client, group: str, holder: str | None) -> str | None:
    """What `crc down` says when another `crc up` seems to hold the group's lease (its
    entry renewed within its lease's life, by this computer's clock: only a note)."""
    try:
        cur = client.kv_get(group, LEASE_KEY)
    except CrcError:
        return None
    value = cur.get("value")
    if not isinstance(value, dict) or value.get("state") != "held":
        return None
    if holder is not None and value.get("holder") == holder:
        return None
    since = _float(value.get("as_of")) or _float(cur.get("updated"))
    if since is None or time.time() - since > _expiry(value.get("period")):
        return None
    return (
        f"another `crc up` is working on group {group} ({_who(value)}): `crc down` "
        "goes on all the same (it is the emergency stop); that `crc up` then fails"
    )
