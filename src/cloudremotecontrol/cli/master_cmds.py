"""Master commands: login, groups, wait, status, run, events."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from ..errors import InvalidInput, Unavailable
from .output import ago, emit_json, json_option, print_table


def _client() -> Any:
    from ..master.client import Client

    return Client.from_profile()


def _duration(text: str | None) -> float | None:
    """``90``, ``90s``, ``15m``, ``8h``, ``2d`` -> seconds."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    try:
        if t and t[-1] in units:
            value = float(t[:-1]) * units[t[-1]]
        else:
            value = float(t)
    except ValueError:
        raise InvalidInput(f"invalid duration {text!r}: use e.g. 90s, 15m, 8h") from None
    if value <= 0:
        raise InvalidInput(f"invalid duration {text!r}: must be positive")
    return value


@click.command()
@click.option("--url", required=True, help="Server URL, e.g. https://203.0.113.7:8443.")
@click.option("--token", required=True, help="Master token from `crc server add-user`.")
@click.option("--fingerprint", help="Pinned server certificate SHA-256 (from `server init`).")
@json_option
def login(url: str, token: str, fingerprint: str | None, as_json: bool) -> None:
    """Check the token against the server and save the profile (0600)."""
    from ..master.client import Client
    from ..master.profile import Profile, save_profile
    from ..tlspin import normalize_fingerprint

    fp = normalize_fingerprint(fingerprint) if fingerprint else None
    with Client(url, token, fp) as client:
        who = client.whoami()
        path = save_profile(Profile(url, token, fp, client.cert_pem))
    if as_json:
        emit_json({"user": who["user"], "url": url, "profile": str(path)})
    else:
        click.echo(f"logged in to {url} as {who['user']} (profile: {path})")


@click.group()
def group() -> None:
    """Create, list, show and delete groups (one scenario's machines)."""


@group.command("create")
@click.argument("name")
@click.option("--machines", required=True, help="Comma list of machine names, e.g. mysql,web.")
@click.option(
    "--label",
    "labels",
    multiple=True,
    help="MACHINE:KEY=VALUE label (repeatable), e.g. mysql:role=db.",
)
@click.option("--ttl", help="Expire the group after this long (e.g. 8h).")
@click.option("--key-ttl", help="Unused keys expire after this long (default 24h).")
@click.option(
    "--sync-hosts",
    is_flag=True,
    help="Keep every machine's hosts file listing its peers as they join or change address.",
)
@click.option(
    "--hosts-ip",
    type=click.Choice(["auto", "private", "public"]),
    default="auto",
    show_default=True,
    help="With --sync-hosts: which address to list.",
)
@click.option(
    "--uninstall-on-delete",
    is_flag=True,
    help="When the group is deleted, agents installed as a service remove the "
    "service and their state (not just stop).",
)
@json_option
def group_create(
    name: str,
    machines: str,
    labels: tuple[str, ...],
    ttl: str | None,
    key_ttl: str | None,
    sync_hosts: bool,
    hosts_ip: str,
    uninstall_on_delete: bool,
    as_json: bool,
) -> None:
    """Create group NAME and print each machine's single-use key (shown once)."""
    from ..protocol.names import parse_labels

    names = [m.strip() for m in machines.split(",") if m.strip()]
    per: dict[str, dict[str, str]] = {n: {} for n in names}
    for spec in labels:
        machine, sep, kv = spec.partition(":")
        if not sep or machine not in per:
            raise InvalidInput(
                f"invalid --label {spec!r}: use MACHINE:KEY=VALUE with a machine of --machines"
            )
        per[machine].update(parse_labels(kv))
    with _client() as c:
        settings: dict[str, Any] = {"sync_hosts": True, "hosts_ip": hosts_ip} if sync_hosts else {}
        if uninstall_on_delete:
            settings["uninstall_on_delete"] = True
        out = c.create_group(
            name,
            [{"name": n, "labels": per[n]} for n in names],
            key_ttl=_duration(key_ttl),
            ttl=_duration(ttl),
            settings=settings,
        )
    if as_json:
        emit_json(out)
        return
    click.echo(f"group {name}: keys are single use and shown only now", err=True)
    for m in out["machines"]:
        click.echo(f"{m['name']}\t{m['key']}")


