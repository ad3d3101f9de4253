"""Names of users, groups and machines, labels, and message targets.

Machine and group names end up in hosts files (``IP name name.GROUP``), so they follow
DNS label rules (RFC 1123): lowercase letters, digits and inner hyphens, 1-63 chars.
A new group or machine is never named as a hosts file already gives a meaning
(:func:`check_new_name`): a machine ``localhost`` would make every peer's ``localhost``
resolve to it too, and a machine ``1234`` is read as an address, never looked up.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import Forbidden, InvalidInput, NotFound

__all__ = [
    "MASTER_KV_PREFIX",
    "MAX_AUDIT_ACTIONS",
    "Target",
    "audit_actions",
    "check_all_alone",
    "check_kv_key",
    "check_label",
    "check_machine_may_write",
    "check_message_type",
    "check_name",
    "check_new_name",
    "expired_advice",
    "group_expired",
    "kv_wait_timed_out",
    "listed",
    "parse_labels",
    "parse_target",
    "reserved_name",
    "scenario_of",
    "user_message_type",
]

# Checked with fullmatch(): "$" alone also matches before a trailing newline ("web\n").
_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9_.-]{0,63}$")
_USER_TYPE = re.compile(r"^user\.[A-Za-z0-9_.-]{1,64}$")
_KV_KEY = re.compile(r"^[A-Za-z0-9_.\-/]{1,128}$")


# The names systems' own hosts files give (Debian: localhost, ip6-localhost,
# ip6-loopback, ip6-allnodes, ip6-allrouters...; Red Hat: localhost4, localhost6; macOS:
# broadcasthost), as a whole label, and any ``ip6-`` name (Debian adds more over time).
_SYSTEM_NAME = re.compile(r"localhost[46]?|ip6-[a-z0-9-]*|broadcasthost")
# A label the resolver reads as an IPv4 number (inet_aton: 1234 is 0.0.4.210, 0x1f is
# 0.0.0.31), so it is never looked up in a hosts file.
_NUMERIC = re.compile(r"[0-9]+|0x[0-9a-f]+")


def reserved_name(label: str, *, numeric: bool = True) -> str | None:
    """Why ``label`` (one DNS label) may not name a new machine (or, ``numeric`` False, a
    new group) in a hosts file, or ``None`` if it may."""
    if numeric and _NUMERIC.fullmatch(label):
        return (
            "all digits (or 0x and hex digits) is read as an IPv4 address, "
            "so no hosts file could map it to a machine"
        )
    if _SYSTEM_NAME.fullmatch(label):
        return (
            "it would shadow a system name in every peer's hosts file (localhost, "
            "localhost4, localhost6, ip6-*, broadcasthost are the system's own)"
        )
    return None


def check_name(value: object, what: str = "name") -> str:
    """Return ``value`` if it is a valid group/machine/user name, else raise InvalidInput."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidInput(
            f"invalid {what} {value!r}: use 1-63 lowercase letters, digits and inner hyphens",
            field=what,
        )
    return value


#: Names a machine may not have, whatever a hosts file makes of them: they already mean
#: something where machines are named.
_NOT_A_MACHINE = {
    "master": (
        "it names the operator where machines are named (`crc agent emit --to master`, "
        "a message `from` master): peers could not reach the machine, and it would pass "
        "for the operator"
    ),
    "all": "`--to all` means every machine, so this one could never be named alone",
}


def check_new_name(value: object, what: str) -> str:
    """``check_name`` for the name of a group (or scenario) or machine being made: also
    never a :func:`reserved_name` (all digits is refused for a machine only: a group's
    name is only ever looked up as ``machine.GROUP``), and a machine never ``master``
    or ``all``. Names already made are not checked so: a group an older server made
    stays one its user can name and delete."""
    name = check_name(value, what)
    machine = what.startswith("machine")
    why = reserved_name(name, numeric=machine) or (_NOT_A_MACHINE.get(name) if machine else None)
    if why is not None:
        raise InvalidInput(f"invalid {what} {name!r}: {why}", field=what)
    return name


def check_kv_key(key: object) -> str:
    """Return ``key`` if it is a key of a group's kv store, else raise InvalidInput:
    1-128 letters, digits, '_', '.', '-' and '/', with no empty, '.' or '..' part
    between slashes. A key is a URL's path (``/v1/groups/G/kv/KEY``), and a client
    resolves such parts before sending (RFC 3986 5.2.4): 'a/../b' would name 'b'."""
    if (
        not isinstance(key, str)
        or not _KV_KEY.fullmatch(key)
        or any(part in ("", ".", "..") for part in key.split("/"))
    ):
        raise InvalidInput(
            f"invalid key {key!r}: 1-128 letters, digits, '_', '.', '-', '/' (no empty, "
            "'.' or '..' part between slashes)",
            field="key",
        )
    return key


