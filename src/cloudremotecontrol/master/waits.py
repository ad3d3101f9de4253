"""The rules of the SDK's waits, without I/O: both clients (sync and asyncio) feed them
events and act on what they decide.

**Which messages a message wait counts** (one rule for ``crc wait --message``,
``Client.wait_message`` and a scenario's ``wait: {message: TYPE}`` step): from each
machine, a matching message sent after the last command started on that machine
(``crc run``, a scenario's run or script step) - or at any time since the group exists
if no command ran there yet. So the message a provisioning command ends with counts
even when it arrived before the wait began, while one left over from an earlier run of
that command does not. With an explicit cursor (``--since``, ``since=``) only messages
after that cursor count, from every machine; each message carries its cursor, so a
script can wait for the next one with ``since=message.cursor``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import InvalidInput, NotFound, Unavailable
from ..protocol.limits import MAX_TIMEOUT_SECONDS
from ..protocol.names import check_message_type, listed
from .types import Message

__all__ = ["FLOOR_TYPES", "MessageWait", "ReadyWait", "check_timeout", "user_type"]


def check_timeout(value: object, name: str = "timeout", given: str | None = None) -> float:
    """``value`` as the seconds a wait may last (``Client.wait_ready``, ``wait_message``,
    ``crc wait --timeout``): up to a week, the most ``crc run --timeout`` takes; 0 looks
    once and does not wait, and so does a negative number (a deadline already past, as
    ``deadline - time.time()`` gives). Else InvalidInput naming ``name``, before
    anything is sent: ``nan`` passes every comparison with a deadline (a wait for ever),
    ``inf`` or ``1e30`` are a typo, not a wait (and no timer of the platform holds them).
    ``given``: the text it was read from (``--timeout 1e30``), quoted."""
    shown = (repr(value) if given is None else repr(given))[:40]
    seconds = math.nan
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float (10**400): as inf
            seconds = math.inf
    if not math.isfinite(seconds):
        raise InvalidInput(
            f"invalid duration {shown}: {name} must be a number of seconds up to "
            f"{MAX_TIMEOUT_SECONDS} (a week)",
            field=name,
        )
    if seconds > MAX_TIMEOUT_SECONDS:
        raise InvalidInput(f"invalid duration {shown}: {name} is at most 7d (a week)", field=name)
    return max(seconds, 0.0)


#: The event types the message rule reads before waiting (the commands that started).
FLOOR_TYPES = ("job.created",)


def user_type(type_: str) -> str:
    """``success`` -> ``user.success`` (data messages are always ``user.*``)."""
    return type_ if type_.startswith("user.") else "user." + type_


class MessageWait:
    """Waits for message ``type_`` from ``senders`` (None: from any machine, the first
    one wins). Feed it the ``job.created`` events up to ``cursor`` (``floor``), then the
    ``message`` events after ``start`` (``feed``) until ``done``."""

    def __init__(
        self, type_: str, senders: Iterable[str] | None = None, since: int | None = None
    ) -> None:
        # A type no machine can send would be waited for in vain: refused at once.
        self.type = check_message_type(user_type(type_))
        # A string is no list of senders (its characters are none).
        self.senders = set(listed(senders, "senders")) if senders is not None else None
        self.since = since
        self._floors: dict[str, int] = {}
        self.found: dict[str, Message] = {}

    def check_senders(self, group: Mapping[str, Any]) -> None:
        """NotFound if a sender waited for is no machine of ``group`` (its view): no
        message of it can ever come."""
        names = {m["name"] for m in group["machines"]}
        unknown = sorted((self.senders or set()) - names)
        if unknown:
            raise NotFound(_no_machine(unknown, str(group["group"])))

    @property
    def needs_floors(self) -> bool:
        """Whether the commands started so far must be read first (no explicit cursor)."""
        return self.since is None

    def floor(self, ev: Mapping[str, Any]) -> None:
        """A ``job.created`` event (before the wait began): a command started there."""
        data = ev.get("data") or {}
        if ev.get("type") != "job.created" or data.get("type") != "job.run":
            return
        for machine in data.get("targets") or []:
            self._floors[str(machine)] = int(ev["cursor"])

    @property
    def start(self) -> int:
        """The cursor to read messages from."""
        if self.since is not None:
            return self.since
        if self.senders is not None:
            return min((self._floors.get(m, 0) for m in self.senders), default=0)
        return 0

    def feed(self, ev: Mapping[str, Any]) -> Message | None:
        """A ``message`` event; the Message if it is one this wait counts."""
        if ev.get("type") != "message":
            return None
        data = ev.get("data") or {}
        sender = data.get("from")
        if data.get("type") != self.type or not isinstance(sender, str):
            return None
        if self.senders is not None and sender not in self.senders:
            return None
        if sender in self.found:
            return None
        floor = self.since if self.since is not None else self._floors.get(sender, 0)
        if int(ev["cursor"]) <= floor:
            return None
        msg = Message.from_event(ev)
        self.found[sender] = msg
        return msg

    @property
    def done(self) -> bool:
        if self.senders is None:
            return bool(self.found)
        return self.senders <= set(self.found)

    @property
    def missing(self) -> list[str]:
        return sorted((self.senders or set()) - set(self.found))

    def timeout_error(self, timeout: float) -> Unavailable:
        who = f" from {', '.join(self.missing)}" if self.missing else ""
        return Unavailable(f"no {self.type} message{who} within {timeout:g} s", code="timeout")


class ReadyWait:
    """Waits until ``machines`` (default: all) of a group are ready. Start it with the
    group's view (``Client.group``), feed it the group's events."""

    def __init__(self, group: Mapping[str, Any], machines: Iterable[str] | None = None) -> None:
        self.group = str(group["group"])
        self.states: dict[str, str] = {m["name"]: m["state"] for m in group["machines"]}
        self.progress: dict[str, str] = {}
        for m in group["machines"]:
            prog = m.get("progress") or {}
            if prog.get("text"):
                self.progress[m["name"]] = _progress_text(prog)
        wanted = set(self.states)
        if machines is not None:
            chosen = set(listed(machines, "machines"))
            unknown = chosen - wanted
            if unknown:
                raise NotFound(_no_machine(sorted(unknown), self.group))
            wanted = chosen
        self.wanted = wanted

    def feed(self, ev: Mapping[str, Any]) -> bool:
        """Apply one event; True if it concerned a machine waited for."""
        m = ev.get("machine")
        if m not in self.wanted:
            return False
        if ev["type"] == "machine.state":
            self.states[m] = ev["data"]["state"]
            return True
        if ev["type"] == "progress":
            self.progress[m] = _progress_text(ev["data"])
            return True
        return False

    @property
    def done(self) -> bool:
        """True when every wanted machine is ready (raises if one was revoked)."""
        revoked = sorted(m for m in self.wanted if self.states[m] == "revoked")
        if revoked:
            raise _revoked(revoked, self.group)
        return all(self.states[m] == "ready" for m in self.wanted)

    @property
    def pending(self) -> list[str]:
        return sorted(m for m in self.wanted if self.states[m] != "ready")

    def timeout_error(self, timeout: float) -> Unavailable:
        return Unavailable(
            f"timed out after {timeout:g} s: not ready: {', '.join(self.pending)}",
            code="timeout",
        )


def _revoked(names: list[str], group: str) -> InvalidInput:
    """The end of a wait for a machine that is revoked: a terminal state (docs/sdk.md:
    ``InvalidInput``), said with the machines and a code of its own, ``machine_revoked``."""
    listed = ", ".join(repr(n) for n in names)
    if len(names) == 1:
        what = f"machine {listed} of group {group!r} is revoked (its credential is gone): it"
    else:
        what = f"machines {listed} of group {group!r} are revoked (their credentials are gone)"
        what += ": they"
    return InvalidInput(
        f"{what} can never be ready; wait for the other machines only, or make the group again",
        code="machine_revoked",
        machines=names,
    )


def _no_machine(names: list[str], group: str) -> str:
    """As the server says it of a job's unknown target."""
    listed = ", ".join(repr(n) for n in names)
    return f"no machine {listed} in group {group!r}"


def _progress_text(prog: Mapping[str, Any]) -> str:
    text = str(prog.get("text") or "")
    pct = prog.get("percent")
    if isinstance(pct, (int, float)) and not isinstance(pct, bool):
        return f"{pct:.0f}% {text}"
    return text