@group.command("list")
@json_option
def group_list(as_json: bool) -> None:
    """List your groups."""
    with _client() as c:
        groups = c.list_groups()
    if as_json:
        emit_json({"groups": groups})
        return
    print_table(
        ["GROUP", "MACHINES", "READY", "CREATED", "EXPIRES"],
        [
            [
                g["group"],
                str(g["machines"]),
                str(g["ready"]),
                ago(g["created"]),
                "EXPIRED: run crc down" if g.get("expired") else _until(g.get("expires")),
            ]
            for g in groups
        ],
    )


def _until(ts: float | None) -> str:
    if not ts:
        return "-"
    left = ts - time.time()
    return f"in {left / 3600:.1f}h" if left > 3600 else f"in {max(0, left) / 60:.0f}m"


@group.command("show")
@click.argument("name")
@json_option
def group_show(name: str, as_json: bool) -> None:
    """Show a group and its machines."""
    with _client() as c:
        g = c.group(name)
    if as_json:
        emit_json(g)
        return
    _print_machines(g)


@group.command("delete")
@click.argument("name")
@json_option
def group_delete(name: str, as_json: bool) -> None:
    """Delete group NAME: revokes every key and credential; its agents stop."""
    with _client() as c:
        out = c.delete_group(name)
    if as_json:
        emit_json(out)
    else:
        click.echo(f"deleted group {name} ({out['machines_revoked']} machines revoked)")


def _print_machines(g: dict[str, Any]) -> None:
    rows = []
    for m in g["machines"]:
        prog = m.get("progress") or {}
        text = prog.get("text", "")
        if prog.get("percent") is not None:
            text = f"{prog['percent']:.0f}% {text}"
        rows.append(
            [
                m["name"],
                m["state"],
                ",".join(m.get("ips") or []) or "-",
                m.get("public_ip") or "-",
                text or "-",
                ago(m.get("last_seen")),
            ]
        )
    print_table(["MACHINE", "STATE", "IPS", "SEEN FROM", "PROGRESS", "LAST SEEN"], rows)
    note = _ttl_note(g)
    if note:
        click.echo(note, err=True)


def _ttl_note(g: dict[str, Any]) -> str | None:
    """What happens (or happened) when the group's TTL passes."""
    td = g.get("teardown") or None
    if td:
        where = td["provider"]
        if td["status"] == "done":
            n = len((td.get("result") or {}).get("destroyed") or [])
            return f"TTL passed: the server destroyed {n} machine(s) at {where}"
        if td["status"] == "retry":
            return (
                f"TTL passed: destroying the machines at {where} failed "
                f"({td.get('last_error')}); the server tries again {_until(td.get('next_try'))}"
                " - or run `crc down`"
            )
        if td["status"] == "running":
            return f"TTL passed: the server is destroying the machines at {where}"
        return (
            f"when the TTL passes ({_until(g.get('expires'))}) the server destroys the "
            f"machines at {where}"
        )
    if g.get("expired"):
        return "TTL passed: every credential is revoked; the machines still exist: run `crc down`"
    return None


@click.command()
@click.argument("name")
@json_option
def status(name: str, as_json: bool) -> None:
    """Table of a group's machines: state, IPs, progress, last seen."""
    with _client() as c:
        g = c.group(name)
    if as_json:
        emit_json(g)
    else:
        _print_machines(g)


