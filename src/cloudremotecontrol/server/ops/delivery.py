"""Agent connections: state on connect/disconnect, and what a machine sends.

The rules of the numbered streams (acks, resume, resync, dedupe, poison messages) are
``protocol/delivery.py``'s, run here on the machine's outbox and inbox in the store
(``streams.py``). What a machine sends is decoded once by the message catalogue
(``protocol/messages.py``) and applied by one handler per type (``HANDLERS``).
"""

from __future__ import annotations

import logging
from typing import Any

from ...errors import CrcError, InvalidInput
from ...protocol.delivery import Receipt, Verdict
from ...protocol.jsoncheck import escaped
from ...protocol.messages import (
    Envelope,
    Facts,
    JobOutput,
    JobResult,
    JobStarted,
    MessageFailed,
    Progress,
    SystemReady,
    UserMessage,
    decode_message,
)
from ...protocol.states import JobEvent, MachineEvent, MachineState, machine_next, result_event
from ...protocol.wire import Dispatcher, Message, Side
from ..store.base import Tx, reads_job_target, reads_outbox_drop, reads_row
from .common import add_event, dumps, now
from .groups import uninstall_on_delete
from .hostsync import auto_hosts_sync
from .streams import ServerInbox, Step, inbox, job_event, job_report, outbox

__all__ = [
    "HANDLERS",
    "ack_outbox",
    "apply_agent_message",
    "machine_connected",
    "machine_disconnected",
    "mark_all_offline",
    "outbox_after",
    "revoked_among",
    "sweep_stale",
    "touch_machines",
]

log = logging.getLogger("crc.server")
Deliveries = list[tuple[str, int, str]]


def _transition(
    tx: Tx, m: dict[str, Any], event: MachineEvent, heard: bool = True, **extra: Any
) -> str:
    """Move ``m`` by ``event``; ``heard``: the machine itself was heard from now, so its
    ``last_seen`` is now (a sweep or a restart that finds it gone keeps the last
    contact it knew)."""
    state = MachineState(m["state"])
    nxt = machine_next(state, event)
    if nxt is None:
        return state.value
    if heard:
        extra = {"last_seen": now(), **extra}
    # Column names come from this module's keyword arguments, never from input.
    sets = "".join(f", {k} = ?" for k in extra)
    tx.send(
        f"UPDATE machines SET state = ?{sets} WHERE id = ?",  # noqa: S608
        (nxt.value, *extra.values(), m["id"]),
    )
    if nxt != state:
        add_event(
            tx,
            m["group_id"],
            "machine.state",
            {"state": nxt.value, "previous": state.value},
            machine=m["name"],
        )
    return nxt.value


@reads_row("machines")
def machine_connected(
    tx: Tx,
    machine_id: str,
    ready: bool,
    peer_ip: str | None,
    replica: str,
    agent_ack: int = 0,
    resume_from: int | None = None,
) -> dict[str, Any]:
    """Record a (re)connection; return ``{"in_done", "resume_from", "state",
    "deliveries", "sent_upto"}`` (the first two for the welcome frame; ``sent_upto``:
    the replay starts after it, at what the agent acknowledged or, when that is older
    than the oldest message kept, at that message).

    ``agent_ack`` (the hello's ``ack``) drops what it acknowledges from the outbox; an
    ack beyond anything this server numbered (its database was restored from a backup)
    makes numbering continue after it. ``resume_from`` (the agent's first message still
    kept) beyond what the server processed means the reverse: the messages between were
    acknowledged by a database state that is gone. Both are ``machine.resync`` events,
    and so is an agent behind the server's oldest kept message (its state dir was
    restored): the welcome's ``resume_from`` tells it to skip."""
    m = tx.one("SELECT * FROM machines WHERE id = ?", (machine_id,))
    if m is None:
        raise InvalidInput("machine vanished")
    out = outbox(tx, machine_id)
    resync = out.peer_acked(agent_ack)
    if resync is not None:
        add_event(
            tx,
            m["group_id"],
            "machine.resync",
            {
                "direction": "to agent",
                "agent_ack": agent_ack,
                "server_sent": resync.last,
                "renumbered": resync.renumbered,
                "note": "the agent had processed messages this server does not know: "
                "numbering continues after them",
            },
            machine=m["name"],
        )
    server_resumes = out.resume_from()
    if agent_ack + 1 < server_resumes:
        add_event(
            tx,
            m["group_id"],
            "machine.resync",
            {
                "direction": "to agent",
                "agent_ack": agent_ack,
                "server_resumes_at": server_resumes,
                "lost": server_resumes - 1 - agent_ack,
                "note": "the agent's state is older than messages it acknowledged: "
                "they are not sent again",
            },
            machine=m["name"],
        )
    had = int(m["in_done"])
    lost = inbox(tx, m).resume(resume_from)
    if lost:
        add_event(
            tx,
            m["group_id"],
            "machine.resync",
            {
                "direction": "from agent",
                "server_had": had,
                "agent_resumes_at": resume_from,
                "lost": lost,
                "note": "messages the agent sent were acknowledged by a database state "
                "this server no longer has: they are lost",
            },
            machine=m["name"],
        )
    event = MachineEvent.CONNECT_READY if ready else MachineEvent.CONNECT
    # Connected with a credential: the agent has it, so its enrollment nonce may no
    # longer get another (ops/enrollment.py).
    state = _transition(tx, m, event, peer_ip=peer_ip, connected_by=replica, enroll_nonce=None)
    return {
        "in_done": m["in_done"],
        "resume_from": server_resumes,
        "sent_upto": max(agent_ack, server_resumes - 1),
        "state": state,
        "deliveries": auto_hosts_sync(tx, m["group_id"]),
    }


