"""``crc wait``: until a group's machines are ready (a live table on a terminal, one
line per change in a pipe, JSON lines with --json), or until a machine sends a message.

Which messages ``--message`` counts is the SDK's rule (master/waits.py, docs/sdk.md):
from each machine, one sent after the last command started there, or after ``--since``.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import click

from ..errors import InvalidInput
from ..protocol.fields import MAX_SEQ
from .numbers import WholeNumber
from .output import emit_json, json_option, safe, shown_json
from .signals import stopped_as_by_ctrl_c

_STATE_STYLE = {
    "ready": "green",
    "pending": "yellow",
    "enrolled": "cyan",
    "offline": "red",
    "revoked": "red",
}


class LiveTable:
    """One row per machine (state, latest progress), redrawn in place (rich Live)."""

    def __init__(self, group: str, states: dict[str, str], progress: dict[str, str]) -> None:
        from rich.console import Console
        from rich.live import Live

        self.group = group
        self.states = states
        self.progress = progress
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._live = Live(
            console=Console(stderr=False),
            auto_refresh=True,
            refresh_per_second=4,
            get_renderable=self._render,
        )

    def __enter__(self) -> LiveTable:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.refresh()
        self._live.stop()

    def refresh(self) -> None:
        self._live.refresh()

    def _render(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        with self._lock:
            ready = sum(1 for s in self.states.values() if s == "ready")
            title = Text(
                f"{self.group}: {ready}/{len(self.states)} ready "
                f"({time.monotonic() - self.started:.0f}s)",
                style="bold",
            )
            table = Table(
                "MACHINE", "STATE", "PROGRESS", box=None, title=title, title_justify="left"
            )
            for name in sorted(self.states):
                state = self.states[name]
                table.add_row(
                    Text(name, style="bold"),
                    Text(state, style=_STATE_STYLE.get(state, "")),
                    Text(safe(self.progress.get(name, "")), overflow="ellipsis", no_wrap=True),
                )
        return table


@click.command()
@click.argument("name", metavar="GROUP")
@click.option("--machines", help="Only these machines (comma list).")
@click.option(
    "--timeout",
    default="15m",
    show_default=True,
    help="Give up after this long (at most 7d, as `crc run --timeout`).",
)
@click.option(
    "--message",
    "message_type",
    help="Instead: wait for a data message TYPE from a machine (`crc agent emit TYPE`); "
    "print its body.",
)
@click.option("--from", "sender", help="With --message: only from this machine.")
@click.option(
    "--since",
    type=WholeNumber(0, MAX_SEQ),
    help="With --message: only messages after this event cursor (each message printed "
    "says its cursor). Default: messages sent since the last command started on the "
    "machine.",
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
    --message, until a machine sends that message).

    With --json, JSON lines: {"group", "ready": false, "machines", "states"} first (if
    some are not ready), each machine.state or progress event as `crc events --json`
    prints it, then {"group", "ready": true, "machines"}.

    A message counts if its machine sent it after the last command (`crc run`, a
    scenario step) started there, or after --since CURSOR: so the message a command
    ends with is found even if it came before `crc wait` started.

    \b
    Examples:
      crc wait lab                                # every machine ready (15m at most)
      crc wait lab --machines web,db --timeout 30m
      crc wait lab --message user.done --from web # print the message's body
    """
    from ..master.waits import check_timeout
    from .master_cmds import _duration
    from .master_cmds import message_type as _message_type

    # 1e30, 10**20: a typo, not a wait; refused as the SDK refuses it.
    seconds = check_timeout(_duration(timeout), "--timeout", given=timeout)
    if message_type is not None:
        if machines is not None:
            raise click.UsageError("--machines does not go with --message: use --from MACHINE")
        message_type = _message_type(message_type, "--message")
        if sender is not None:
            (sender,) = _machine_list(sender, "--from", one=True)
        # SIGTERM and SIGHUP (`kill`, a closed terminal, a cancelled CI job) end the wait
        # as Ctrl-C does, `crc: interrupted` and 128 + the signal, rather than killing crc
        # without a word.
        with stopped_as_by_ctrl_c():
            _wait_message(name, message_type, sender, since, seconds, as_json)
        return
    if sender or since is not None:
        raise click.UsageError("--from and --since go with --message")
    chosen = None
    if machines is not None:
        chosen = _machine_list(machines)
    with stopped_as_by_ctrl_c():  # as above
        _wait_ready(name, chosen, seconds, as_json)


