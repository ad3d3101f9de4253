"""Master commands: login, groups, wait, status, run, events."""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from typing import Any

import click

from ..errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from ..protocol.fields import MAX_SEQ
from ..protocol.limits import MAX_MACHINES_PER_GROUP
from ..protocol.names import expired_advice, scenario_of, user_message_type
from .numbers import WholeNumber
from .output import (
    TARGET_HELP,
    ago,
    emit_json,
    json_option,
    kv_key,
    print_table,
    safe,
    say_stream_breaks,
    shown_json,
    target_option,
)
from .signals import stopped_as_by_ctrl_c


def _client() -> Any:
    from ..master.client import Client

    return say_stream_breaks(Client.from_profile())


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
    if not math.isfinite(value):  # nan, inf: never reached, or a traceback
        raise InvalidInput(f"invalid duration {text!r}: use e.g. 90s, 15m, 8h")
    if value <= 0:
        raise InvalidInput(f"invalid duration {text!r}: must be positive")
    return value


@click.command()
@click.option(
    "--url", envvar="CRC_URL", help="Server URL, e.g. https://203.0.113.7:8443 (or CRC_URL)."
)
@click.option(
    "--token",
    envvar="CRC_TOKEN",
    help="Master token from `crc server add-user` (or CRC_TOKEN). `-` reads it from "
    "standard input; left out at a terminal, it is asked for without echo. A token in "
    "the command line is visible to the machine's other users (ps).",
)
@click.option(
    "--fingerprint",
    envvar="CRC_FINGERPRINT",
    help="Pinned server certificate SHA-256 (from `server init`; or CRC_FINGERPRINT).",
)
@json_option
def login(url: str | None, token: str | None, fingerprint: str | None, as_json: bool) -> None:
    """Check the token against the server and save the profile (0600)."""
    from ..master.client import Client, clean_token
    from ..master.profile import Profile, save_profile
    from ..tlspin import check_base_url, normalize_fingerprint

    _check_login_variables()
    if url is None:
        raise click.UsageError("Missing option '--url' (or CRC_URL).")
    # Replicas of one server, comma-separated; saved as checked (an empty entry, a
    # script's trailing comma, is no URL to keep).
    urls = [one.strip().rstrip("/") for one in url.split(",") if one.strip()]
    if not urls:
        raise click.UsageError("--url (or CRC_URL) names no server URL.")
    for one in urls:
        check_base_url(one)
    url = ",".join(urls)
    token = clean_token(_login_token(token))
    fp = normalize_fingerprint(fingerprint) if fingerprint else None
    with Client(url, token, fp) as client:
        try:
            who = client.whoami()
        except Unauthorized:
            raise Unauthorized(
                f"the server at {client.url} rejected this token: give a master token "
                "(crcm_..., printed once by `crc server add-user` or `crc server "
                "add-token` on the server) that has not been revoked"
            ) from None
        except Forbidden as exc:
            raise Forbidden(f"{exc.message}: `crc login` takes a master token (crcm_...)") from None
        _check_replicas(urls, client.url, token, fp, who["user"])
        path = save_profile(Profile(url, token, fp, client.cert_pem))
    if as_json:
        emit_json({"user": who["user"], "url": url, "profile": str(path)})
    else:
        click.echo(f"logged in to {url} as {who['user']} (profile: {path})")