@reads_row("machines")
def machine_disconnected(tx: Tx, machine_id: str, replica: str) -> None:
    m = tx.one("SELECT * FROM machines WHERE id = ?", (machine_id,))
    # Another replica may own a newer connection of the same machine: leave it alone.
    if m is None or m["connected_by"] not in (replica, None):
        return
    _transition(tx, m, MachineEvent.DISCONNECT, connected_by=None)


def mark_all_offline(tx: Tx, replica: str | None = None) -> int:
    """At start: machines believed connected to this server (or any, for None) are not."""
    rows = tx.all(
        "SELECT * FROM machines WHERE state IN ('enrolled', 'ready') "
        "AND (CAST(? AS TEXT) IS NULL OR connected_by = ?)",
        (replica, replica),
    )
    for m in rows:
        _transition(tx, m, MachineEvent.DISCONNECT, heard=False, connected_by=None)
    return len(rows)


def sweep_stale(tx: Tx, older_than: float) -> int:
    """Machines shown connected whose replica stopped vouching for them (it touches its
    machines' ``last_seen`` every 30 s; a replica killed -9 cannot say goodbye)."""
    rows = tx.all(
        "SELECT * FROM machines WHERE state IN ('enrolled', 'ready') AND last_seen < ?",
        (now() - older_than,),
    )
    for m in rows:
        _transition(tx, m, MachineEvent.DISCONNECT, heard=False, connected_by=None)
    return len(rows)


def touch_machines(tx: Tx, machine_ids: list[str]) -> list[tuple[str, str, bool]]:
    """Record that these connected machines are alive; return ``(id, reason,
    uninstall)`` for those revoked meanwhile (by another replica: this one closes them)."""
    t = now()
    for i in range(0, len(machine_ids), _BATCH):
        batch = machine_ids[i : i + _BATCH]
        marks = ",".join("?" * len(batch))
        tx.execute(
            f"UPDATE machines SET last_seen = ? WHERE id IN ({marks})",  # noqa: S608
            (t, *batch),
        )
    return revoked_among(tx, machine_ids)


#: Machine ids per statement (``touch_machines``, ``revoked_among``).
_BATCH = 500


def revoked_among(tx: Tx, machine_ids: list[str]) -> list[tuple[str, str, bool]]:
    """``(id, reason, uninstall)`` for those of these machines that are revoked: a read,
    by primary key, ``_BATCH`` ids a statement. Replicas run it every
    ``REVOKED_SECONDS`` for their connected machines (app.py ``_revoked_loop``), so that
    one revoked through another replica is told within seconds."""
    revoked = []
    for i in range(0, len(machine_ids), _BATCH):
        batch = machine_ids[i : i + _BATCH]
        marks = ",".join("?" * len(batch))
        # Only "?" placeholders are formatted in: the ids are parameters.
        query = (
            "SELECT m.id, g.name, g.deleted, g.settings FROM machines m "  # noqa: S608
            "JOIN groups g ON g.id = m.group_id "
            f"WHERE m.state = 'revoked' AND m.id IN ({marks})"
        )
        for row in tx.all(query, tuple(batch)):
            revoked.append((row["id"], *_why_revoked(row)))
    return revoked


