"""What the dashboard's pages show, read from the store.

Authorization is the API's: every function takes the caller's ``user_id`` and reaches a
group only through ``live_group`` (or a job through ``job_view``), the same lookups the
/v1 endpoints use, so another user's group is "not found" here exactly as there.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

from ...errors import InvalidInput, NotFound
from ...protocol.jsoncheck import escaped
from ...protocol.names import scenario_of
from ...terminal import safe
from ..ops import events as ev_ops
from ..ops import groups as group_ops
from ..ops import jobs as job_ops
from ..ops import runs as run_ops
from ..ops.common import live_group, loads
from ..store.base import Tx

__all__ = [
    "EVENT_TYPES",
    "event_list",
    "file_jobs",
    "group_page",
    "job_list",
    "job_page",
    "kv_page",
    "machine_rows",
    "message_list",
    "shown_lines",
    "shown_output",
    "state_since",
    "terminal_page",
]

#: Event types offered by the events view's filter (a prefix such as ``job.`` works too).
EVENT_TYPES = (
    "machine.state",
    "progress",
    "facts",
    "job.created",
    "job.status",
    "job.output",
    "message.sent",
    "message",
    "kv.set",
    "run.started",
    "run.step",
    "run.phase",
    "run.ended",
    "agent.error",
    "group.created",
    "group.expired",
)
KV_VALUE_SHOWN = 2000  # characters of a value's JSON in the kv view
KV_KEYS_SHOWN = 500  # keys in the kv view (a group may hold 10,000 of 64 KiB each)
BODY_SHOWN = 2000  # characters of a message body's JSON in the messages view
OUTPUT_TAIL = 256 << 10  # characters of output per machine a job page shows at most
OUTPUT_READ = 32 << 20  # bytes of output a job page reads at most
BATCH = 256  # events a job page reads at once (job.output events of 64 KiB at most)


def shown_lines(text: str) -> str:
    r"""``text`` of several lines (a command's output, a JSON body) as the pages show it:
    its line ends and tabs kept, every other control character and bidirectional mark
    escaped as the CLI escapes it (``safe``: ``\x1b``, ``\u202e``), so a machine can
    neither hide text nor make it read in another order."""
    return "\n".join("\t".join(safe(p) for p in line.split("\t")) for line in text.split("\n"))


def shown_output(text: str) -> str:
    r"""A piece of a command's output as the pages show it: ``shown_lines``, a line end
    of Windows (``\r\n``) a line end (a carriage return anywhere else is ``\r``)."""
    return shown_lines(text.replace("\r\n", "\n"))


def _text(value: Any) -> str | None:
    """A machine's one line of text (progress, a fact) as the pages show it (``safe``)."""
    return None if value is None else safe(value)


def state_since(tx: Tx, group_id: str) -> dict[str, float]:
    """When each machine of the group last changed state (machines that never did are
    missing: they are in their first state since the group was made)."""
    rows = tx.all(
        "SELECT machine, MAX(created) AS since FROM events "
        "WHERE group_id = ? AND type = 'machine.state' GROUP BY machine",
        (group_id,),
    )
    return {str(r["machine"]): float(r["since"]) for r in rows if r["machine"]}


def _row(m: dict[str, Any], since: dict[str, float], created: float) -> dict[str, Any]:
    """One machine as the machines table draws it (everything it shows, as strings or
    numbers: the page renders them as text)."""
    facts = m.get("facts") or {}
    if not isinstance(facts, dict):
        facts = {}
    progress = m.get("progress") or {}
    return {
        "name": m["name"],
        "state": m["state"],
        "since": since.get(m["name"], created),
        "progress": _text(progress.get("text")) if isinstance(progress, dict) else None,
        "percent": progress.get("percent") if isinstance(progress, dict) else None,
        "os": _text(_os_text(facts)),
        "hostname": _text(facts.get("hostname")),
        "ips": [safe(ip) for ip in (facts.get("ips") or []) if ip is not None][:8]
        if isinstance(facts.get("ips"), list)
        else [],
        "public_ip": m.get("public_ip"),
        "labels": m.get("labels") or {},
        "last_seen": m.get("last_seen"),
    }


def _os_text(facts: dict[str, Any]) -> str | None:
    parts = [facts.get("os_release") or facts.get("os"), facts.get("arch")]
    text = " ".join(str(p) for p in parts if p)
    return text or None


def group_page(tx: Tx, user_id: str, group: str) -> dict[str, Any]:
    """The group, its machines as table rows, its run, and the event cursor the page
    follows from (read first: what happens meanwhile is replayed, never missed)."""
    cursor = ev_ops.group_cursor(tx, user_id, group)
    g = group_ops.show_group(tx, user_id, group)
    since = state_since(tx, cursor["group_id"])
    rows = [_row(m, since, g["created"]) for m in g["machines"]]
    try:
        run = _run_shown(run_ops.run_view(tx, user_id, group))
    except NotFound:
        run = None
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    return {
        "group": g["group"],
        "created": g["created"],
        "expires": g["expires"],
        "expired": g["expired"],
        "scenario": scenario_of(g["settings"]),
        "machines": rows,
        "counts": counts,
        "cursor": cursor["cursor"],
        "run": run,
    }


def _run_shown(run: dict[str, Any]) -> dict[str, Any]:
    """A run with its messages as the pages show them (``crc up`` may quote a machine)."""
    steps = [{**s, "message": _text(s.get("message"))} for s in run.get("steps") or []]
    return {**run, "message": _text(run.get("message")), "steps": steps}


def machine_rows(tx: Tx, user_id: str, group: str, names: list[str]) -> list[dict[str, Any]]:
    """Some machines of the group, as table rows (the page refreshes these after a state
    change: a reconnection also changes the address the server saw)."""
    g = live_group(tx, user_id, group)
    wanted = names[:200]
    if not wanted:
        return []
    marks = ",".join("?" * len(wanted))
    rows = tx.all(
        f"SELECT * FROM machines WHERE group_id = ? AND name IN ({marks}) ORDER BY name",  # noqa: S608
        (g["id"], *wanted),
    )
    since = state_since(tx, g["id"])
    return [_row(group_ops.machine_view(r), since, g["created"]) for r in rows]


def job_list(tx: Tx, user_id: str, group: str, limit: int = 200) -> list[dict[str, Any]]:
    """The group's latest jobs, newest first, with how many targets are in each status."""
    g = live_group(tx, user_id, group)
    jobs = tx.all(
        "SELECT id, spec, target, created, created_by FROM jobs WHERE group_id = ? "
        "ORDER BY created DESC LIMIT ?",
        (g["id"], limit),
    )
    out = []
    for j in jobs:
        spec = loads(j["spec"]) or {}
        counts = tx.all(
            "SELECT status, COUNT(*) AS n FROM job_targets WHERE job_id = ? GROUP BY status",
            (j["id"],),
        )
        out.append(
            {
                "job_id": j["id"],
                "kind": spec.get("type"),
                "summary": _job_summary(spec),
                "target": j["target"],
                "created": j["created"],
                "by": j["created_by"],
                "statuses": {str(c["status"]): int(c["n"]) for c in counts},
            }
        )
    return out


def _job_summary(spec: dict[str, Any]) -> str:
    kind = spec.get("type")
    if kind == "job.run":
        if spec.get("command") is not None:
            return str(spec["command"])
        return " ".join(str(a) for a in spec.get("argv") or [])
    if kind == "file.put":
        return f"push {str(spec.get('sha256', ''))[:12]} -> {spec.get('path')}"
    if kind == "file.get":
        return f"pull {spec.get('path')}"
    if kind == "hosts.sync":
        return f"hosts sync ({len(spec.get('entries') or [])} entries)"
    return str(kind)


def job_page(tx: Tx, user_id: str, job_id: str) -> dict[str, Any]:
    """A job, its targets, the last ``OUTPUT_TAIL`` characters of each machine's output,
    and the cursor of its last event (the page follows from there).

    The job's events are read newest first, so each machine's last part is what is
    found first, and reading stops once every machine's is (or after ``OUTPUT_READ``
    bytes: the machines whose last part was not reached by then show what was, and
    those of which nothing was reached are in ``unshown`` with their output's size)."""
    job = job_ops.job_view(tx, user_id, job_id)
    info = ev_ops.group_cursor(tx, user_id, job["group"])
    outputs: dict[str, deque[str]] = {}
    sizes: dict[str, int] = {}
    whole: set[str] = set()  # machines whose last OUTPUT_TAIL characters are all read
    # Machines whose output after the piece read next starts with "\n": a piece ending
    # in "\r" then ends with half of Windows' "\r\n", one line end (as the page's
    # script shows it live).
    lf_next: set[str] = set()
    cursor = 0
    before: int | None = None
    read = 0
    cut = False
    bounded = False  # stopped by OUTPUT_READ: older output is there, not read
    while True:
        rows = ev_ops.job_rows_before(tx, info["group_id"], job_id, before, BATCH)
        for r in rows:
            before = int(r["id"])
            cursor = max(cursor, before)
            machine = r["machine"]
            if r["type"] != "job.output" or not machine:
                continue
            # Every row read counts, those of a machine already shown in full too: a
            # machine printing without end cannot make a page read all it printed.
            read += len(r["data"] or "") + 100
            if machine in whole:
                cut = True  # an earlier part of an output already shown in full
                continue
            data = ev_ops.event_view(r)["data"] or {}
            raw = str(data.get("data", ""))
            if raw:
                later_lf = machine in lf_next
                lf_next.discard(machine)
                if raw.startswith("\n"):
                    lf_next.add(machine)
                if later_lf and raw.endswith("\r"):
                    raw = raw[:-1]
            text = shown_output(raw)
            outputs.setdefault(machine, deque()).appendleft(text)
            sizes[machine] = sizes.get(machine, 0) + len(text)
            if sizes[machine] >= OUTPUT_TAIL:
                whole.add(machine)
        if len(rows) < BATCH:
            break
        if read > OUTPUT_READ or len(whole) >= len(job["targets"]):
            cut = True  # the machines whose output starts earlier show its last part only
            bounded = read > OUTPUT_READ
            break
    shown = {}
    for machine, chunks in outputs.items():
        text = "".join(chunks)
        if len(text) > OUTPUT_TAIL:
            text = text[len(text) - OUTPUT_TAIL :]
            cut = True
        shown[machine] = text
    # Machines whose output is all older than what was read (another printed more than
    # OUTPUT_READ since) show nothing of it: the page says how much, and where it is.
    # Not when all was read: an output then missing is no longer kept (retention).
    unshown = {
        str(t["machine"]): int(t["output_bytes"] or 0)
        for t in job["targets"]
        if bounded and t["output_bytes"] and not shown.get(str(t["machine"]))
    }
    spec = job["spec"] or {}
    return {
        **job,
        "targets": [{**t, "reason": _text(t["reason"])} for t in job["targets"]],
        "kind": spec.get("type"),
        "summary": _job_summary(spec),
        "outputs": shown,
        "unshown": unshown,
        "output_cut": cut,
        "tail": OUTPUT_TAIL,
        "cursor": cursor,
        "open": any(t["status"] in ("queued", "delivered", "running") for t in job["targets"]),
    }


def file_jobs(tx: Tx, user_id: str, group: str) -> list[dict[str, Any]]:
    """Pushes and pulls of the group, newest first, with their targets' statuses."""
    g = live_group(tx, user_id, group)
    jobs = tx.all(
        "SELECT id, spec, created, created_by FROM jobs WHERE group_id = ? "
        "ORDER BY created DESC LIMIT 500",
        (g["id"],),
    )
    out = []
    for j in jobs:
        spec = loads(j["spec"]) or {}
        if spec.get("type") not in ("file.put", "file.get"):
            continue
        targets = [
            {**t, "reason": _text(t["reason"])}
            for t in tx.all(
                "SELECT machine, status, reason, blob FROM job_targets WHERE job_id = ? "
                "ORDER BY machine",
                (j["id"],),
            )
        ]
        out.append(
            {
                "job_id": j["id"],
                "direction": "push" if spec["type"] == "file.put" else "pull",
                "path": spec.get("path"),
                "sha256": spec.get("sha256"),
                "size": spec.get("size"),
                "mode": spec.get("mode"),
                "created": j["created"],
                "by": j["created_by"],
                "targets": targets,
            }
        )
    return out


def message_list(tx: Tx, user_id: str, group: str, limit: int = 300) -> list[dict[str, Any]]:
    """Data messages of the group, newest first: the master's and machines' to peers
    (``message.sent``) and machines' to the master (``message``), each body's first
    ``BODY_SHOWN`` characters (300 bodies of 256 KiB would make a 75 MB page)."""
    g = live_group(tx, user_id, group)
    rows = tx.all(
        "SELECT * FROM events WHERE group_id = ? AND type IN ('message.sent', 'message') "
        "ORDER BY id DESC LIMIT ?",
        (g["id"], limit),
    )
    out = []
    for r in rows:
        ev = ev_ops.event_view(r)
        data = ev["data"] or {}
        to = data.get("to")
        out.append(
            {
                "time": ev["time"],
                "type": str(data.get("type", "")),
                "from": str(data.get("from", ev["machine"] or "")),
                "to": ", ".join(str(t) for t in to) if isinstance(to, list) else "master",
                "body": shown_lines(_shown(_pretty(data.get("body")), BODY_SHOWN)),
            }
        )
    return out


def kv_page(tx: Tx, user_id: str, group: str) -> dict[str, Any]:
    """The group's first ``KV_KEYS_SHOWN`` keys (by name) with their values (the first
    ``KV_VALUE_SHOWN`` characters), and how many keys it has: the machines write them,
    and 10,000 keys of 64 KiB would make a page of 20 MB, read again at every change."""
    g = live_group(tx, user_id, group)
    rows = tx.all(
        "SELECT key, value, version, updated, updated_by, updated_user FROM kv "
        "WHERE group_id = ? ORDER BY key LIMIT ?",
        (g["id"], KV_KEYS_SHOWN),
    )
    total = len(rows)
    if total >= KV_KEYS_SHOWN:
        count = tx.one("SELECT COUNT(*) AS n FROM kv WHERE group_id = ?", (g["id"],))
        total = int(count["n"]) if count else total
    out = []
    for r in rows:
        out.append(
            {
                "key": r["key"],
                "value": shown_lines(_shown(_pretty(json.loads(r["value"])), KV_VALUE_SHOWN)),
                "version": int(r["version"]),
                "updated": r["updated"],
                # "master (alice)": which user, when the master wrote it (ops/kv.py).
                "by": f"{r['updated_by']} ({r['updated_user']})"
                if r["updated_user"]
                else r["updated_by"],
            }
        )
    return {"keys": out, "total": total}


def event_list(
    tx: Tx,
    user_id: str,
    group: str,
    type_: str = "",
    machine: str = "",
    job: str = "",
    limit: int = 500,
) -> dict[str, Any]:
    """The group's latest events matching the filters, newest first: ``type_`` exact, or
    a prefix when it ends with ``.`` (``job.``); ``machine`` and ``job`` exact. A ``job``
    that is not one of the group's is refused (InvalidInput, with the API's reason)."""
    g = live_group(tx, user_id, group)
    if job:
        try:
            found = job_ops.job_group(tx, user_id, job)
        except NotFound as exc:
            raise InvalidInput(f"invalid job: {exc.message}", field="job") from None
        if found["group_id"] != g["id"]:
            raise InvalidInput(
                f"invalid job: job {job!r} is of group {found['group']!r}, not {group!r}",
                field="job",
            )
    where = ["group_id = ?"]
    params: list[Any] = [g["id"]]
    if type_:
        if type_.endswith("."):
            where.append("type LIKE ?")
            params.append(type_.replace("%", "").replace("_", "") + "%")
        else:
            where.append("type = ?")
            params.append(type_)
    if machine:
        where.append("machine = ?")
        params.append(machine)
    if job:
        where.append("job_id = ?")
        params.append(job)
    # Only fixed conditions with "?" placeholders are joined in: values are parameters.
    rows = tx.all(
        f"SELECT * FROM events WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",  # noqa: S608
        (*params, limit),
    )
    events = []
    for r in rows:
        ev = ev_ops.event_view(r)
        events.append({**ev, "text": _event_text(ev)})
    return {"events": events, "limit": limit}


def _event_text(ev: dict[str, Any]) -> str:
    """What the events view shows of an event: output with its lines, anything else on
    one line; a machine's controls and bidirectional marks escaped (``safe``)."""
    data = ev["data"]
    if ev["type"] == "job.output" and isinstance(data, dict):
        return shown_output(str(data.get("data", "")))
    if ev["type"] == "progress" and isinstance(data, dict):
        pct = data.get("percent")
        return (f"{pct:g}% " if isinstance(pct, (int, float)) else "") + safe(data.get("text"))
    if ev["type"] == "machine.state" and isinstance(data, dict):
        return safe(f"{data.get('previous')} → {data.get('state')}")
    return safe(_compact(data))


def _shown(text: str, limit: int) -> str:
    """The first ``limit`` characters of ``text``, and "…" when there is more."""
    return text if len(text) <= limit else text[:limit] + "…"


def _pretty(value: Any) -> str:
    return escaped(json.dumps(value, indent=1, ensure_ascii=False, sort_keys=True))


def _compact(value: Any) -> str:
    text = escaped(json.dumps(value, ensure_ascii=False, separators=(", ", ": ")))
    return text if len(text) <= 500 else text[:500] + "…"


def terminal_page(tx: Tx, user_id: str, group: str, machine: str) -> dict[str, Any]:
    """A machine's terminal page: its state and OS, and whether the group refuses shells
    or forwards (``crc group create --no-shell`` / ``--no-forward``)."""
    g = live_group(tx, user_id, group)
    m = tx.one(
        "SELECT name, state, facts FROM machines WHERE group_id = ? AND name = ?",
        (g["id"], machine),
    )
    if m is None:
        raise NotFound(f"no machine {machine!r} in group {group!r}", field="machine")
    settings = loads(g["settings"]) or {}
    facts = loads(m["facts"]) or {}
    return {
        "machine": m["name"],
        "state": m["state"],
        "os": facts.get("os") if isinstance(facts, dict) else None,
        "no_shell": bool(settings.get("no_shell")),
        "no_forward": bool(settings.get("no_forward")),
    }