@click.command()
@json_option
def logout(as_json: bool) -> None:
    """Remove the profile `crc login` saved (URL, token, fingerprint).

    All of it goes: `crc login` asks for the URL and fingerprint again. The token itself
    is not revoked: it works until `crc server revoke-token USER TOKEN_NAME` on the
    server host revokes it. CRC_URL and CRC_TOKEN in the environment are not touched
    (a warning names them). Nothing stored is no error (exit 0)."""
    import os

    from ..master.profile import config_dir, remove_profile

    removed = remove_profile()
    # What still logs crc in after this: variables of the environment, said not read.
    left = [v for v in ("CRC_URL", "CRC_TOKEN") if os.environ.get(v)]
    if as_json:
        emit_json(
            {
                "removed": removed is not None,
                "profile": str(removed[0] if removed else config_dir() / "config.json"),
                "url": removed[1] if removed else None,
                "environment": left,
            }
        )
    elif removed is None:
        click.echo(f"not logged in: no profile in {config_dir()} (nothing removed)")
    else:
        path, url = removed
        at = f" for {safe(url)}" if url else ""
        click.echo(
            f"logged out: removed the profile {path}{at} (server URL, token, fingerprint); "
            "the token itself still works until revoked on the server (`crc server "
            "revoke-token USER TOKEN_NAME`)"
        )
    if left and not as_json:
        one = len(left) == 1
        click.echo(
            f"crc: warning: {' and '.join(left)} {'is' if one else 'are'} set in the "
            f"environment, which crc still uses: unset {'it' if one else 'them'} too",
            err=True,
        )


def _check_replicas(urls: list[str], first: str, token: str, fp: str | None, user: str) -> None:
    """Every URL of the list besides ``first`` (the one that answered) must be the same
    server: the pinned certificate (or one the system trusts, without a pin) and the
    same user for this token. One that differs is refused (exit 2, nothing saved); one
    that cannot be reached now (a replica down) is named in a warning and kept."""
    from ..errors import CrcError, Unavailable
    from ..master.calls import why_unreachable
    from ..master.client import Client

    down: dict[str, str] = {}
    for url in urls:
        if url == first:
            continue
        try:
            with Client(url, token, fp, timeout=10) as other:
                them = other.whoami()
        except Unavailable as exc:
            if exc.code == "not_crc_server":  # a web page, not the API: the wrong URL
                raise _not_one_server(url, first, exc.message) from None
            down[url] = why_unreachable(url, exc)
            continue
        except (Unauthorized, Forbidden) as exc:
            why = f"it rejected the token {first} accepted ({exc.message})"
            raise _not_one_server(url, first, why) from None
        except CrcError as exc:  # another certificate
            raise _not_one_server(url, first, exc.message) from None
        if them.get("user") != user:
            raise _not_one_server(
                url, first, f"this token is user {them.get('user')!r} there, {user!r} at {first}"
            )
    if down:
        why = "; ".join(f"{u}: {r}" for u, r in down.items())
        click.echo(
            f"crc: warning: not checked, cannot reach {why}; kept in the profile all the "
            f"same (a replica may be down): logged in through {first}",
            err=True,
        )


def _not_one_server(url: str, first: str, why: str) -> InvalidInput:
    return InvalidInput(
        f"--url lists {url}, which is not the same server as {first}: {why}; not logged in "
        "(give the URLs of one server's replicas only)"
    )


def _check_login_variables() -> None:
    """``CRC_URL``, ``CRC_TOKEN`` and ``CRC_FINGERPRINT`` as every command reads them: one
    set but empty (or blank) whose option is not given is an error naming it (exit 2),
    not "not given" (click's reading of an empty variable), which would ask for the
    token at a terminal or log in without a pin."""
    from click.core import ParameterSource

    from ..master.profile import env_override

    ctx = click.get_current_context()
    for option, variable in (
        ("url", "CRC_URL"),
        ("token", "CRC_TOKEN"),
        ("fingerprint", "CRC_FINGERPRINT"),
    ):
        if ctx.get_parameter_source(option) is not ParameterSource.COMMANDLINE:
            env_override(variable, f"and give --{option}")


def _login_token(token: str | None) -> str:
    """``--token``'s value, read from standard input for ``-``, asked for at a terminal
    when left out."""
    if token == "-":  # noqa: S105 -- the "read it from standard input" value
        token = sys.stdin.readline(4096).strip()
        if not token:
            raise InvalidInput("--token -: standard input held no token")
    elif token is None:
        if not sys.stdin.isatty():
            raise InvalidInput(
                "give the master token: --token TOKEN, CRC_TOKEN, or --token - to read it "
                "from standard input"
            )
        try:
            token = str(click.prompt("Master token", hide_input=True, err=True)).strip()
        except click.exceptions.Abort as exc:
            # Ctrl-D (end of input) gives no token; Ctrl-C stays an interruption (130).
            if isinstance(exc.__context__, EOFError):
                raise InvalidInput(
                    "no token given: type the master token at the prompt, or give "
                    "--token TOKEN, CRC_TOKEN, or --token - to read it from standard input"
                ) from None
            raise
    return token