def _why_revoked(group: Any) -> tuple[str, bool]:
    """What a revoked machine is told, from its group's row (``name``, ``deleted``,
    ``settings``; None: no group): the reason, and whether to remove its service."""
    if group is None or group["deleted"] is None:
        return "machine revoked", False
    return f"group {group['name']!r} deleted", uninstall_on_delete(group["settings"])


def outbox_after(tx: Tx, machine_id: str, after: int, limit: int = 500) -> list[tuple[int, str]]:
    """What to send a machine whose agent processed up to ``after``, in order."""
    return outbox(tx, machine_id).replay(after, limit)


def _acked(machine_id: str, seq: int, *_: Any) -> tuple[str, int] | None:
    """What an ack frame drops from the machine's outbox (``ack_outbox``)."""
    return (machine_id, seq)


@reads_row("machines")
@reads_outbox_drop(_acked)
def ack_outbox(tx: Tx, machine_id: str, seq: int, m: dict[str, Any] | None = None) -> int:
    """The agent processed everything up to ``seq``: drop it; jobs become delivered.
    Returns how many messages that released. ``m``: the machine's row, if read in this
    transaction (else read here: its ``out_next``, and the machine of the jobs an ack
    delivers)."""
    if m is None:
        m = tx.one("SELECT * FROM machines WHERE id = ?", (machine_id,))
        if m is None:
            raise InvalidInput("machine vanished")
    return outbox(tx, machine_id, m).ack(seq)


#: Messages whose handler reads their job's target (``job_steps``).
_JOB_REPORTS = frozenset({"job.started", "job.output", "job.result"})


def _reported_target(
    machine_id: str, seq: int, raw: object, ack: int | None = None
) -> tuple[str, str] | None:
    """The job target a message reports on, ``(job_id, machine_id)``, from its raw
    envelope (not yet checked: a wrong guess is a row read for nothing)."""
    if not isinstance(raw, dict) or raw.get("type") not in _JOB_REPORTS:
        return None
    body = raw.get("body")
    job_id = body.get("job_id") if isinstance(body, dict) else None
    if not isinstance(job_id, str) or not 0 < len(job_id) <= 128:
        return None
    return (job_id, machine_id)


def _acked_by_message(
    machine_id: str, seq: int, raw: object, ack: int | None = None
) -> tuple[str, int] | None:
    """What a message's ``msg.ack`` drops from the machine's outbox."""
    return None if ack is None else (machine_id, ack)


@reads_row("machines")
@reads_job_target(_reported_target)
@reads_outbox_drop(_acked_by_message)
def apply_agent_message(
    tx: Tx, machine_id: str, seq: int, raw: dict[str, Any], ack: int | None = None
) -> dict[str, Any]:
    """Apply message ``seq`` from a machine once. Returns ``{"receipt", ...}``.

    Duplicates are acknowledged again and otherwise ignored; a gap means the agent must
    resume. A job's report that changed nothing (its target had ended, or its output is
    past what is kept) is processed all the same, and says so (``"unchanged"``). A
    message that cannot be decoded or applied (bad input) is given up: it is
    acknowledged (so it is not re-sent for ever) and recorded as an ``agent.error``
    event, with nothing else stored. A failure of this server while applying it rolls
    back its effects and asks the agent to send it again (``"retry"``), up to
    ``MAX_ATTEMPTS`` times; then it is given up too. ``ack``: the frame's ``msg.ack``,
    applied as an ``ack`` frame (it drops what it acknowledges; jobs become delivered).
    """
    m = tx.one("SELECT * FROM machines WHERE id = ?", (machine_id,))
    if m is None or m["state"] == MachineState.REVOKED.value:
        group = None
        if m is not None:
            group = tx.one(
                "SELECT name, deleted, settings FROM groups WHERE id = ?", (m["group_id"],)
            )
        reason, uninstall = _why_revoked(group)
        return {"receipt": "revoked", "reason": reason, "uninstall": uninstall}
    delivered: list[str] = []  # jobs the ack delivers, in order
    ack_error: dict[str, Any] | None = None
    if ack is not None:  # msg.ack: an ack riding on the message, applied first
        try:
            outbox(tx, machine_id, m, delivered).ack(ack)
        except CrcError as exc:  # refused before anything changed: like an ack frame's,
            # told to the agent (an error frame), not written to this server's log once
            # per message a broken or hostile agent sends.
            log.debug("machine %s: ignoring the ack in message %d: %s", m["name"], seq, exc)
            ack_error = exc.to_payload()["error"]
    result = _apply_message(tx, m, seq, raw, delivered)
    if ack_error is not None and result["receipt"] in ("new", "duplicate"):
        result["ack_error"] = ack_error
    return result


