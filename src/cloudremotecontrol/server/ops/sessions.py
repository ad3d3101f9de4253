"""Shell sessions and forwards in the store: who may open one, and the audit of each.

A stream's bytes are not in the audit or the events: only its opening (``stream.open``)
and its end (``stream.close``: bytes each way, duration, exit code, recording) are
written there. A shell session's recording has tables of its own (ops/recordings.py).
"""

from __future__ import annotations

from typing import Any

from ...errors import Conflict, Forbidden, NotFound
from ..store.base import Tx
from .common import add_event, audit, check_not_expired, dumps, live_group, loads, now

__all__ = [
    "POLICY_KEYS",
    "check_stream",
    "close_cut_streams",
    "close_stream",
    "cut_orphaned_streams",
    "kept_detail",
    "list_sessions",
    "note_stream_bytes",
    "open_stream",
    "renew_lease",
    "request_stream",
    "session_record",
]

#: Group settings that turn a kind of stream off (``crc group create --no-shell``...).
POLICY_KEYS = {"shell": "no_shell", "forward": "no_forward"}


def check_stream(
    tx: Tx, user: dict[str, Any], group: str, machine: str, kind: str, record: bool | None
) -> dict[str, Any]:
    """Check that ``user`` may open a ``kind`` stream to ``machine`` of ``group``.
    Returns the machine's id, state and replica and whether to record."""
    g = live_group(tx, user["user_id"], group)
    check_not_expired(g)
    settings = loads(g["settings"]) or {}
    if settings.get(POLICY_KEYS[kind]):
        raise Forbidden(
            f"group {group!r} was created with --no-{kind}: {kind} streams are off for it",
            code=f"{kind}_disabled",
        )
    m = tx.one("SELECT * FROM machines WHERE group_id = ? AND name = ?", (g["id"], machine))
    if m is None:
        raise NotFound(f"no machine {machine!r} in group {group!r}", field="machine")
    if m["state"] in ("pending", "revoked"):
        raise Conflict(
            f"machine {machine!r} is {m['state']}: it has no agent to open a {kind} on",
            code="machine_offline",
        )
    recording = kind == "shell"
    if record is False:
        if kind == "shell" and settings.get("force_record"):
            raise Forbidden(
                f"group {group!r} records every shell session (--force-record): "
                "--no-record is not allowed",
                code="record_required",
            )
        recording = False
    return {
        "machine_id": m["id"],
        "group_id": g["id"],
        "state": m["state"],
        "connected_by": m["connected_by"],
        "record": recording,
        "record_input": bool(settings.get("record_input")) and recording,
    }


def open_stream(
    tx: Tx,
    user: dict[str, Any],
    group: str,
    group_id: str,
    machine: str,
    detail: dict[str, Any],
    replica: str = "",
) -> None:
    """A stream is asked of a connected machine (audit and event), carried by
    ``replica`` (this server process) until ``close_stream``. Its row among the open
    streams keeps the group's id: a cut is told to that group, not to one created
    later under the same name."""
    full = {"machine": machine, **detail}
    audit(tx, user["user_id"], user["user"], "stream.open", group, full)
    kept = dumps(kept_detail(machine, detail, group_id))
    tx.send(
        "INSERT INTO open_streams (stream, replica, created, user_id, actor, group_name, detail) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (detail["stream"], replica, now(), user["user_id"], user["user"], group, kept),
    )
    add_event(tx, group_id, "stream.opened", {"by": user["user"], **detail}, machine=machine)


def kept_detail(machine: str, detail: dict[str, Any], group_id: str) -> dict[str, Any]:
    """The detail an open stream's row keeps (what its close as cut says)."""
    return {"machine": machine, **detail, _GROUP_ID: group_id}


def note_stream_bytes(
    tx: Tx, stream: str, kept: dict[str, Any], to_machine: int, from_machine: int
) -> None:
    """Keep an open stream's bytes each way so far in its row (``kept``: its
    ``kept_detail``), so that a stream cut by a killed server is closed with them
    rather than with none. Written with each chunk of its recording: a statement per
    chunk, not per message."""
    counted = {**kept, "bytes_to_machine": to_machine, "bytes_from_machine": from_machine}
    tx.send("UPDATE open_streams SET detail = ? WHERE stream = ?", (dumps(counted), stream))