def _checked_name(value: str, what: str, hint: str) -> str:
    """``value`` if the server would take it as a new ``what`` name, else a usage error."""
    from ..protocol.names import check_new_name

    try:
        return check_new_name(value, what)
    except InvalidInput as exc:
        raise click.BadParameter(exc.message, param_hint=hint) from None


@click.group()
def group() -> None:
    """Create, list, show and delete groups (one scenario's machines)."""


@group.command("create")
@click.argument("name", metavar="GROUP")
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
    help="With --sync-hosts: which address to list (as crc hosts sync --ip).",
)
@click.option(
    "--uninstall-on-delete",
    is_flag=True,
    help="When the group is deleted, agents installed as a service remove the "
    "service and their state (not just stop).",
)
@click.option("--no-shell", is_flag=True, help="No `crc shell` into this group's machines.")
@click.option("--no-forward", is_flag=True, help="No `crc forward` to this group's machines.")
@click.option(
    "--force-record",
    is_flag=True,
    help="Record every shell session (`crc shell --no-record` is refused).",
)
@click.option(
    "--record-input", is_flag=True, help="Shell recordings keep keystrokes too, not only output."
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
    no_shell: bool,
    no_forward: bool,
    force_record: bool,
    record_input: bool,
    as_json: bool,
) -> None:
    """Create group GROUP and print each machine's single-use key (shown once)."""
    from click.core import ParameterSource

    from ..protocol.names import parse_labels

    given = click.get_current_context().get_parameter_source("hosts_ip")
    if not sync_hosts and given is not ParameterSource.DEFAULT:
        raise click.UsageError("--hosts-ip goes with --sync-hosts")
    # Checked here with the server's rule (protocol/names.py), before any profile is
    # read or the server asked: a name it would refuse is the user's mistake (exit 2).
    _checked_name(name, "group", "GROUP")
    names = [m.strip() for m in machines.split(",")]
    if not any(names):
        raise click.BadParameter("names no machine: give e.g. mysql,web", param_hint="--machines")
    if "" in names:  # a script's variable left empty: not a list to take as it comes
        raise click.BadParameter(
            f"{safe(repr(machines[:80]))} has an empty name (two commas, or one at an "
            "end): give e.g. mysql,web",
            param_hint="--machines",
        )
    if len(names) > MAX_MACHINES_PER_GROUP:
        raise click.BadParameter(
            f"names {len(names)} machines; a group has at most {MAX_MACHINES_PER_GROUP}",
            param_hint="--machines",
        )
    for n in names:
        _checked_name(n, "machine", "--machines")
    counts = Counter(names)
    twice = sorted(n for n, count in counts.items() if count > 1)
    if twice:
        raise click.BadParameter(
            f"names {', '.join(map(repr, twice))} more than once", param_hint="--machines"
        )
    key_ttl_seconds, ttl_seconds = _duration(key_ttl), _duration(ttl)
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
        for key, on in (
            ("no_shell", no_shell),
            ("no_forward", no_forward),
            ("force_record", force_record),
            ("record_input", record_input),
        ):
            if on:
                settings[key] = True
        out = c.create_group(
            name,
            [{"name": n, "labels": per[n]} for n in names],
            key_ttl=key_ttl_seconds,
            ttl=ttl_seconds,
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
                _expired_cell(g) if g.get("expired") else _until(g.get("expires")),
            ]
            for g in groups
        ],
    )


def _until(ts: float | None) -> str:
    """How long until ``ts``: seconds below a minute, whole minutes below an hour, then
    hours (``in 27s``, ``in 14m``, ``in 7.5h``); each rounded to the nearest, and to the
    next unit when it rounds up to it (59.6 s is ``in 1m``, not ``in 60s``)."""
    if not ts:
        return "-"
    left = round(ts - time.time())
    if left <= 0:
        return "now"
    if left < 60:
        return f"in {left}s"
    if round(left / 60) < 60:
        return f"in {round(left / 60)}m"
    return f"in {left / 3600:.1f}h"