def _apply_message(
    tx: Tx, m: dict[str, Any], seq: int, raw: dict[str, Any], delivered: list[str]
) -> dict[str, Any]:
    """``apply_agent_message`` once its ack (if any) is applied: ``delivered`` lists the
    jobs that ack delivered, in order."""
    box = inbox(tx, m)
    receipt = box.receive(seq)
    # A short job's result acknowledging its own job.run (job.fold + msg.ack): its
    # target moves queued -> delivered -> running -> ended in one read and one write
    # (``_on_result``); the events are the same, in the same order.
    # Otherwise (another message, or one given up) it is applied before the message.
    late = delivered[-1] if receipt is Receipt.NEW and delivered else None
    for job_id in delivered[:-1] if late is not None else delivered:
        job_event(tx, m, job_id, JobEvent.DELIVER, None, None)
    if receipt is Receipt.DUPLICATE:
        return {"receipt": "duplicate"}
    if receipt is Receipt.GAP:
        return {"receipt": "gap", "expected": box.processed + 1}
    tx.notify(m["group_id"])  # the group's event lock, outside the savepoint below
    if receipt is Receipt.DEAD:
        return _give_up(tx, m, seq, raw, _dead(seq, box.max_attempts))
    tx.execute("SAVEPOINT apply_message")
    try:
        env = Envelope.from_dict(raw)
        msg = decode_message(env, Side.SERVER)
        box.done(seq)
        if late is not None and isinstance(msg, JobResult) and msg.job_id == late:
            deliveries = _on_result(tx, m, msg, env)  # delivers it
        else:
            _deliver(tx, m, late)
            deliveries = HANDLERS[msg](tx, m, msg, env)
    except CrcError as exc:
        _rollback(tx, box)
        _deliver(tx, m, late)  # the ack stands whatever became of the message
        return _give_up(tx, m, seq, raw, exc)
    except tx.database_errors:
        raise  # the store's to handle (a conflict is re-run, a lost connection reported)
    except Exception as exc:  # noqa: BLE001 -- a fault of this server, not of the machine
        _rollback(tx, box)
        _deliver(tx, m, late)
        log.error("applying message %d of machine %s failed: %r", seq, m["name"], exc)
        verdict = box.failed(seq)
        if verdict is Verdict.RETRY:
            return {
                "receipt": "retry",
                "error": {"code": "internal", "message": f"message {seq} not applied: resend"},
            }
        return _give_up(tx, m, seq, raw, _dead(seq, box.max_attempts))
    tx.execute("RELEASE SAVEPOINT apply_message")
    if deliveries is None:  # a job's report that changed nothing (its job had ended)
        return {"receipt": "new", "deliveries": [], "unchanged": True}
    return {"receipt": "new", "deliveries": deliveries}


def _deliver(tx: Tx, m: dict[str, Any], job_id: str | None) -> None:
    if job_id is not None:
        job_event(tx, m, job_id, JobEvent.DELIVER, None, None)


def _dead(seq: int, attempts: int) -> CrcError:
    return CrcError(f"message {seq} failed {attempts} times: given up", code="dead_letter")


def _rollback(tx: Tx, box: Any) -> None:
    tx.execute("ROLLBACK TO SAVEPOINT apply_message")
    tx.execute("RELEASE SAVEPOINT apply_message")
    store = box.store
    assert isinstance(store, ServerInbox)
    store.reload()


def _give_up(tx: Tx, m: dict[str, Any], seq: int, raw: object, exc: CrcError) -> dict[str, Any]:
    """Message ``seq`` is processed with no effect but an ``agent.error`` event."""
    inbox(tx, m).done(seq)
    kind = raw.get("type") if isinstance(raw, dict) else None
    add_event(
        tx,
        m["group_id"],
        "agent.error",
        {
            "code": exc.code,
            "message": exc.message,
            "seq": seq,
            "type": escaped(kind[:256]) if isinstance(kind, str) else None,
        },
        machine=m["name"],
    )
    return {"receipt": "new", "error": exc.to_payload()["error"]}


