"""``crc agent …``: the agent itself and the commands scripts on the machine use."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from ..errors import InvalidInput, Unavailable
from .numbers import WholeNumber
from .output import SELECTOR_HELP, emit_json, json_option, kv_key, not_empty, shown_json

_state_option = click.option(
    "--state-dir",
    envvar="CRC_AGENT_STATE_DIR",
    callback=not_empty(),
    help="Agent state directory (default: /var/lib/crc-agent as root, "
    "%ProgramData%\\CloudRemoteControl\\agent on Windows).",
)


class _Finite(click.FloatRange):
    """A ``FloatRange`` that refuses ``nan`` (which passes every comparison and so every
    range) and, with it, any number not finite."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv


# The longest a command here waits. Bounded so that nan, inf and 1e12 are usage errors
# (exit 2), not a socket timeout the platform cannot hold (OverflowError); a week is far
# longer than any script on a machine waits for its master or peers.
MAX_WAIT_SECONDS = 7 * 86400
# --agent-wait: an hour at most, far below the day for which an agent remembers request
# ids, so that a request sent again after a restart is still recognised.
MAX_AGENT_WAIT_SECONDS = 3600


def _state_dir(value: str | None) -> Path:
    if value:
        try:
            return Path(value).resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop (RuntimeError before 3.13)
            raise Unavailable(
                f"no agent can run with state dir {value} ({exc}): check --state-dir"
            ) from None
    from ..agent.platform import current

    return Path(current().default_state_dir())


_hosts_file_option = click.option(
    "--hosts-file",
    envvar="CRC_AGENT_HOSTS_FILE",
    type=click.Path(dir_okay=False),
    help="Hosts syncs write this file instead of the system's (/etc/hosts; "
    "%SystemRoot%\\System32\\drivers\\etc\\hosts on Windows): try them without root.",
)


@click.group()
def agent() -> None:
    """The agent that runs on each machine, and commands for scripts on that machine."""