@group.command("show")
@click.argument("name", metavar="GROUP")
@json_option
def group_show(name: str, as_json: bool) -> None:
    """Show a group and its machines."""
    with _client() as c:
        g = c.group(name)
        if as_json:
            emit_json(g)
            return
        _print_machines(g, _ready_since(c, name))


@group.command("delete")
@click.argument("name", metavar="GROUP")
@click.option(
    "--force",
    is_flag=True,
    help="Delete a group `crc up` made all the same: only the group goes, its machines "
    "keep running at the provider (`crc down --group GROUP` destroys them too).",
)
@json_option
def group_delete(name: str, force: bool, as_json: bool) -> None:
    """Delete group GROUP: revokes every key and credential; its agents stop.

    A group `crc up` made is refused (exit 5) unless --force: deleting it alone would
    leave its machines running (on a cloud, billing); `crc down --group GROUP` destroys
    them and deletes the group."""
    with _client() as c:
        try:
            settings = c.group(name).get("settings") or {}
        except (Forbidden, NotFound):
            settings = {}  # the delete says what the server says
        made_by = scenario_of(settings)
        mine = settings.get("crc_up")
        provider = mine.get("provider") if isinstance(mine, dict) else None
        provider = safe(provider) if isinstance(provider, str) else None  # said on stderr
        at = f" at {provider}" if isinstance(provider, str) else ""
        if made_by is not None and not force:
            raise Conflict(
                f"group {name} was made by `crc up` (scenario {made_by}): deleting it "
                f"alone would leave its machines running{at} (on a cloud, billing); "
                f"`crc down --group {name}` destroys them and deletes the group "
                "(--force deletes only the group)"
            )
        out = c.delete_group(name)
    if made_by is not None and not as_json:
        again = f" --provider {provider}" if isinstance(provider, str) else " --provider NAME"
        click.echo(
            f"warning: the machines of group {name} keep running{at} (on a cloud, "
            f"billing): `crc down --group {name}{again}` destroys them",
            err=True,
        )
    if as_json:
        emit_json(out)
        return
    revoked = out.get("machines_revoked")
    counted = (
        f" ({revoked} machine{'' if revoked == 1 else 's'} revoked)"
        if isinstance(revoked, int)
        else ""
    )
    click.echo(f"deleted group {name}{counted}")


def _ready_since(c: Any, name: str) -> dict[str, float]:
    """When each machine last turned ready (from the group's machine.state events)."""
    since: dict[str, float] = {}
    for ev in c.events(name, since=0, types=("machine.state",)):
        if ev["data"].get("state") == "ready" and ev.machine:
            since[ev.machine] = ev.time
    return since


def key_expired(m: dict[str, Any]) -> bool:
    """A pending machine whose enrollment key expired: it cannot enroll (nor get a job)
    until `crc bootstrap GROUP MACHINE` issues a new key. By this computer's clock."""
    expires = m.get("key_expires")
    return (
        m.get("state") == "pending"
        and isinstance(expires, (int, float))
        and not isinstance(expires, bool)
        and expires <= time.time()
    )


def state_shown(m: dict[str, Any]) -> str:
    """A machine's state as `crc status` shows it: ``pending (key expired)`` for one
    whose key can no longer enroll it."""
    return f"{m['state']} (key expired)" if key_expired(m) else str(m["state"])