#: Keys the master's tools keep in a group's store (``crc up``'s record of its steps):
#: machines read them, and may not write them (one could make `crc up` skip a step).
MASTER_KV_PREFIX = "crc."


def check_machine_may_write(key: str) -> None:
    """Forbidden for a key under ``MASTER_KV_PREFIX``, written by a machine."""
    if key.startswith(MASTER_KV_PREFIX):
        raise Forbidden(
            f"key {key!r}: keys starting with {MASTER_KV_PREFIX!r} are the master's "
            "(`crc up` keeps its record there); a machine may read them, not write them"
        )


def group_expired(name: str, scenario: str | None) -> NotFound:
    """A group whose TTL passed: its machines are revoked, nothing can be sent to them.
    ``scenario``: the scenario whose `crc up` made it (``scenario_of``): `crc down`
    destroys its machines too (`crc group delete` refuses such a group); None: no `crc
    up` made it, `crc group delete` removes it."""
    todo = f"crc down --group {name}" if scenario is not None else f"crc group delete {name}"
    return NotFound(
        f"group {name!r} has expired (its TTL): its machines are revoked; run `{todo}`",
        field="group",
    )


def scenario_of(settings: Mapping[str, object]) -> str | None:
    """The scenario whose `crc up` made a group (its ``crc_up`` setting), or ``None``."""
    mine = settings.get("crc_up")
    name = mine.get("scenario") if isinstance(mine, Mapping) else None
    return name if isinstance(name, str) else None


def expired_advice(group: str, scenario: str | None) -> str:
    """What to do with a group whose TTL passed (no teardown by the server armed): `crc
    down` destroys what a `crc up` made; crc never made the machines of another group."""
    if scenario is not None:
        return "its machines still exist at the provider: run `crc down`"
    return (
        "its machines are not destroyed (no `crc up` made them): "
        f"`crc group delete {group}` removes the group"
    )


def listed(value: object, what: str) -> list[Any]:
    """``value`` (a list, a tuple, a set...) as a list, else InvalidInput: a string
    would be taken one character at a time ("ab": machines a and b)."""
    if isinstance(value, (str, bytes, bytearray)) or not isinstance(value, Iterable):
        raise InvalidInput(
            f"invalid {what}: a list, not {type(value).__name__} {_short_repr(value)}",
            field=what,
        )
    return list(value)


def _short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def kv_wait_timed_out(key: str, wait: float, newer_than: int) -> str:
    """What a key/value wait that ended empty-handed says: a wait for the key to exist
    (``newer_than`` 0) found none; a wait for a newer version found none above it."""
    if newer_than <= 0:
        return f"key {key!r} was not set within {wait:g} s"
    return f"key {key!r} did not change within {wait:g} s (no version above {newer_than})"


def check_label(key: str, value: str) -> tuple[str, str]:
    """``key=value`` if it is a machine label, else InvalidInput saying what a key and a
    value may hold."""
    if not _LABEL_KEY.fullmatch(key):
        why = "is empty" if not key else "must be 1-63 lowercase letters, digits, _ . -"
        if key and not key[0].isalnum():
            why = "must start with a letter or digit"
        raise InvalidInput(f"invalid label {key}={value!r}: the key {why}", field="labels")
    if not _LABEL_VALUE.fullmatch(value):
        raise InvalidInput(
            f"invalid label {key}={value!r}: the value must be 0-63 letters, digits, _ . -",
            field="labels",
        )
    return key, value


def _label_pairs(text: str) -> Iterator[tuple[str, str]]:
    """The checked KEY=VALUE pairs of ``"role=db, tier=1,"``, in order."""
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise InvalidInput(f"invalid label {part!r}: expected KEY=VALUE", field="labels")
        yield check_label(key, value)


def parse_labels(text: str) -> dict[str, str]:
    """``"role=db,tier=1"`` -> ``{"role": "db", "tier": "1"}``."""
    return dict(_label_pairs(text))


def check_message_type(value: object) -> str:
    """User messages are namespaced ``user.<anything>``; system types are not for users."""
    if not isinstance(value, str) or not _USER_TYPE.fullmatch(value):
        raise InvalidInput(
            f"invalid message type {value!r}: user messages are named user.NAME "
            "(letters, digits, '_', '.', '-')",
            field="type",
        )
    return value


def user_message_type(value: str) -> str:
    """The data message type a master names as ``NAME`` or ``user.NAME``, as sent and
    received: ``user.NAME``. InvalidInput, saying what was typed, for an empty name (``""``
    or ``user.``) or one no machine can send. The one rule of the commands that send
    such a message and those that wait for one."""
    if value in ("", "user."):  # not "user.": a name the caller never typed
        raise InvalidInput(
            "invalid message type: empty; give the message's NAME (or user.NAME)", field="type"
        )
    full = value if value.startswith("user.") else "user." + value
    if not _USER_TYPE.fullmatch(full):
        raise InvalidInput(
            f"invalid message type {value!r}: give NAME or user.NAME, NAME of 1 to 64 "
            "letters, digits, '_', '.', '-'",
            field="type",
        )
    return full