@agent.command("run")
@click.option("--url", envvar="CRC_URL", help="Server URL (first run only).")
@click.option("--key", envvar="CRC_KEY", help="Single-use enrollment key (first run only).")
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False),
    help="Read the enrollment key from this file (keeps it out of `ps`; first run only: "
    "removed once enrolled).",
)
@click.option(
    "--fingerprint",
    envvar="CRC_FINGERPRINT",
    help="Pinned SHA-256 of the server certificate (sha256:…).",
)
@_state_option
@click.option(
    "--gate-ready", is_flag=True, help="Say ready only when a script calls `crc agent ready`."
)
@click.option(
    "--follow-log",
    "follow_logs",
    multiple=True,
    metavar="PATH",
    help="Stream this log file as progress lines (e.g. "
    "/var/log/cloud-init-output.log); repeatable.",
)
@click.option(
    "--facts-interval",
    type=_Finite(0.1, 86400),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="How often to look for changed facts (addresses); changes are sent.",
)
@click.option(
    "--keep-messages-days",
    type=_Finite(0, 36500),
    default=7.0,
    show_default=True,
    metavar="DAYS",
    help="Forget stored user messages (wait-message) after this many days; 0 keeps them.",
)
@click.option(
    "--keep-messages-mib",
    type=_Finite(0, 65536),
    default=64.0,
    show_default=True,
    metavar="MIB",
    help="Keep at most this many MiB (and 10,000) of stored user messages: past it, the "
    "oldest are forgotten, read ones first; 0 keeps them all.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@_hosts_file_option
@json_option
def run_cmd(
    url: str | None,
    key: str | None,
    key_file: str | None,
    fingerprint: str | None,
    state_dir: str | None,
    gate_ready: bool,
    follow_logs: tuple[str, ...],
    facts_interval: float,
    keep_messages_days: float,
    keep_messages_mib: float,
    log_level: str,
    hosts_file: str | None,
    as_json: bool,
) -> None:
    """Enroll (first run) and stay connected, executing what the master sends.

    One agent per state directory: a second one exits at once (exit 9). Stops on
    SIGTERM/SIGINT, or for good when its machine is revoked (with --json: one line
    {"event": "stopped", ...})."""
    from ..agent.main import run

    run(
        url=url,
        key=key,
        key_file=key_file,
        fingerprint=fingerprint,
        state_dir=state_dir,
        gate_ready=gate_ready,
        follow_logs=follow_logs,
        facts_interval=facts_interval,
        keep_messages_days=keep_messages_days,
        keep_messages_mib=keep_messages_mib,
        log_level=log_level,
        hosts_file=hosts_file,
        as_json=as_json,
    )


_agent_wait_option = click.option(
    "--agent-wait",
    envvar="CRC_AGENT_WAIT",
    type=_Finite(0, MAX_AGENT_WAIT_SECONDS),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="If the agent is not answering (stopped, restarting), wait this long for it "
    "(at most 3600), "
    "saying so on stderr, then fail (exit 6); 0 fails at once. A request the agent "
    "may have carried out before it went away is sent again only if that cannot do it "
    "twice: it changes nothing, or the agent knows its request id (env: CRC_AGENT_WAIT).",
)


def _call(state_dir: str | None, request: dict[str, Any], agent_wait: float) -> dict[str, Any]:
    from ..agent.control import call_through_restarts

    def waiting(note: str) -> None:
        click.echo(f"crc: {note}", err=True)

    return call_through_restarts(_state_dir(state_dir), request, agent_wait, on_wait=waiting)


@agent.command()
@click.argument("text")
@click.option("--percent", type=_Finite(0, 100), help="Progress 0-100.")
@_state_option
@_agent_wait_option
@json_option
def progress(
    text: str, percent: float | None, state_dir: str | None, agent_wait: float, as_json: bool
) -> None:
    """Report a progress line (shown live in `crc wait` and `crc status`)."""
    _call(state_dir, {"op": "progress", "text": text, "percent": percent}, agent_wait)
    if as_json:
        emit_json({"ok": True})


@agent.command()
@_state_option
@_agent_wait_option
@json_option
def ready(state_dir: str | None, agent_wait: float, as_json: bool) -> None:
    """Tell the master this machine is ready (SystemReady)."""
    _call(state_dir, {"op": "ready"}, agent_wait)
    if as_json:
        emit_json({"ok": True})


def _user_type(type_: str) -> str:
    return type_ if type_.startswith("user.") else "user." + type_


@agent.command()
@click.argument("type_", metavar="TYPE")
@click.argument("body", required=False)
@click.option(
    "--to",
    default="master",
    show_default=True,
    help="master, or peers: a machine, a comma list, KEY=VALUE or all. " + SELECTOR_HELP,
)
@_state_option
@_agent_wait_option
@json_option
def emit(
    type_: str, body: str | None, to: str, state_dir: str | None, agent_wait: float, as_json: bool
) -> None:
    """Send data message TYPE (user.NAME) with an optional BODY, a JSON object, to the
    master or to peers. Data only: a machine can never command another.

    A --to that names no machine of the group (or matches none) fails (exit 4) and sends
    nothing; while the agent is not connected or the server cannot be reached (5 s), it
    is sent unchecked."""
    from .jsonarg import json_arg

    parsed = json_arg(body, "BODY")
    if to != "master":
        _check_peers(state_dir, to, agent_wait)
    _call(
        state_dir, {"op": "emit", "type": _user_type(type_), "body": parsed, "to": to}, agent_wait
    )
    if as_json:
        emit_json({"ok": True})


#: How long ``crc agent emit --to PEERS`` waits for the group's machines (the roster,
#: asked of the server) before it sends the message unchecked.
PEERS_CHECK_SECONDS = 5.0


def _check_peers(state_dir: str | None, to: str, agent_wait: float) -> None:
    """Refuse a ``--to`` that names no machine of the group now (NotFound, exit 4), as
    the server would when it routes the message (then only as an ``agent.error`` event,
    the message being sent already). The group's machines come from the server (the
    roster); while the agent is not connected, or the server does not answer within
    ``PEERS_CHECK_SECONDS``, the message is sent unchecked, as before."""
    from ..agent.control import call
    from ..protocol.names import parse_target

    target = parse_target(to)  # a malformed one: exit 2

    def unchecked(why: str) -> None:
        click.echo(
            f"crc: cannot check --to against the group's machines now ({why}): "
            "sending the message anyway; one for no machine of the group is dropped by the "
            "server (an agent.error event)",
            err=True,
        )

    status = _call(state_dir, {"op": "status"}, agent_wait)  # the agent must be running
    if isinstance(status, dict) and status.get("connected") is False:
        unchecked("the agent is not connected to the server")  # no wait on a dead link
        return
    try:
        roster = _call(state_dir, {"op": "peers", "timeout": PEERS_CHECK_SECONDS}, agent_wait)
    except Unavailable as exc:
        try:  # the agent answers (so the server is what cannot be reached)?
            call(_state_dir(state_dir), {"op": "status"}, 10.0)
        except Unavailable:
            raise exc from None
        unchecked(exc.message)
        return
    machines = roster.get("machines") if isinstance(roster, dict) else None
    group = roster.get("group") if isinstance(roster, dict) else None
    if not isinstance(machines, list):
        return  # not the answer expected: the server checks as before
    peers: dict[str, dict[str, str]] = {}
    for m in machines:
        if isinstance(m, dict):
            labels = m.get("labels")
            peers[str(m.get("name"))] = labels if isinstance(labels, dict) else {}
    target.choose(str(group), peers, hint=": see `crc agent peers`")


@agent.command("wait-message")
@click.argument("type_", metavar="TYPE")
@click.option("--from", "sender", help="Only from this sender (master or a peer name).")
@click.option(
    "--timeout",
    type=_Finite(0, MAX_WAIT_SECONDS, min_open=True),
    default=600.0,
    show_default=True,
    help="Seconds to wait (at most 604800, a week).",
)
@_state_option
@_agent_wait_option
@json_option
def wait_message(
    type_: str,
    sender: str | None,
    timeout: float,
    state_dir: str | None,
    agent_wait: float,
    as_json: bool,
) -> None:
    """Wait for a data message TYPE sent to this machine; print its body as JSON (with
    --json: {"type", "from", "body"}).

    Each message is handed out once (the oldest first): a wait that is interrupted
    (Ctrl-C, a script's timeout) takes nothing, and one whose agent restarts goes on
    waiting for the rest of --timeout. An agent not answering when it starts is waited
    for --agent-wait (within --timeout)."""
    import time

    from ..agent.control import AgentGone, NoAgent, call
    from ..protocol.names import check_name

    if sender is not None and sender != "master":  # a typo would wait out --timeout
        try:
            check_name(sender, "machine")
        except InvalidInput as exc:
            raise click.BadParameter(
                f"{exc.message} (the sender: master or a peer's name)", param_hint="--from"
            ) from None
    deadline = time.monotonic() + timeout
    # As every helper: an agent not answering yet (stopped, restarting) is waited for
    # --agent-wait, said on stderr; none ever ran there fails at once. Asked with a
    # status, which changes nothing (a wait-message hands a message over).
    _call(state_dir, {"op": "status"}, min(agent_wait, timeout))
    while True:
        left = max(0.001, deadline - time.monotonic())
        request = {"op": "wait-message", "type": _user_type(type_), "from": sender}
        try:
            reply = call(
                _state_dir(state_dir), {**request, "timeout": left}, left + 10, confirm=True
            )
            break
        except (AgentGone, NoAgent):  # it answered: now restarting (messages are kept)
            if time.monotonic() + 1 >= deadline:
                raise
            time.sleep(1)
        except Unavailable as exc:
            if exc.code != "timeout":
                raise
            # The agent counts the time left (0.4999 s); the user gave --timeout.
            raise Unavailable(
                f"no {_user_type(type_)} message within {timeout:g} s", code="timeout"
            ) from None
    msg = reply["message"]
    if as_json:
        emit_json({"type": msg["type"], "from": msg["from"], "body": msg["body"]})
    else:
        click.echo(shown_json(msg["body"]))


@agent.command()
@_state_option
@_agent_wait_option
@json_option
def peers(state_dir: str | None, agent_wait: float, as_json: bool) -> None:
    """The machines of this machine's group: names, states and addresses."""
    from .output import print_table

    reply = _call(state_dir, {"op": "peers"}, agent_wait)
    if as_json:
        emit_json(
            {"group": reply["group"], "machine": reply["machine"], "machines": reply["machines"]}
        )
        return
    print_table(
        ["MACHINE", "STATE", "PRIVATE IPS", "PUBLIC IP", "HOSTNAME"],
        [
            [
                m["name"],
                m["state"],
                ",".join(m.get("private_ips") or []) or "-",
                m.get("public_ip") or "-",
                m.get("hostname") or "-",
            ]
            for m in reply["machines"]
        ],
    )


@agent.command()
@_state_option
@_agent_wait_option
@json_option
def status(state_dir: str | None, agent_wait: float, as_json: bool) -> None:
    """Show the running agent's machine, group, server and connection."""
    reply = _call(state_dir, {"op": "status"}, agent_wait)
    reply.pop("ok", None)
    if as_json:
        emit_json(reply)
        return
    for k, v in reply.items():
        click.echo(f"{k}: {v}")


@agent.group()
def kv() -> None:
    """The group's key/value store, shared by its machines and its master."""


def _kv_value(text: str) -> object:
    from .jsonarg import json_or_text

    return json_or_text(text, "VALUE")  # a bare word is a string


@kv.command("set")
@click.argument("key", callback=kv_key)
@click.argument("value")
@_state_option
@_agent_wait_option
@json_option
def kv_set(key: str, value: str, state_dir: str | None, agent_wait: float, as_json: bool) -> None:
    """Set KEY to VALUE (JSON, or a plain string): a VALUE starting with {, [ or " must
    be valid JSON (else exit 2)."""
    from ..protocol.names import check_machine_may_write

    check_machine_may_write(key)  # the server's rule, said before the agent is asked
    reply = _call(state_dir, {"op": "kv-set", "key": key, "value": _kv_value(value)}, agent_wait)
    if as_json:
        emit_json({"key": key, "version": reply["version"]})


@kv.command("get")
@click.argument("key", callback=kv_key)
@_state_option
@_agent_wait_option
@json_option
def kv_get(key: str, state_dir: str | None, agent_wait: float, as_json: bool) -> None:
    """Print KEY's value as JSON (exit 4 if it does not exist; with --json:
    {"key", "value", "version", "updated", "by"})."""
    reply = _call(state_dir, {"op": "kv-get", "key": key}, agent_wait)
    reply.pop("ok", None)
    if as_json:
        emit_json(reply)
    else:
        click.echo(shown_json(reply["value"]))


@kv.command("wait")
@click.argument("key", callback=kv_key)
@click.option(
    "--newer-than",
    type=WholeNumber(min=0),
    default=0,
    help="Wait for a version above this one (default: until the key exists).",
)
@click.option(
    "--timeout",
    type=_Finite(0, 300, min_open=True),
    default=300,
    show_default=True,
    help="Seconds (at most 300).",
)
@_state_option
@_agent_wait_option
@json_option
def kv_wait(
    key: str,
    newer_than: int,
    timeout: float,
    state_dir: str | None,
    agent_wait: float,
    as_json: bool,
) -> None:
    """Wait until KEY exists (or changes); print its value as JSON. A wait whose agent
    restarts goes on waiting for the rest of --timeout. An agent not answering when it
    starts is waited for --agent-wait (within --timeout)."""
    import time

    from ..agent.control import AgentGone, NoAgent, call
    from ..errors import TimedOut
    from ..protocol.names import kv_wait_timed_out

    deadline = time.monotonic() + timeout
    # As every helper: an agent not answering yet (stopped, restarting) is waited for
    # --agent-wait, said on stderr; none ever ran there fails at once. Asked with a
    # status, which changes nothing.
    _call(state_dir, {"op": "status"}, min(agent_wait, timeout))
    while True:
        left = max(0.001, deadline - time.monotonic())
        request = {"op": "kv-wait", "key": key, "timeout": left, "newer_than": newer_than}
        try:
            reply = call(_state_dir(state_dir), request, timeout=left + 20)
            break
        except TimedOut:  # said with the --timeout given, not the time left of a retry
            raise TimedOut(kv_wait_timed_out(key, timeout, newer_than)) from None
        except (AgentGone, NoAgent):  # it answered: now restarting, a read asked again
            if time.monotonic() + 1 >= deadline:
                raise
            time.sleep(1)
    if as_json:
        emit_json({"key": key, "value": reply["value"], "version": reply["version"]})
    else:
        click.echo(shown_json(reply["value"]))


@agent.command("install")
@click.option("--url", envvar="CRC_URL", help="Server URL (needed to enroll).")
@click.option("--key", envvar="CRC_KEY", help="Single-use enrollment key (to enroll).")
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False),
    help="Read the key from this file, and delete the file once enrolled.",
)
@click.option(
    "--fingerprint",
    envvar="CRC_FINGERPRINT",
    help="Pinned SHA-256 of the server certificate (sha256:…).",
)
@_state_option
@click.option(
    "--gate-ready",
    is_flag=True,
    help="The service says ready only when a script calls `crc agent ready`.",
)
@_hosts_file_option
@click.option("--restart", is_flag=True, help="Restart the agent if it is running already.")
@click.option(
    "--wait",
    type=_Finite(0, MAX_WAIT_SECONDS),
    default=300.0,
    show_default=True,
    help="Keep retrying an unreachable server this many seconds when enrolling (at most 604800).",
)
@json_option
def install_cmd(
    url: str | None,
    key: str | None,
    key_file: str | None,
    fingerprint: str | None,
    state_dir: str | None,
    gate_ready: bool,
    hosts_file: str | None,
    restart: bool,
    wait: float,
    as_json: bool,
) -> None:
    """Enroll (first time) and run the agent as a system service: a systemd unit on
    Linux, a Windows service (LocalSystem) on Windows. Safe to run again."""
    import os

    from ..agent.install import install_agent
    from ..agent.platform import current

    os.environ.pop("CRC_KEY", None)
    if key_file is not None and key is not None:
        raise InvalidInput("give --key or --key-file, not both")
    report = install_agent(
        current(),
        _state_dir(state_dir),
        url=url,
        key=key,
        key_file=key_file,
        fingerprint=fingerprint,
        gate_ready=gate_ready,
        restart=restart,
        wait=wait,
        hosts_file=hosts_file,
    )
    if as_json:
        emit_json(report)
        return
    enrolled = "enrolled now" if report["enrolled_now"] else "enrolled already"
    click.echo(
        f"machine {report['machine']} of group {report['group']} ({enrolled}); "
        f"service {report['service']} {report['action']} "
        f"({report['definition']}{', updated' if report['definition_changed'] else ''})"
    )


@agent.command("uninstall")
@_state_option
@click.option(
    "--purge",
    is_flag=True,
    help="Also delete the state directory (credential, queue): the machine "
    "cannot reconnect afterwards.",
)
@json_option
def uninstall_cmd(state_dir: str | None, purge: bool, as_json: bool) -> None:
    """Stop and remove the agent's service (the credential stays unless --purge)."""
    from ..agent.install import uninstall_agent
    from ..agent.platform import current

    report = uninstall_agent(current(), _state_dir(state_dir), purge=purge)
    if as_json:
        emit_json(report)
        return
    click.echo(
        f"service {report['service']} "
        f"{'removed' if report['removed'] else 'was not installed'}"
        f"{'; state directory deleted' if report['purged'] else ''}"
    )
    if report["note"]:
        click.echo(report["note"])