def request_stream(
    tx: Tx, group: str, machine_id: str, machine: str, request: Any
) -> list[tuple[str, int, str]]:
    """Queue a ``stream.request`` for a machine connected to another replica (that one
    delivers it, as any numbered message); returns the delivery."""
    from ...protocol.messages import Envelope
    from .jobs import enqueue

    env = Envelope.of(request, group, "master", machine, None)
    seq, frame = enqueue(tx, {"id": machine_id}, env)
    return [(machine_id, seq, frame)]


def close_stream(
    tx: Tx, user: dict[str, Any], group: str, group_id: str, machine: str, detail: dict[str, Any]
) -> None:
    """The end of a stream: bytes each way, duration, exit code (audit and event)."""
    tx.send("DELETE FROM open_streams WHERE stream = ?", (detail.get("stream"),))
    audit(tx, user["user_id"], user["user"], "stream.close", group, {"machine": machine, **detail})
    add_event(tx, group_id, "stream.closed", {"by": user["user"], **detail}, machine=machine)


#: How many streams of dead replicas one sweep closes (the next sweep goes on).
CUT_SWEEP = 1000


def close_cut_streams(tx: Tx) -> int:
    """Audit the end of the streams opened and never closed: a server killed (``kill
    -9``, a power loss) writes no ``stream.close``, so ``crc sessions list`` (which
    lists closes) missed them, recording and all. Run at start by a server alone on its
    database (SQLite), when no stream of its can be open any more: every stream still
    listed as open (``open_streams``) was cut. Each gets a close marked ``"cut": true``,
    its duration through its recording's last chunk (else 0) and its bytes each way as
    of that chunk (``note_stream_bytes``); returns how many. Streams
    opened before the open ones were listed (schema 12) are left as they are: their
    audit cannot tell a cut stream from one that was never dialled."""
    rows = tx.all("SELECT * FROM open_streams ORDER BY created")
    tx.execute("DELETE FROM open_streams")  # this server's only: it is alone
    for r in rows:
        _write_cut(tx, r)
    return len(rows)


#: A replica renews its lease this often; one that has not for ``LEASE_SECONDS`` is
#: taken for dead (killed), and the streams it carried are closed as cut.
RENEW_SECONDS = 10.0
LEASE_SECONDS = 60.0


def renew_lease(tx: Tx, replica: str) -> None:
    """``replica`` (a server process on PostgreSQL) is alive, now."""
    tx.execute(
        "INSERT INTO replicas (id, seen) VALUES (?, ?) "
        "ON CONFLICT (id) DO UPDATE SET seen = excluded.seen",
        (replica, now()),
    )


def cut_orphaned_streams(tx: Tx, lease: float = LEASE_SECONDS) -> int:
    """Close as cut the streams whose replica's lease expired (it was killed: it wrote
    no end), opened more than ``lease`` seconds ago; forget expired leases. A stream
    of a replica that renews its lease is never touched. Safe from several replicas at
    once: a stream is closed by whoever deletes its row (a concurrent delete is a
    conflict, retried, that finds it gone). Returns how many."""
    before = now() - lease
    rows = tx.all(
        "SELECT o.* FROM open_streams o LEFT JOIN replicas r ON r.id = o.replica "
        "WHERE o.created < ? AND (r.seen IS NULL OR r.seen < ?) ORDER BY o.created LIMIT ?",
        (before, before, CUT_SWEEP),
    )
    done = 0
    for r in rows:
        if tx.execute("DELETE FROM open_streams WHERE stream = ?", (r["stream"],)) == 1:
            _write_cut(tx, r)
            done += 1
    tx.execute("DELETE FROM replicas WHERE seen < ?", (before,))
    return done


#: The key of the group's id in an ``open_streams`` row's detail (not audited).
_GROUP_ID = "group_id"