@click.command()
@click.argument("name")
@click.option("--machines", help="Only these machines (comma list).")
@click.option("--timeout", default="15m", show_default=True, help="Give up after this long.")
@click.option(
    "--message",
    "message_type",
    help="Instead: wait for a data message TYPE from a machine; print its body.",
)
@click.option("--from", "sender", help="With --message: only from this machine.")
@click.option(
    "--since",
    type=click.IntRange(min=0),
    help="With --message: also accept messages after this event cursor.",
)
@json_option
def wait(
    name: str,
    machines: str | None,
    timeout: str,
    message_type: str | None,
    sender: str | None,
    since: int | None,
    as_json: bool,
) -> None:
    """Wait until the group's machines are ready, showing progress live (or, with
    --message, until a machine sends that message)."""
    deadline = time.monotonic() + (_duration(timeout) or 0)
    if message_type:
        _wait_message(name, message_type, sender, since, deadline, timeout)
        return
    with _client() as c:
        cursor = c.event_cursor(name)
        g = c.group(name)
        states = {m["name"]: m["state"] for m in g["machines"]}
        wanted = set(states)
        if machines:
            chosen = {m.strip() for m in machines.split(",") if m.strip()}
            unknown = chosen - wanted
            if unknown:
                raise InvalidInput(f"no machine {', '.join(sorted(unknown))} in group {name}")
            wanted = chosen

        def check() -> bool:
            revoked = sorted(m for m in wanted if states[m] == "revoked")
            if revoked:
                raise InvalidInput(f"machine(s) revoked: {', '.join(revoked)}")
            if all(states[m] == "ready" for m in wanted):
                return True
            if time.monotonic() > deadline:
                pending = sorted(m for m in wanted if states[m] != "ready")
                raise Unavailable(
                    f"timed out after {timeout}: not ready: {', '.join(pending)}", code="timeout"
                )
            return False

        if not check():
            for m in g["machines"]:  # where things stand, then what changes
                if m["name"] in wanted and not as_json:
                    prog = (m.get("progress") or {}).get("text")
                    click.echo(f"[{m['name']}] {m['state']}" + (f": {prog}" if prog else ""))
            sys.stdout.flush()
            for ev in c.events(name, since=cursor, follow=True, keepalive=True):
                if ev is not None and ev.get("machine") in wanted:
                    _show_wait_event(ev, states, as_json)
                if check():
                    break
    if as_json:
        emit_json({"group": name, "ready": True, "machines": sorted(wanted)})
    else:
        click.echo(f"all {len(wanted)} machine(s) of {name} are ready")


def _wait_message(
    name: str, type_: str, sender: str | None, since: int | None, deadline: float, timeout: str
) -> None:
    import json

    type_ = type_ if type_.startswith("user.") else "user." + type_
    with _client() as c:
        cursor = since if since is not None else c.event_cursor(name)
        for ev in c.events(name, since=cursor, follow=True, keepalive=True):
            if (
                ev is not None
                and ev["type"] == "message"
                and ev["data"]["type"] == type_
                and (sender is None or ev["data"]["from"] == sender)
            ):
                click.echo(
                    json.dumps(
                        {
                            "type": type_,
                            "from": ev["data"]["from"],
                            "body": ev["data"]["body"],
                            "cursor": ev["cursor"],
                        }
                    )
                )
                return
            if time.monotonic() > deadline:
                raise Unavailable(f"no {type_} message within {timeout}", code="timeout")
    raise Unavailable("the event stream ended (group deleted?)")


def _show_wait_event(ev: dict[str, Any], states: dict[str, str], as_json: bool) -> None:
    if ev["type"] == "machine.state":
        states[ev["machine"]] = ev["data"]["state"]
    if as_json:
        emit_json(ev)
    elif ev["type"] in ("machine.state", "progress"):
        detail = ev["data"].get("state") or ev["data"].get("text")
        pct = ev["data"].get("percent")
        pct_text = f" ({pct:.0f}%)" if isinstance(pct, (int, float)) else ""
        click.echo(f"[{ev['machine']}] {detail}{pct_text}")