# -- one handler per message type a machine may send ---------------------------------------


def _on_ready(tx: Tx, m: dict[str, Any], msg: SystemReady, env: Envelope) -> Deliveries:
    _transition(tx, m, MachineEvent.SAY_READY)
    return auto_hosts_sync(tx, m["group_id"])


def _on_progress(tx: Tx, m: dict[str, Any], msg: Progress, env: Envelope) -> Deliveries:
    progress: dict[str, Any] = {"text": msg.text, "percent": msg.percent, "at": now()}
    if msg.source is not None:
        progress["source"] = msg.source
    tx.send("UPDATE machines SET progress = ? WHERE id = ?", (dumps(progress), m["id"]))
    add_event(tx, m["group_id"], "progress", progress, machine=m["name"])
    return []


def _on_facts(tx: Tx, m: dict[str, Any], msg: Facts, env: Envelope) -> Deliveries:
    facts = msg.to_body()
    tx.execute("UPDATE machines SET facts = ? WHERE id = ?", (dumps(facts), m["id"]))
    add_event(tx, m["group_id"], "facts", facts, machine=m["name"])
    if msg.rejected:
        add_event(
            tx, m["group_id"], "facts.rejected", {"rejected": list(msg.rejected)}, machine=m["name"]
        )
    return auto_hosts_sync(tx, m["group_id"])


def _on_started(tx: Tx, m: dict[str, Any], msg: JobStarted, env: Envelope) -> Deliveries | None:
    return job_report(tx, m, msg.job_id, [(JobEvent.START, None, None)], reported=True)


def _on_output(tx: Tx, m: dict[str, Any], msg: JobOutput, env: Envelope) -> Deliveries | None:
    # Output of a job the server does not know for this machine changes nothing and is
    # acknowledged without a word: its start and its result are refused (one event
    # each), not each chunk (a job still running after a restore from backup).
    return job_report(tx, m, msg.job_id, [(msg.stream, msg.data)])


def _on_result(tx: Tx, m: dict[str, Any], msg: JobResult, env: Envelope) -> Deliveries | None:
    """A result proves its job.run arrived: a target still ``queued`` is delivered first
    (the ack riding on this message, or one still to come: an agent that gives a job up
    reports it before it acks the job.run; the ack then changes nothing). A target that
    is delivered already is not moved by that step (the table has no such transition)."""
    event = result_event(msg.status)
    assert event is not None  # the catalogue admits terminal statuses only
    steps: list[Step] = [(JobEvent.DELIVER, None, None)]
    if msg.started:  # a short job folded into its result (job.fold): what it stands for
        steps.append((JobEvent.START, None, None))
    steps.extend(msg.output or ())
    steps.append((event, msg.exit_code, msg.reason))
    return job_report(tx, m, msg.job_id, steps, reported=True)


def _on_failed(tx: Tx, m: dict[str, Any], msg: MessageFailed, env: Envelope) -> Deliveries:
    add_event(
        tx,
        m["group_id"],
        "message.failed",
        {
            "seq": msg.seq,
            "type": msg.type,
            "id": msg.id,
            "reason": msg.reason,
            "attempts": msg.attempts,
        },
        machine=m["name"],
    )
    return []


def _on_user(tx: Tx, m: dict[str, Any], msg: UserMessage, env: Envelope) -> Deliveries:
    if env.to != "master":  # to peers of the same group: data, never commands
        from .messages import route_from_machine

        return route_from_machine(tx, m, env.to, msg, env.correlation_id)
    add_event(
        tx,
        m["group_id"],
        "message",
        {
            "type": msg.type,
            "body": msg.body,
            "from": m["name"],
            "id": env.id,
            "correlation_id": env.correlation_id,
        },
        machine=m["name"],
    )
    return []


#: What a machine may send, and what the server does with it: one handler per type.
HANDLERS: Dispatcher[Any] = Dispatcher(
    Side.SERVER,
    Message,
    {
        SystemReady: _on_ready,
        Progress: _on_progress,
        Facts: _on_facts,
        JobStarted: _on_started,
        JobOutput: _on_output,
        JobResult: _on_result,
        MessageFailed: _on_failed,
        UserMessage: _on_user,
    },
)