def _wait_ready(name: str, chosen: list[str] | None, seconds: float, as_json: bool) -> None:
    from ..master.follow import follow_events
    from ..master.waits import ReadyWait
    from .master_cmds import _client

    deadline = time.monotonic() + seconds
    with _client() as c:
        try:
            cursor = c.event_cursor(name)
            wait = ReadyWait(c.group(name), chosen)
            if not wait.done:
                live = sys.stdout.isatty() and not as_json
                states = {m: wait.states[m] for m in wait.wanted}
                progress = {m: wait.progress.get(m, "") for m in wait.wanted}
                table = LiveTable(name, states, progress) if live else None
                if as_json:  # where things stand: the last line's shape, not yet ready
                    emit_json(
                        {
                            "group": name,
                            "ready": False,
                            "machines": sorted(wait.wanted),
                            "states": dict(sorted(states.items())),
                        }
                    )
                elif table is None:
                    for m in sorted(wait.wanted):  # where things stand, then what changes
                        prog = wait.progress.get(m)
                        click.echo(f"[{m}] {wait.states[m]}" + (f": {safe(prog)}" if prog else ""))
                    sys.stdout.flush()
                try:
                    if table is not None:
                        table.__enter__()
                    # The events come on a thread of their own, and a tick at least every
                    # 0.2 s: the deadline is kept, and Ctrl-C heard, however quiet the group.
                    for ev in follow_events(c._sibling, name, cursor):
                        if ev is not None and wait.feed(ev):
                            m = ev["machine"]
                            if as_json:
                                emit_json(ev)
                            elif table is not None:
                                states[m] = wait.states[m]
                                progress[m] = wait.progress.get(m, "")
                                table.refresh()
                            else:
                                _show_line(ev)
                        if wait.done:
                            break
                        if time.monotonic() > deadline:
                            raise wait.timeout_error(seconds)
                    else:
                        raise c._stream_ended(name)
                finally:
                    if table is not None:
                        table.__exit__()
        except InvalidInput:  # a machine revoked: by the deletion of the group?
            gone = c._gone(name)
            if gone is None:
                raise
            raise gone from None
    if as_json:
        emit_json({"group": name, "ready": True, "machines": sorted(wait.wanted)})
    else:
        click.echo(f"all {len(wait.wanted)} machine(s) of {name} are ready")


def _machine_list(machines: str, option: str = "--machines", one: bool = False) -> list[str]:
    """``--machines a,b`` (``--from a``: ``one``) as names: a usage error (exit 2) for a
    value that is no comma list of machine names (``'a b'``, ``'a;b'``, ``'A'``, ``''``),
    before the server is asked, rather than "no machine 'a b' in group" (exit 4) for a
    list mistyped."""
    from ..protocol.names import check_name

    chosen = [m.strip() for m in machines.split(",") if m.strip()]
    if not chosen:
        example = "web" if one else "web,db"
        raise click.BadParameter(f"names no machine: give e.g. {example}", param_hint=option)
    if one and len(chosen) > 1:
        raise click.BadParameter("names more than one machine: give one", param_hint=option)
    for m in chosen:
        if any(c.isspace() for c in m):
            how = "give one name" if one else "separate the names with commas (web,db)"
            raise click.BadParameter(f"{m!r} is not a machine name: {how}", param_hint=option)
        try:
            check_name(m, "machine")
        except InvalidInput as exc:
            raise click.BadParameter(exc.message, param_hint=option) from None
    return chosen


def _show_line(ev: Any) -> None:
    data = ev["data"]
    if ev["type"] == "machine.state":
        click.echo(f"[{ev['machine']}] {data['state']}")
    else:
        pct = data.get("percent")
        pct_text = f" ({pct:.0f}%)" if isinstance(pct, (int, float)) else ""
        click.echo(f"[{ev['machine']}] {safe(data.get('text'))}{pct_text}")
    sys.stdout.flush()


def _wait_message(
    name: str,
    type_: str,
    sender: str | None,
    since: int | None,
    seconds: float,
    as_json: bool,
) -> None:

    from .master_cmds import _client

    with _client() as c:
        msg = c.wait_message(name, type_, sender, since, seconds)
    if as_json:
        emit_json(msg.to_dict())
        return
    click.echo(shown_json(msg.body))
    click.echo(
        f"crc: {msg.type} from {msg.sender} (cursor {msg.cursor}); the next one: "
        f"crc wait {name} --message {msg.type}"
        + (f" --from {sender}" if sender else "")
        + f" --since {msg.cursor}",
        err=True,
    )