_SHELL_CHARS = frozenset(" \t|&;<>()$`'\"*?[]#~%\n")


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.option("--to", "to", required=True, help="Machine, comma list, KEY=VALUE or all.")
@click.option("--timeout", help="Kill the command after this long (default 10m).")
@click.option(
    "--shell",
    type=click.Choice(["bash", "sh", "powershell", "cmd"]),
    help="Run COMMAND as one string in this shell (default: argv, no shell).",
)
@click.option("--env", "envs", multiple=True, help="KEY=VALUE for the command (repeatable).")
@click.option("--cwd", help="Working directory on the machine.")
@json_option
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(
    name: str,
    to: str,
    timeout: str | None,
    shell: str | None,
    envs: tuple[str, ...],
    cwd: str | None,
    as_json: bool,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND on machines; output streams live, prefixed by machine.

    Several words run as argv, without a shell; one quoted string with shell syntax runs
    in the machine's default shell (bash/sh on Linux, cmd on Windows); --shell picks one.

    Exit code: the worst of the targets (their exit code; 124 timed out, 125 lost,
    130 cancelled). Ctrl-C cancels the job on every machine.
    """
    from ..master.client import worst_exit_code

    env: dict[str, str] = {}
    for item in envs:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise InvalidInput(f"invalid --env {item!r}: use KEY=VALUE")
        env[k] = v
    spec: dict[str, Any] = {"env": env, "cwd": cwd, "timeout": _duration(timeout)}
    if shell:
        spec.update(command=" ".join(command), shell=shell)
    elif len(command) == 1 and any(c in command[0] for c in _SHELL_CHARS):
        # One quoted string such as 'apt-get update && apt-get install -y mysql-server':
        # the machine's own shell runs it (bash or sh on Linux, cmd on Windows).
        spec.update(command=command[0], shell=None)
    else:
        spec.update(argv=list(command))
    results: dict[str, dict[str, Any]] = {}
    with _client() as c:
        started = c.start_job(name, to, **spec)
        job_id = started["job_id"]
        if not as_json:
            click.echo(f"job {job_id} on {', '.join(started['targets'])}", err=True)
        cancelled = False
        while True:
            try:
                for ev in c.follow_job(job_id, started["targets"]):
                    _show_job_event(ev, results, as_json)
                break
            except KeyboardInterrupt:
                if cancelled:
                    raise
                cancelled = True
                click.echo("crc: cancelling (Ctrl-C again to stop waiting)", err=True)
                c.cancel_job(job_id)
                left = [t for t in started["targets"] if t not in results]
                started = {**started, "targets": left}
    sys.exit(worst_exit_code(results))


def _show_job_event(ev: dict[str, Any], results: dict[str, dict[str, Any]], as_json: bool) -> None:
    from ..protocol.states import JobStatus

    kind, m, data = ev["type"], ev.get("machine"), ev["data"]
    if kind == "job.output":
        if as_json:
            emit_json({"machine": m, "stream": data["stream"], "data": data["data"]})
            return
        out = sys.stdout if data["stream"] == "stdout" else sys.stderr
        text = data["data"]
        lines = text.splitlines(keepends=True)
        for line in lines:
            out.write(f"[{m}] {line}" if line.endswith("\n") else f"[{m}] {line}\n")
        out.flush()
    elif kind == "job.status" and JobStatus(data["status"]).terminal:
        results[m] = data
        if as_json:
            emit_json(
                {
                    "machine": m,
                    "status": data["status"],
                    "exit_code": data["exit_code"],
                    "reason": data.get("reason"),
                }
            )
        else:
            extra = f": {data['reason']}" if data.get("reason") else ""
            code = data["exit_code"]
            click.echo(
                f"[{m}] {data['status']}{f' (exit {code})' if code is not None else ''}{extra}",
                err=True,
            )


@click.command()
@click.argument("name")
@click.option("--follow", "-f", is_flag=True, help="Keep streaming new events.")
@click.option("--since", type=click.IntRange(min=0), help="Start after this cursor.")
@json_option
def events(name: str, follow: bool, since: int | None, as_json: bool) -> None:
    """A group's events (state changes, progress, output, results), resumable by cursor."""
    with _client() as c:
        for ev in c.events(name, since=since if since is not None else 0, follow=follow):
            if as_json:
                emit_json(ev)
                continue
            t = time.strftime("%H:%M:%S", time.localtime(ev["time"]))
            click.echo(
                f"{ev['cursor']:>6} {t} {ev['type']:<14} {ev.get('machine') or '-':<12} "
                f"{_summary(ev)}"
            )


def _summary(ev: dict[str, Any]) -> str:
    d = ev["data"] or {}
    kind = ev["type"]
    if kind == "machine.state":
        return f"{d.get('previous')} -> {d.get('state')}"
    if kind == "progress":
        pct = d.get("percent")
        return (f"{pct:.0f}% " if isinstance(pct, (int, float)) else "") + str(d.get("text"))
    if kind == "job.output":
        return f"{d.get('stream')}: {d.get('data', '').rstrip()[:200]}"
    if kind == "job.status":
        return f"job {d.get('job_id', '')[:8]} {d.get('status')} exit={d.get('exit_code')}"
    if kind == "job.created":
        return f"job {d.get('job_id', '')[:8]} on {','.join(d.get('targets', []))} by {d.get('by')}"
    import json

    return json.dumps(d)[:200]


@click.command()
@click.argument("name")
@click.option("--to", "to", required=True, help="Machine, comma list, KEY=VALUE or all.")
@click.argument("type_", metavar="TYPE")
@click.argument("body", required=False)
@json_option
def send(name: str, to: str, type_: str, body: str | None, as_json: bool) -> None:
    """Send data message TYPE (user.NAME) with an optional JSON BODY to machines; scripts
    there receive it with `crc agent wait-message TYPE`."""
    import json

    try:
        parsed = json.loads(body) if body else {}
    except ValueError:
        raise InvalidInput("BODY is not valid JSON") from None
    type_ = type_ if type_.startswith("user.") else "user." + type_
    with _client() as c:
        out = c.send_message(name, to, type_, parsed)
    if as_json:
        emit_json(out)
    else:
        click.echo(f"sent {type_} to {', '.join(out['targets'])}")


@click.group()
def hosts() -> None:
    """Keep the machines' hosts files listing their peers."""


@hosts.command("sync")
@click.argument("name")
@click.option("--to", "to", default="all", show_default=True, help="Which machines to update.")
@click.option(
    "--ip",
    type=click.Choice(["auto", "private", "public"]),
    default="auto",
    show_default=True,
    help="Address to list: private (VPC) when every peer has one under auto.",
)
@json_option
def hosts_sync(name: str, to: str, ip: str, as_json: bool) -> None:
    """Write `IP name name.GROUP` for every machine into each machine's hosts file (a
    managed block; the rest of the file is kept byte for byte)."""
    from ..master.client import worst_exit_code

    results: dict[str, dict[str, Any]] = {}
    with _client() as c:
        started = c.hosts_sync(name, to, ip)
        for ev in c.follow_job(started["job_id"], started["targets"]):
            _show_job_event(ev, results, as_json)
    sys.exit(worst_exit_code(results))


@click.command()
@click.argument("name")
@click.option("--to", "to", required=True, help="Machine, comma list, KEY=VALUE or all.")
@click.argument("local", type=click.Path(exists=True, dir_okay=False))
@click.argument("remote")
@click.option("--mode", help="Octal file mode on the machines, e.g. 0640.")
@click.option("--owner", help="USER or USER:GROUP on the machines (Linux).")
@json_option
def push(
    name: str, to: str, local: str, remote: str, mode: str | None, owner: str | None, as_json: bool
) -> None:
    """Copy LOCAL to REMOTE (an absolute path) on machines: uploaded once, fetched by
    each machine over HTTPS, verified by SHA-256, written atomically."""
    from ..master.client import worst_exit_code

    results: dict[str, dict[str, Any]] = {}
    with _client() as c:
        started = c.push(name, to, local, remote, mode, owner)
        for ev in c.follow_job(started["job_id"], started["targets"]):
            _show_job_event(ev, results, as_json)
    sys.exit(worst_exit_code(results))


@click.command()
@click.argument("name")
@click.option("--from", "machine", required=True, help="The machine to copy from.")
@click.argument("remote")
@click.argument("local", type=click.Path(dir_okay=False))
@json_option
def pull(name: str, machine: str, remote: str, local: str, as_json: bool) -> None:
    """Copy REMOTE from one machine to LOCAL here (verified by SHA-256)."""
    from ..master.client import worst_exit_code

    results: dict[str, dict[str, Any]] = {}
    with _client() as c:
        started = c.start_pull(name, machine, remote)
        for ev in c.follow_job(started["job_id"], started["targets"]):
            if ev["type"] != "job.output":
                _show_job_event(ev, results, as_json)
        rc = worst_exit_code(results)
        if rc == 0:
            info = c.download_pulled(started["job_id"], local)
            if as_json:
                emit_json({"machine": machine, "path": local, **info})
            else:
                click.echo(f"{local}: {info['size']} bytes from {machine}")
    sys.exit(rc)


@click.group()
def kv() -> None:
    """A group's key/value store, shared with its machines (`crc agent kv …`)."""


@kv.command("set")
@click.argument("name")
@click.argument("key")
@click.argument("value")
@json_option
def kv_set(name: str, key: str, value: str, as_json: bool) -> None:
    """Set KEY to VALUE (JSON, or a plain string) in group NAME."""
    import json

    try:
        parsed: Any = json.loads(value)
    except ValueError:
        parsed = value
    with _client() as c:
        out = c.kv_set(name, key, parsed)
    if as_json:
        emit_json(out)


@kv.command("get")
@click.argument("name")
@click.argument("key")
@click.option("--wait", "wait_for", help="Wait up to this long for the key (e.g. 2m).")
def kv_get(name: str, key: str, wait_for: str | None) -> None:
    """Print KEY's value in group NAME as JSON."""
    import json

    with _client() as c:
        out = c.kv_get(name, key, wait=_duration(wait_for) or 0)
    click.echo(json.dumps(out["value"]))


@kv.command("list")
@click.argument("name")
@json_option
def kv_list(name: str, as_json: bool) -> None:
    """List the keys of group NAME."""
    with _client() as c:
        keys = c.kv_list(name)
    if as_json:
        emit_json({"group": name, "keys": keys})
    else:
        print_table(
            ["KEY", "VERSION", "BY", "UPDATED"],
            [[k["key"], str(k["version"]), k["by"], ago(k["updated"])] for k in keys],
        )


@click.command()
@click.option("--group", "group_name", help="Only this group.")
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True)
@json_option
def audit(group_name: str | None, limit: int, as_json: bool) -> None:
    """Your audit record: who started what, where and when."""
    import json

    with _client() as c:
        records = c.audit(group_name, limit)
    if as_json:
        emit_json({"records": records})
        return
    for r in records:
        t = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["time"]))
        click.echo(
            f"{t}  {r['actor']:<16} {r['action']:<14} {r['group'] or '-':<12} "
            f"{json.dumps(r['detail'])[:120]}"
        )


def register(cli: click.Group) -> None:
    for cmd in (login, group, status, wait, run, events, send, hosts, push, pull, kv, audit):
        cli.add_command(cmd)
    from .demo_cmd import demo
    from .scenario_cmds import down, up

    for cmd in (demo, up, down):
        cli.add_command(cmd)