def _write_cut(tx: Tx, r: dict[str, Any]) -> None:
    """The close of a stream whose server was killed, from its ``open_streams`` row:
    marked ``"cut": true``, its duration through its recording's last chunk (else 0),
    its bytes each way as of that chunk (``note_stream_bytes``). Its event goes to the
    group it was opened in, if that group still exists."""
    detail = loads(r["detail"]) or {}
    group_id = detail.pop(_GROUP_ID, None)
    stream = detail.get("stream")
    rec = tx.one("SELECT size, updated FROM recordings WHERE stream = ?", (stream,))
    started = float(r["created"])
    last = float(rec["updated"]) if rec is not None else started
    summary = {
        **{k: v for k, v in detail.items() if k != "machine"},
        "started": started,
        "duration": round(max(0.0, last - started), 3),
        "error": "cut: the server stopped before the session ended",
        "cut": True,
        "recorded": rec is not None,
    }
    machine = str(detail.get("machine") or "")
    closed = {"machine": machine, **summary}
    audit(tx, r["user_id"], r["actor"], "stream.close", r["group_name"], closed)
    if group_id is not None:
        g = tx.one("SELECT id FROM groups WHERE id = ? AND deleted IS NULL", (group_id,))
    else:  # opened by a server that kept no id: the live group of that name
        g = tx.one(
            "SELECT id FROM groups WHERE user_id = ? AND name = ? AND deleted IS NULL",
            (r["user_id"], r["group_name"]),
        )
    if g is not None:
        add_event(tx, g["id"], "stream.closed", {"by": r["actor"], **summary}, machine=machine)


#: Audit rows read at a time while leaving probes out (``list_sessions``).
_SESSION_BATCH = 500


def list_sessions(
    tx: Tx, user_id: str, group: str, limit: int = 100, probes: bool = False
) -> list[dict[str, Any]]:
    """The group's latest ``limit`` shell sessions and forwards that ended, newest
    last; without ``probes``, the connections ``crc forward`` makes at its start to
    check the remote end (``"probe": true``) are left out and not counted."""
    live_group(tx, user_id, group)
    out: list[dict[str, Any]] = []
    seen: set[Any] = set()
    before: int | None = None
    while len(out) < limit:
        # Probes are in the audit's detail (JSON text): read back a batch at a time,
        # newest first, until ``limit`` sessions are found or the record is done.
        batch = limit if probes else max(limit, _SESSION_BATCH)
        older = "" if before is None else "AND id < ? "
        rows = tx.all(
            # Only the fixed "AND id < ?" clause is formatted in.
            "SELECT * FROM audit WHERE user_id = ? AND group_name = ? AND action = ? "  # noqa: S608
            f"{older}ORDER BY id DESC LIMIT ?",
            (user_id, group, "stream.close", *(() if before is None else (before,)), batch),
        )
        for r in rows:  # newest first: a real end supersedes a cut written meanwhile
            detail = loads(r["detail"]) or {}
            stream = detail.get("stream")
            if stream is not None and stream in seen:
                continue
            seen.add(stream)
            if not probes and detail.get("probe"):
                continue
            out.append({"ended": r["created"], "by": r["actor"], **detail})
            if len(out) == limit:
                break
        if len(rows) < batch:
            break
        before = int(rows[-1]["id"])
    return out[::-1]


def session_record(tx: Tx, user_id: str, stream: str) -> dict[str, Any]:
    """The audit detail of one ended stream of the caller (for its recording)."""
    # The id is checked (STREAM_ID) before it gets here; LIKE narrows, == decides.
    for r in tx.all(
        "SELECT * FROM audit WHERE user_id = ? AND action = ? AND detail LIKE ? "
        "ORDER BY id DESC LIMIT 10",
        (user_id, "stream.close", f'%"stream":"{stream}"%'),
    ):
        detail = loads(r["detail"]) or {}
        if detail.get("stream") == stream:
            return {"ended": r["created"], "by": r["actor"], "group": r["group_name"], **detail}
    raise NotFound(f"no session {stream!r}: see `crc sessions list GROUP`", field="session")