def _print_machines(g: dict[str, Any], ready_since: dict[str, float] | None = None) -> None:
    rows = []
    for m in g["machines"]:
        prog = m.get("progress") or {}
        text = prog.get("text", "")
        if prog.get("percent") is not None:
            text = f"{prog['percent']:.0f}% {text}"
        became_ready = (ready_since or {}).get(m["name"])
        if m["state"] == "ready" and became_ready and (prog.get("at") or 0) < became_ready:
            text = ""  # provisioning progress, over since the machine turned ready
        rows.append(
            [
                m["name"],
                state_shown(m),
                ",".join(m.get("ips") or []) or "-",
                m.get("public_ip") or "-",
                text or "-",
                ago(m.get("last_seen")),
            ]
        )
    headers = ["MACHINE", "STATE", "IPS", "SEEN FROM", "PROGRESS", "LAST SEEN"]
    if any(m.get("labels") for m in g["machines"]):  # what a --to KEY=VALUE selects
        headers.insert(2, "LABELS")
        for row, m in zip(rows, g["machines"], strict=True):
            labels = m.get("labels") or {}
            row.insert(2, ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-")
    print_table(headers, rows)
    note = _ttl_note(g)
    if note:
        click.echo(safe(note), err=True)  # a provider's error text, as it answered


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
        advice = expired_advice(g["group"], scenario_of(g.get("settings") or {}))
        return f"TTL passed: every credential is revoked; {advice}"
    return None


def _expired_cell(g: dict[str, Any]) -> str:
    """A group past its TTL, in `crc group list`: what removes it."""
    return "EXPIRED: run crc down" if g.get("scenario") else "EXPIRED: crc group delete"


@click.command()
@click.argument("name", metavar="GROUP")
@json_option
def status(name: str, as_json: bool) -> None:
    """Table of a group's machines: state, IPs, progress, last seen (the progress of a
    ready machine only if it was reported after it turned ready)."""
    with _client() as c:
        g = c.group(name)
        if as_json:
            emit_json(g)
        else:
            _print_machines(g, _ready_since(c, name))


@click.command()
@click.argument("name", metavar="GROUP")
@click.option("--follow", "-f", is_flag=True, help="Keep streaming new events.")
@click.option("--since", type=WholeNumber(0, MAX_SEQ), help="Start after this cursor.")
@json_option
def events(name: str, follow: bool, since: int | None, as_json: bool) -> None:
    """A group's events (state changes, progress, output, results), resumable by cursor.

    \b
    Examples:
      crc events lab                   # every event so far, oldest first
      crc events lab -f                # and new ones as they come (Ctrl-C ends)
      crc events lab --since 120 -f    # after cursor 120 (the first column)
      crc events lab -f --json         # JSON lines, each with its cursor
    """
    with stopped_as_by_ctrl_c(), _client() as c:  # SIGTERM / SIGHUP end --follow as Ctrl-C
        for ev in c.events(name, since=since if since is not None else 0, follow=follow):
            if as_json:
                emit_json(ev)
                continue
            t = time.strftime("%H:%M:%S", time.localtime(ev["time"]))
            click.echo(
                f"{ev['cursor']:>6} {t} {ev['type']:<14} {ev.get('machine') or '-':<12} "
                f"{safe(_summary(ev))}"
            )


def _pairs(d: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    """``key=value`` pairs (lists comma-joined, mappings as JSON): whole values, never
    cut in the middle."""

    parts = []
    for k, v in d.items():
        if k in skip or v is None or v == [] or v == {}:
            continue
        if isinstance(v, list) and all(isinstance(x, (str, int, float)) for x in v):
            text = ",".join(str(x) for x in v)
        elif isinstance(v, (dict, list)):
            text = shown_json(v, separators=(",", ":"))
        else:
            text = str(v)
        parts.append(f"{k}={text}")
    return " ".join(parts)


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars; --json)"


def _summary(ev: dict[str, Any]) -> str:
    """One line for an event (machine-supplied text escaped by the caller)."""

    d = ev["data"] or {}
    kind = ev["type"]
    job = str(d.get("job_id") or "")[:8]
    if kind == "machine.state":
        return f"{d.get('previous')} -> {d.get('state')}"
    if kind == "progress":
        pct = d.get("percent")
        return (f"{pct:.0f}% " if isinstance(pct, (int, float)) else "") + str(d.get("text"))
    if kind == "job.output":
        return f"job {job} {d.get('stream')}: " + _short(str(d.get("data", "")).rstrip("\n"))
    if kind == "job.status":
        code = d.get("exit_code")
        reason = d.get("reason")
        return (
            f"job {job} {d.get('status')}"
            + (f" (exit {code})" if code is not None else "")
            + (f": {reason}" if reason else "")
        )
    if kind == "job.created":
        spec = d.get("spec") or {}
        if spec.get("argv"):
            what = " ".join(str(a) for a in spec["argv"])
        elif spec.get("command"):
            what = str(spec["command"])
        else:
            # A push's new_mode and name only say how a new file or a directory is met.
            what = _pairs(
                spec, skip=("job_id", "group", "entries", "sha256", "size", "new_mode", "name")
            )
        return (
            f"job {job} {d.get('type', 'job.run')} on {','.join(d.get('targets', []))} "
            f"by {d.get('by')}: {_short(what, 1000)}"
        )
    if kind == "message":
        body = shown_json(d.get("body"), separators=(",", ":"))
        return f"{d.get('type')} from {d.get('from')}: {_short(body)}"
    if kind == "message.sent":
        body = shown_json(d.get("body"), separators=(",", ":"))
        return f"{d.get('type')} to {','.join(d.get('to') or [])}: {_short(body)}"
    if kind == "kv.set":
        return f"{d.get('key')} version {d.get('version')} by {_kv_writer(d)}"
    return _short(_pairs(d), 400)


def message_type(value: str, hint: str) -> str:
    """A data message type given as NAME or user.NAME, as ``user.NAME``; else a usage
    error (exit 2) naming ``hint``, the argument or option, before the server is asked.
    One rule for the commands that send such a message and those that wait for one."""
    try:
        return user_message_type(value)
    except InvalidInput as exc:
        raise click.BadParameter(exc.message, param_hint=hint) from None


@click.command()
@click.argument("name", metavar="GROUP")
@click.option("--to", "to", required=True, callback=target_option, help=TARGET_HELP)
@click.argument("type_", metavar="TYPE")
@click.argument("body", required=False)
@json_option
def send(name: str, to: str, type_: str, body: str | None, as_json: bool) -> None:
    """Send data message TYPE (user.NAME) with an optional BODY, a JSON object ({} when
    left out), to machines; scripts there receive it with `crc agent wait-message
    TYPE`. BODY - reads it from standard input (UTF-8, at most 256 KiB: a body too
    large for the command line). With --json: the server's answer, {"group", "type",
    "targets": [machines], "messages": [{"machine", "id"}]}, one message per target."""
    from ..protocol.limits import MAX_MESSAGE_BODY_BYTES
    from .jsonarg import STDIN, from_stdin, json_arg

    type_ = message_type(type_, "TYPE")
    if body == STDIN:
        body = from_stdin("BODY", MAX_MESSAGE_BODY_BYTES)
    parsed = json_arg(body, "BODY")
    with _client() as c:
        out = c.send_message(name, to, type_, parsed)
    if as_json:
        emit_json(out)
    else:
        click.echo(f"sent {type_} to {', '.join(out['targets'])}")


def _kv_writer(item: dict[str, Any]) -> str:
    """Who wrote a key last: ``master (alice)`` (the user who did), or a machine's name."""
    user = item.get("user")
    return f"{item.get('by')} ({user})" if user else str(item.get("by"))


@click.group()
def kv() -> None:
    """A group's key/value store, shared with its machines (`crc agent kv …`)."""


@kv.command("set")
@click.argument("name", metavar="GROUP")
@click.argument("key", callback=kv_key)
@click.argument("value")
@json_option
def kv_set(name: str, key: str, value: str, as_json: bool) -> None:
    """Set KEY to VALUE (JSON, or a plain string) in group GROUP: a VALUE starting with
    {, [ or " must be valid JSON (else exit 2). VALUE - reads it from standard input
    (UTF-8, at most 64 KiB, taken as it is: a trailing newline is part of a plain
    string); the string "-" itself is '"-"'.

    A VALUE that begins with - (a negative number, -5) goes after --: `crc kv set GROUP
    KEY -- -5`."""
    from ..protocol.limits import MAX_KV_VALUE_BYTES
    from .jsonarg import STDIN, from_stdin, json_or_text

    if value == STDIN:
        value = from_stdin("VALUE", MAX_KV_VALUE_BYTES)
    parsed = json_or_text(value, "VALUE")
    with _client() as c:
        out = c.kv_set(name, key, parsed)
    if as_json:
        emit_json(out)


@kv.command("get")
@click.argument("name", metavar="GROUP")
@click.argument("key", callback=kv_key)
@click.option("--wait", "wait_for", help="Wait up to this long for the key (e.g. 2m; at most 5m).")
@json_option
def kv_get(name: str, key: str, wait_for: str | None, as_json: bool) -> None:
    """Print KEY's value in group GROUP as JSON (with --json: {"key", "value",
    "version", "updated", "by", "user"}; exit 4 if it does not exist). On a terminal,
    who wrote it and when follows on stderr."""

    from ..protocol.limits import MAX_KV_WAIT_SECONDS

    wait = _duration(wait_for) or 0
    if wait > MAX_KV_WAIT_SECONDS:  # the server's bound, said with the option's name
        raise InvalidInput(
            f"--wait {wait_for} is too long: at most {MAX_KV_WAIT_SECONDS:g} s (5m); "
            "wait again for longer"
        )
    with stopped_as_by_ctrl_c(), _client() as c:  # SIGTERM / SIGHUP end --wait as Ctrl-C
        out = c.kv_get(name, key, wait=wait)
    if as_json:
        emit_json(out)
        return
    click.echo(shown_json(out["value"]))
    if sys.stderr.isatty():  # for the eye only: a script reads the value alone
        click.echo(
            safe(f"crc: {key} version {out['version']} by {_kv_writer(out)}, ")
            + ago(out["updated"]),
            err=True,
        )


@kv.command("list")
@click.argument("name", metavar="GROUP")
@json_option
def kv_list(name: str, as_json: bool) -> None:
    """List the keys of group GROUP: who wrote each last (BY: master or a machine;
    USER: the user, for the master) and when."""
    with _client() as c:
        keys = c.kv_list(name)
    if as_json:
        emit_json({"group": name, "keys": keys})
    else:
        print_table(
            ["KEY", "VERSION", "BY", "USER", "UPDATED"],
            [
                [k["key"], str(k["version"]), k["by"], k.get("user") or "-", ago(k["updated"])]
                for k in keys
            ],
        )


@click.command()
@click.option(
    "--group",
    "group_name",
    metavar="GROUP",
    help="Only this group's records: also of a group deleted since (none: an empty list).",
)
@click.option(
    "--action",
    "actions",
    metavar="ACTION",
    multiple=True,
    help="Only records of this action (kv.set), or of every action a prefix ending in a "
    "dot starts (kv., job.); repeat it or give a comma list for several.",
)
@click.option(
    "--limit",
    type=WholeNumber(1, 10000),
    default=100,
    show_default=True,
    help="The latest this many records (of those --action keeps).",
)
@json_option
def audit(group_name: str | None, actions: tuple[str, ...], limit: int, as_json: bool) -> None:
    """Your audit record: who started what, where and when (oldest first). It outlives
    the groups it names: a deleted group's records stay listed.

    \b
    Examples:
      crc audit --group lab                  # the latest 100 records of group lab
      crc audit --action job.,stream.open    # runs and cancels, shells and forwards
      crc audit --action kv. --limit 20      # the latest 20 key/value writes
    """
    from ..master.calls import audit_actions

    wanted = audit_actions(actions)  # checked before anything is sent (exit 2)
    with _client() as c:
        records = c.audit(group_name, limit, wanted)
    if as_json:
        emit_json({"records": records})
        return
    print_table(
        ["TIME", "ACTOR", "ACTION", "GROUP", "DETAIL"],
        [
            [
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["time"])),
                r["actor"],
                r["action"],
                r["group"] or "-",
                _pairs(r["detail"] or {}) or "-",
            ]
            for r in records
        ],
    )