@dataclass(frozen=True)
class Target:
    """Which machines of a group a command or message goes to."""

    all: bool = False
    names: tuple[str, ...] = ()
    selector: tuple[tuple[str, str], ...] = ()

    def matches(self, name: str, labels: Mapping[str, str]) -> bool:
        if self.all:
            return True
        if self.names:
            return name in self.names
        return all(labels.get(k) == v for k, v in self.selector)

    def choose(
        self, group: str, machines: Mapping[str, Mapping[str, str]], hint: str = ""
    ) -> list[str]:
        """The names of ``machines`` (name -> labels: those of group ``group`` that can
        be sent to) this target names, in their order; NotFound naming the unknown
        machines, or saying that it matched none (``hint`` ends either message)."""
        if self.names:
            unknown = [n for n in self.names if n not in machines]
            if unknown:
                raise NotFound(
                    f"no machine {', '.join(map(repr, unknown))} in group {group!r}{hint}",
                    field="to",
                )
        chosen = [name for name, labels in machines.items() if self.matches(name, labels)]
        if not chosen:
            # Not found, like an unknown name: one exit code (4) for "no such target".
            raise NotFound(
                f"target {str(self)!r} matches no machine of group {group!r}{hint}", field="to"
            )
        return chosen

    def __str__(self) -> str:
        if self.all:
            return "all"
        if self.names:
            return ",".join(self.names)
        return ",".join(f"{k}={v}" for k, v in self.selector)


def _parse_selector(text: str) -> tuple[tuple[str, str], ...]:
    """``"tier=1,role=db"`` -> ``(("role", "db"), ("tier", "1"))``. A machine matches
    when it has every pair, so each key appears once: ``role=db,role=web`` (no machine
    has both) is refused rather than read as one of them."""
    pairs: dict[str, str] = {}
    for key, value in _label_pairs(text):
        if key in pairs:
            raise InvalidInput(
                f"selector {text!r} names label {key} twice: a selector matches machines "
                "that have every KEY=VALUE it lists",
                field="to",
            )
        pairs[key] = value
    return tuple(sorted(pairs.items()))


def check_all_alone(text: str) -> str:
    """``text`` (a ``--to``) unless it lists ``all`` (or ``*``) beside something else:
    ``all`` names every machine and stands alone, so ``all,a`` is refused rather than
    read as a list naming a machine ``all``."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) > 1 and any(p in ("all", "*") for p in parts):
        raise InvalidInput(
            f"{text[:80]!r}: `all` means every machine and stands alone; give `all`, or "
            "the machines' names (a,b), or KEY=VALUE",
            field="to",
        )
    return text


def parse_target(text: object) -> Target:
    """``all`` / ``*`` / ``a,b`` / ``role=db[,tier=1]``: comma-joined KEY=VALUE pairs
    select the machines that have all of them, each key named once."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput(
            "missing target: give a machine name, a comma list, KEY=VALUE or all", field="to"
        )
    text = check_all_alone(text.strip())
    if text in ("all", "*"):
        return Target(all=True)
    if "=" in text:
        return Target(selector=_parse_selector(text))
    names = tuple(dict.fromkeys(check_name(p.strip(), "machine") for p in text.split(",")))
    return Target(names=names)


#: An audit action (``kv.set``), or a prefix of actions ending in a dot (``kv.``): what
#: ``crc audit --action`` and ``GET /v1/audit?action=`` take, at most
#: ``MAX_AUDIT_ACTIONS`` of them.
_AUDIT_ACTION = re.compile(r"[a-z][a-z0-9_\-]*(\.[a-z0-9_\-]+)*\.?")
MAX_AUDIT_ACTIONS = 20
MAX_AUDIT_ACTION_CHARS = 64


def audit_actions(parts: Iterable[str]) -> list[str]:
    """The audit actions ``parts`` (each one action or prefix), checked and without
    repeats; InvalidInput (``field="action"``) for an empty, overlong or malformed one,
    or too many. The SDK and the server check them alike."""
    out: list[str] = []
    for part in parts:
        if not part:
            raise InvalidInput(
                "empty action: give an audit action (kv.set) or a prefix (kv.)", field="action"
            )
        if len(part) > MAX_AUDIT_ACTION_CHARS:
            raise InvalidInput(
                f"invalid action: at most {MAX_AUDIT_ACTION_CHARS} characters", field="action"
            )
        if not _AUDIT_ACTION.fullmatch(part):
            raise InvalidInput(
                f"invalid action {part!r}: lowercase letters, digits, _ - and dots, like "
                "kv.set, or a prefix ending in a dot, like kv.",
                field="action",
            )
        if part not in out:
            out.append(part)
    if len(out) > MAX_AUDIT_ACTIONS:
        raise InvalidInput(f"too many actions: at most {MAX_AUDIT_ACTIONS}", field="action")
    return out
