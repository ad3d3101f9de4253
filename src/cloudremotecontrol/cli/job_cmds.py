"""Commands that run jobs and follow them: ``crc run``, ``crc push``, ``crc pull``,
``crc hosts sync``, and ``crc job list / show / cancel``.

Exit codes: these commands pass the targets' exit codes through (the worst of them; 124
timed out, 125 lost, 130 cancelled), so crc's own failures (2-9, docs/reference.md)
could be mistaken for the command's: ``--error-exit N`` makes crc's own failures exit
with N instead (e.g. 255, as ssh does).

Ctrl-C, SIGTERM and SIGHUP while a job runs cancel it on every machine (its process
tree is killed) and wait for the targets to say so; a second one stops waiting. A closed
output (``crc run ... | head -1``) cancels it too, and crc exits 141 at once: noticed
while crc waits (within 5 s), not only at its next write (``outwatch``).
"""

from __future__ import annotations

import contextlib
import logging
import re
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

import click

from ..errors import Unavailable
from . import output
from .linejoin import LineJoiner, Piece
from .numbers import WholeNumber
from .output import (
    SELECTOR_HELP,
    TARGET_HELP,
    ago,
    emit_json,
    json_option,
    print_table,
    safe,
    target_option,
)
from .outwatch import OutputGone, OutputWatch
from .signals import caught, said, stopped_as_by_ctrl_c
from .trailing import TrailingCommand

F = TypeVar("F", bound=Callable[..., Any])

_log = logging.getLogger("crc.cli")

_SHELL_CHARS = frozenset(" \t|&;<>()$`'\"*?[]#~%\n")


def _client() -> Any:
    from ..master.client import Client

    return output.say_stream_breaks(Client.from_profile())


def error_exit_option(fn: F) -> F:
    def remember(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
        output.own_error_exit = value
        return value

    return click.option(
        "--error-exit",
        type=WholeNumber(1, 255),
        metavar="CODE",
        expose_value=False,
        is_eager=True,
        callback=remember,
        help="Exit with CODE when crc itself fails (bad input, not found, unauthorized, "
        "server unreachable), so its own codes never look like the command's (e.g. 255).",
    )(fn)


def _env(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, str]:
    """``--env``'s callback: each KEY=VALUE (split at the first ``=``) into a dict, the
    last of a name winning. The name must be non-empty and, split there, holds no
    ``=``; argv holds no NUL: the protocol's whole rule (``JobRun.env``), so a name the
    agents cannot set is a usage error here, before anything is sent. Other names (a
    space, a dot, lowercase, a leading digit) are set as given: execve and CreateProcess
    take them, and programs use some of them."""
    env: dict[str, str] = {}
    for item in value:
        k, sep, v = item.partition("=")
        if not sep:
            why = "no '=': give KEY=VALUE (VALUE may be empty: KEY=)"
        elif not k:
            why = "the variable's name (before the first '=') is empty"
        else:
            env[k] = v
            continue
        raise click.BadParameter(f"{safe(repr(item[:80]))}: {why}")
    return env


def start_and_follow(
    c: Any,
    start: Callable[[], dict[str, Any]],
    as_json: bool,
    show_output: bool = True,
    announce: Callable[[dict[str, Any]], None] | None = None,
    group: str | None = None,
    prepare: Callable[[], None] | None = None,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Start a job and follow it to the end (``follow_to_end``). ``prepare``: what comes
    before the job is created (a push's hashing and upload): a Ctrl-C, SIGTERM or SIGHUP
    then stops it and crc at once (``_before_the_job``). One while the job is being
    started (or announced) is held until ``follow_to_end`` is ready to cancel the job,
    then cancels it like one that comes later (one just after the announcement must not
    stop crc and leave the job waiting); a second one stops crc at once. A signal crc was
    started with ignored (``nohup``) stays ignored (``signals.caught``). ``group``: the
    job's group, whose machines going offline (and back) while their job is unfinished
    are said on stderr (``_OfflineNotes``)."""
    if prepare is not None:
        _before_the_job(prepare)
    held: list[str] = []

    def hold(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if held:
            raise KeyboardInterrupt(name)
        held.append(name)

    wanted = caught(("SIGINT", "SIGTERM", "SIGHUP"))
    old = {signum: signal.signal(signum, hold) for signum in wanted}

    def restore(signums: list[int]) -> None:
        for signum in signums:
            if signum in old:
                signal.signal(signum, old[signum])

    try:
        started = start()
        # Before the announcement reads the machines' states (``_note_unconnected``):
        # every change after it is then followed, none missed in between.
        since = _event_cursor(c, group) if group is not None else None
        if announce is not None:
            try:
                announce(started)
            except BrokenPipeError:
                _output_closed(c, started["job_id"], started["targets"])
        # Still held until follow_to_end is ready: it then takes SIGTERM and SIGHUP as
        # Ctrl-C, and Ctrl-C's own handler is put back (``ready``).
        watch = (group, since) if group is not None and since is not None else None
        return started, follow_to_end(
            c,
            started,
            as_json,
            show_output,
            held,
            ready=lambda: restore([signal.SIGINT]),
            watch=watch,
        )
    finally:
        restore(wanted)


def _before_the_job(prepare: Callable[[], None]) -> None:
    """Run ``prepare``, what comes before a job is created: a Ctrl-C, SIGTERM or SIGHUP
    stops it at once, saying so in a line (there is no job to cancel); crc then exits
    130 (143, 129)."""
    try:
        with stopped_as_by_ctrl_c():
            prepare()
    except KeyboardInterrupt as exc:
        code = getattr(exc, "exit_code", 130)
        with contextlib.suppress(OSError, ValueError):
            if code == 130 and sys.stderr.isatty():  # the line after the terminal's "^C"
                click.echo(err=True)
            click.echo(
                f"crc: {str(exc) or 'Ctrl-C'}: stopped before the job was created "
                "(nothing to cancel)",
                err=True,
            )
        said(exc)
        raise


def follow_to_end(
    c: Any,
    started: dict[str, Any],
    as_json: bool,
    show_output: bool = True,
    held: list[str] | None = None,
    ready: Callable[[], None] | None = None,
    watch: tuple[str, int] | None = None,
) -> dict[str, dict[str, Any]]:
    """Show a job's events until every target finished; cancel it on Ctrl-C, SIGTERM or
    SIGHUP (and keep following until the targets say they stopped), or at once when
    ``held`` names one that came while the job was being started. ``ready`` is called
    once a Ctrl-C would cancel the job (it puts back Ctrl-C's own handler, before
    ``held`` is looked at). ``watch``: the job's group and the event cursor to follow
    its machines' states from (``_OfflineNotes``). The results by machine."""
    job_id = started["job_id"]
    results: dict[str, dict[str, Any]] = {}
    joiner = LineJoiner()
    cursor = 0
    cancelled = False
    notes = _OfflineNotes(c, watch, started["targets"], results) if watch else None
    closed = OutputWatch(c)
    with (
        stopped_as_by_ctrl_c(once=False),
        _cancelled_if_output_closed(c, job_id, started["targets"]),
        closed,
        _flushed(joiner),
        notes if notes is not None else contextlib.nullcontext(),
    ):
        while True:
            left = [t for t in started["targets"] if t not in results]
            try:
                if ready is not None:
                    ready()
                    ready = None
                if held and not cancelled:
                    why = held.pop()
                    raise KeyboardInterrupt("Ctrl-C" if why == "SIGINT" else why)
                closed.check()
                for ev in c.follow_job(job_id, left, since=cursor):
                    cursor = max(cursor, ev.cursor)
                    if show_output or ev.type != "job.output":
                        show_job_event(ev, results, as_json, joiner)
                if any(t not in results for t in started["targets"]):
                    closed.check()  # its follow halted by the watch
                return results
            except Unavailable as exc:
                # Its stream gave up (the server away for longer than a resume lasts):
                # the job is the server's, and goes on there.
                fate = "was being cancelled" if cancelled else "was not cancelled"
                raise type(exc)(
                    f"{exc.message}; job {job_id} {fate} and goes on at the server: "
                    f"`crc job show {job_id}` shows its results",
                    code=exc.code,
                    **exc.details,
                ) from None
            except KeyboardInterrupt as exc:
                if cancelled:
                    raise
                cancelled = True
                why = str(exc) or "Ctrl-C"
                click.echo(
                    f"crc: {why}: cancelling job {job_id} on every machine (again to stop waiting)",
                    err=True,
                )
                try:
                    c.cancel_job(job_id)
                except Unavailable as gone:  # the server away: the job goes on there
                    raise type(gone)(
                        f"{gone.message}; job {job_id} was not cancelled and may still be "
                        f"running: `crc job cancel {job_id}` once the server is back",
                        code=gone.code,
                        **gone.details,
                    ) from None


#: Held while a line is written to crc's stdout or stderr: ``_OfflineNotes`` writes its
#: notes from a thread of its own, never into the middle of a line.
_say = threading.Lock()


def _event_cursor(c: Any, group: str) -> int | None:
    """The group's latest event cursor, or None if it cannot be read (the notes it is
    for are only a hint: the job is started, follow it)."""
    from ..errors import CrcError

    try:
        return int(c.event_cursor(group))
    except CrcError:
        return None


class _OfflineNotes:
    """Says on stderr, once per going, when a target's machine goes offline before its
    job ended (its agent killed, the machine gone): crc goes on waiting for its result,
    which the agent delivers when it reconnects, and would otherwise wait without a
    word. Says too when it is back. Follows the group's ``machine.state`` events from
    cursor ``since`` on a thread of its own, with a client of its own (a client is not
    shared across threads), while the job's events are followed; a note only, so a
    stream that fails ends the notes, never the job's following."""

    def __init__(
        self,
        c: Any,
        watch: tuple[str, int],
        targets: list[str],
        results: dict[str, dict[str, Any]],
    ) -> None:
        self.group, self.since = watch
        self.targets = set(targets)
        self.results = results  # filled by the follower: a finished target is not noted
        self.away: set[str] = set()
        self.stop = threading.Event()
        self.client: Any = None
        try:
            self.client = c._sibling()
            self.client.on_stream_break = None  # the job's own stream says those
        except Exception:  # noqa: BLE001 -- only a note: follow the job without it
            self.client = None
        self.thread = threading.Thread(target=self._read, name="crc-offline-notes", daemon=True)

    def __enter__(self) -> _OfflineNotes:
        if self.client is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # The reader ends at the stream's next event or keepalive (a daemon thread:
        # crc does not wait for it).
        self.stop.set()
        if self.client is not None:
            self.client.halt()

    def _read(self) -> None:
        try:
            with self.client as c:
                for ev in c.events(
                    self.group,
                    since=self.since,
                    follow=True,
                    keepalive=True,
                    types=("machine.state",),
                ):
                    if self.stop.is_set():
                        return
                    if ev is not None:
                        self.saw(ev.get("machine"), (ev.get("data") or {}).get("state"))
        except Exception:  # noqa: BLE001 -- only a note: the job's own stream goes on
            _log.debug("machine offline notes ended", exc_info=True)

    def saw(self, machine: Any, state: Any) -> None:
        """Machine ``machine`` is now in ``state``: say so if it matters to the job."""
        if machine not in self.targets or machine in self.results or self.stop.is_set():
            return
        if state == "offline" and machine not in self.away:
            self.away.add(machine)
            self._say(
                f"crc: machine {safe(machine)} went offline before its job ended; its "
                "result comes when it reconnects (Ctrl-C cancels the job, a second one "
                "stops waiting)"
            )
        elif state in ("enrolled", "ready") and machine in self.away:
            self.away.discard(machine)
            self._say(f"crc: machine {safe(machine)} is back online")

    def _say(self, text: str) -> None:
        with _say, contextlib.suppress(OSError, ValueError):  # stderr closed: a note only
            click.echo(text, err=True)


def _output_closed(c: Any, job_id: str, targets: list[str]) -> NoReturn:
    """The reader of crc's output went away (``crc run ... | head -1``): cancel the job on
    every machine, as ssh's remote command ends with its connection, and exit 141
    without waiting for the targets to confirm (nobody reads what they would say). Says
    what the cancel did: on every machine, on those that had not finished, or nothing
    (every target had finished: the job is not said to be cancelled)."""
    from ..errors import CrcError

    output.quiet_if_closed(sys.stdout)
    try:
        left = list(c.cancel_job(job_id).get("cancelling") or [])
    except CrcError as exc:
        note = f"crc: output closed; cancelling job {job_id} failed: {safe(exc.message)}"
    else:
        show = f"(`crc job show {job_id}` tells when they stopped)"
        if not left:
            note = (
                f"crc: output closed: job {job_id}: nothing left to cancel "
                "(every target has finished)"
            )
        elif set(left) >= set(targets):
            note = f"crc: output closed: cancelled job {job_id} on every machine {show}"
        else:
            note = (
                f"crc: output closed: cancelled job {job_id} on {', '.join(left)} "
                f"(the others had finished) {show}"
            )
    with contextlib.suppress(OSError):
        click.echo(note, err=True)
    output.quiet_if_closed(sys.stderr)
    raise SystemExit(output.OUTPUT_CLOSED_EXIT)


@contextlib.contextmanager
def _cancelled_if_output_closed(c: Any, job_id: str, targets: list[str]) -> Iterator[None]:
    try:
        yield
    except (BrokenPipeError, OutputGone):
        _output_closed(c, job_id, targets)


def _write_lines(pieces: list[Piece]) -> None:
    # The command's own output: as it wrote it into a file or a pipe (what the user
    # asked for); on a terminal with its colours only, every other control escaped (a
    # machine's output is hostile input: it could clear the screen, retitle the window
    # or fake a line), unless `crc run --raw`. The prefix is a checked name. A piece of
    # a line (no end) is printed as a line of its own: the next printed line with the
    # same prefix goes on with it.
    from ..terminal import shown_output

    if not pieces:
        return
    streams = set()
    shown: dict[Any, bool] = {}
    with _say:
        for machine, stream, line in pieces:
            out = sys.stdout if stream == "stdout" else sys.stderr
            if out not in shown:
                shown[out] = not output.raw_output and _is_terminal(out)
            text = line[:-1] if line.endswith("\n") else line
            out.write(f"[{machine}] {shown_output(text) if shown[out] else text}\n")
            streams.add(out)
        for out in streams:
            out.flush()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # closed, or no file
        return False


def _raw_option(fn: F) -> F:
    def remember(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
        output.raw_output = value
        return value

    return click.option(
        "--raw",
        is_flag=True,
        expose_value=False,
        callback=remember,
        help="Print the command's output to a terminal as it is, escape sequences "
        "included (by default a terminal gets its colours, other controls escaped: "
        "for machines you trust). Files and pipes always get it as it is.",
    )(fn)


@contextlib.contextmanager
def _flushed(joiner: LineJoiner) -> Iterator[None]:
    try:
        yield
    finally:
        _write_lines(joiner.flush())


def show_job_event(
    ev: Any,
    results: dict[str, dict[str, Any]],
    as_json: bool,
    joiner: LineJoiner | None = None,
) -> None:
    """Show one event of a job. ``joiner`` holds, by machine and stream, the start of a
    line whose end has not come yet (in bounded memory: ``linejoin``)."""
    kind, m, data = ev["type"], ev.get("machine"), ev["data"]
    if joiner is None:
        joiner = LineJoiner()
    if kind == "job.output":
        if as_json:
            emit_json({"machine": m, "stream": data["stream"], "data": data["data"]})
            return
        _write_lines(joiner.feed(m, data["stream"], data["data"]))
        return
    result = ev.result
    if result is None:
        return
    _write_lines(joiner.flush(result.machine))
    results[result.machine] = result.to_dict()
    if as_json:
        emit_json(
            {
                "machine": m,
                "status": result.status,
                "exit_code": result.exit_code,
                "reason": result.reason,
                "job_id": ev.get("job_id"),
            }
        )
        return
    extra = f": {safe(result.reason)}" if result.reason else ""
    code = f" (exit {result.exit_code})" if result.exit_code is not None else ""
    with _say:
        click.echo(f"[{m}] {result.status}{code}{extra}", err=True)


def _announce(started: dict[str, Any], group: str, as_json: bool) -> None:
    if as_json:
        emit_json({"job_id": started["job_id"], "group": group, "targets": started["targets"]})
    else:
        click.echo(f"job {started['job_id']} on {', '.join(started['targets'])}", err=True)


def _note_unconnected(
    c: Any, started: dict[str, Any], group: str, deliver_within: bool = False
) -> None:
    """Say on stderr which targets are not connected (offline, or never enrolled): the
    job waits for them, else crc would sit there saying nothing. ``deliver_within``:
    the command has that option (``crc run``), which the note then names."""
    from ..errors import CrcError
    from .master_cmds import key_expired

    try:
        machines = {m["name"]: m for m in c.group(group)["machines"]}
    except CrcError:
        return  # only a hint: the job is started, follow it
    away = [
        t for t in started["targets"] if machines.get(t, {}).get("state") in ("offline", "pending")
    ]
    if away:
        shown = ", ".join(
            f"{safe(t)} ({safe(machines[t]['state'])}"
            f"{', key expired' if key_expired(machines[t]) else ''})"
            for t in away
        )
        limit = "--deliver-within sets a limit, " if deliver_within else ""
        click.echo(
            f"crc: not connected: {shown}; the job waits until they connect "
            f"({limit}Ctrl-C cancels it)",
            err=True,
        )
    # Its key expired: such a machine connects only once a new key enrolls it.
    expired = [t for t in away if key_expired(machines[t])]
    if expired:
        names = ", ".join(safe(t) for t in expired)
        which = "its key" if len(expired) == 1 else "their keys"
        click.echo(
            f"crc: {names}: {which} expired unused, so the job waits until a new key "
            f"enrolls {'it' if len(expired) == 1 else 'them'}: `crc bootstrap {safe(group)} "
            f"{safe(expired[0]) if len(expired) == 1 else 'MACHINE'} --os linux|windows` "
            "issues one (in the machine's new startup script)",
            err=True,
        )


def _announce_job(
    c: Any, started: dict[str, Any], group: str, as_json: bool, deliver_within: bool = False
) -> None:
    """What every job command (run, push, pull, hosts sync) says once its job is
    started: its id and targets, and which of them are not connected."""
    _announce(started, group, as_json)
    _note_unconnected(c, started, group, deliver_within)


@click.command(cls=TrailingCommand)
@click.argument("name", metavar="GROUP")
@click.option("--to", "to", required=True, callback=target_option, help=TARGET_HELP)
@click.option("--timeout", help="Kill the command after this long (default 10m).")
@click.option(
    "--shell",
    type=click.Choice(["bash", "sh", "powershell", "cmd"]),
    help="Run COMMAND as one string in this shell (default: several words run as argv, "
    "without a shell; one string with shell syntax runs in the machine's default shell).",
)
@click.option(
    "--env",
    "env",
    multiple=True,
    callback=_env,
    metavar="KEY=VALUE",
    help="A variable for the command (repeatable); KEY is set as given.",
)
@click.option("--cwd", help="Working directory on the machine.")
@click.option(
    "--max-concurrency", metavar="N|P%", help="At most N (or P% of the targets) running at once."
)
@click.option(
    "--max-errors",
    metavar="N|P%",
    help="Once N (or P%) targets failed, start no other: the rest end skipped.",
)
@click.option("--batch-wait", metavar="DURATION", help="How long a finished target keeps its slot.")
@click.option(
    "--canary",
    metavar="N",
    help="Run on the first N targets; the rest only if all of them succeed.",
)
@click.option(
    "--deliver-within",
    metavar="DURATION",
    help="Targets not reached by then (offline machines) end expired.",
)
@_raw_option
@error_exit_option
@json_option
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(
    name: str,
    to: str,
    timeout: str | None,
    shell: str | None,
    env: dict[str, str],
    cwd: str | None,
    max_concurrency: str | None,
    max_errors: str | None,
    batch_wait: str | None,
    canary: str | None,
    deliver_within: str | None,
    as_json: bool,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND on machines; output streams live, prefixed by machine.

    Several words run as argv, without a shell; one quoted string with shell syntax runs
    in the machine's default shell (bash/sh on Linux, cmd on Windows); --shell picks one.
    crc run's options go before COMMAND (an unknown one there is refused); what follows
    COMMAND's first word, or `--`, is COMMAND's own.

    Exit code: the worst of the targets (their exit code; 124 timed out, 125 lost,
    130 cancelled); crc's own failures 2-9, or --error-exit's CODE. Ctrl-C, SIGTERM
    and SIGHUP cancel the job on every machine, and so does closing crc's output
    (`| head -1`: exit 141). With --json the first line is {"job_id", "group",
    "targets"}, then output lines and one result line per target.

    A target not connected, or whose machine goes offline before its job ended, is said
    on stderr: crc waits for its result, which comes when the machine (re)connects.

    A line longer than 65,536 characters is printed in pieces of that size, each with
    the [machine] prefix; the line goes on in the next one with the same prefix.
    COMMAND's standard input is empty (crc reads none of its own: `crc push` a file
    first, or `crc shell` for a program that asks questions).

    Rate control (--max-concurrency, --max-errors, --batch-wait, --canary,
    --deliver-within) is enforced by the server: if crc run stops, the job goes on by
    the same rules. Targets it gives up on end skipped or expired (exit code 125; a
    skipped one only when no other target has a code: the failure they were skipped
    for is the exit code).
    """
    from ..master.client import worst_exit_code
    from ..protocol.rollout import Rollout
    from .master_cmds import _duration as duration

    if not (" ".join(command) if shell else command[0]).strip():
        raise click.UsageError(
            "empty COMMAND: give the program to run and its arguments after `--` "
            "(or one string for the shell)",
            click.get_current_context(),
        )
    seconds = duration(timeout)
    if seconds is not None:  # refused here as crc wait refuses it, not by the server
        from ..master.waits import check_timeout

        check_timeout(seconds, "--timeout", given=timeout)
    spec: dict[str, Any] = {"env": env, "cwd": cwd, "timeout": seconds}
    rules = {
        "max_concurrency": max_concurrency,
        "max_errors": max_errors,
        "batch_wait": duration(batch_wait),
        "canary": canary,
        "deliver_within": duration(deliver_within),
    }
    rollout = Rollout.from_body(rules, flags=True)  # refused here (exit 2), as the server would
    if rollout is not None:
        spec.update(rollout.to_body())
    if shell:
        spec.update(command=" ".join(command), shell=shell)
    elif len(command) == 1 and any(c in command[0] for c in _SHELL_CHARS):
        # One quoted string such as 'apt-get update && apt-get install -y mysql-server':
        # the machine's own shell runs it (bash or sh on Linux, cmd on Windows).
        spec.update(command=command[0], shell=None)
    else:
        spec.update(argv=list(command))
    with _client() as c:
        _, results = start_and_follow(
            c,
            lambda: dict(c.start_job(name, to, **spec)),
            as_json,
            announce=lambda started: _announce_job(c, started, name, as_json, True),
            group=name,
        )
    sys.exit(worst_exit_code(results))


@click.group()
def hosts() -> None:
    """Keep the machines' hosts files listing their peers."""


@hosts.command("sync")
@click.argument("name", metavar="GROUP")
@click.option(
    "--to",
    "to",
    default="all",
    show_default=True,
    callback=target_option,
    help="Which machines to update: a machine, a comma list, KEY=VALUE or all. " + SELECTOR_HELP,
)
@click.option(
    "--ip",
    type=click.Choice(["auto", "private", "public"]),
    default="auto",
    show_default=True,
    help="Address to list; auto: a peer's private one where it shares a private network "
    "with the machine written to, else its public one.",
)
@error_exit_option
@json_option
def hosts_sync(name: str, to: str, ip: str, as_json: bool) -> None:
    """Write `IP name name.GROUP` for every machine into each machine's hosts file (a
    managed block; the rest of the file is kept byte for byte)."""
    from ..master.client import worst_exit_code

    with _client() as c:
        _, results = start_and_follow(
            c,
            lambda: dict(c.hosts_sync(name, to, ip)),
            as_json,
            announce=lambda started: _announce_job(c, started, name, as_json),
            group=name,
        )
    sys.exit(worst_exit_code(results))


@click.command()
@click.argument("name", metavar="GROUP")
@click.option("--to", "to", required=True, callback=target_option, help=TARGET_HELP)
@click.argument("local", type=click.Path(exists=True, dir_okay=False))
@click.argument("remote")
@click.option(
    "--mode",
    help="Octal file mode on the machines, e.g. 0640 (default: a file replaced keeps its "
    "own, a new one gets LOCAL's less the machine's umask).",
)
@click.option("--owner", help="USER or USER:GROUP on the machines (Linux).")
@error_exit_option
@json_option
def push(
    name: str, to: str, local: str, remote: str, mode: str | None, owner: str | None, as_json: bool
) -> None:
    """Copy LOCAL to REMOTE (an absolute path) on machines: uploaded once, fetched by
    each machine over HTTPS, verified by SHA-256, written atomically. A REMOTE ending
    in / or naming a directory gets the file in it, under LOCAL's name.

    Says the job's id on stderr, and which machines are not connected: the job waits
    for them (Ctrl-C cancels it)."""
    from ..master.client import push_fields, worst_exit_code

    # REMOTE ending in a separator: the file goes into that directory, under its name.
    remote, new_mode, leaf = push_fields(local, remote)
    uploaded: list[str] = []  # the file's SHA-256, once uploaded
    with _client() as c:
        _, results = start_and_follow(
            c,
            lambda: c._push_job(name, to, uploaded[0], remote, mode, owner, new_mode, leaf),
            as_json,
            announce=lambda started: _announce_job(c, started, name, as_json),
            group=name,
            prepare=lambda: uploaded.append(c._push_upload(name, to, local, remote, mode, owner)),
        )
    sys.exit(worst_exit_code(results))


@click.command()
@click.argument("name", metavar="GROUP")
@click.option("--from", "machine", required=True, help="The machine to copy from.")
@click.argument("remote")
@click.argument("local", type=click.Path(dir_okay=False))
@error_exit_option
@json_option
def pull(name: str, machine: str, remote: str, local: str, as_json: bool) -> None:
    """Copy REMOTE from one machine to LOCAL here (verified by SHA-256).

    Says the job's id on stderr, and whether the machine is not connected: the job
    waits for it (Ctrl-C cancels it)."""
    from ..master.client import check_download_target, worst_exit_code
    from ..protocol.fields import check_push_path

    check_push_path(remote)  # as a push's: no control characters
    check_download_target(local)  # before the job: it would run for nothing
    with _client() as c:
        started, results = start_and_follow(
            c,
            lambda: dict(c.start_pull(name, machine, remote)),
            as_json,
            show_output=False,
            announce=lambda started: _announce_job(c, started, name, as_json),
            group=name,
        )
        rc = worst_exit_code(results)
        if rc == 0:
            with stopped_as_by_ctrl_c():  # SIGTERM / SIGHUP too: the partial file removed
                info = c.download_pulled(started["job_id"], local)
            if as_json:
                emit_json({"machine": machine, "path": local, **info})
            else:
                click.echo(f"{local}: {info['size']} bytes from {machine}")
    sys.exit(rc)


@click.group()
def job() -> None:
    """List, show and cancel jobs (what `crc run`, push, pull and hosts sync start)."""


#: Jobs that are about one file, which their spec names (``path``).
_FILE_KINDS = ("file.put", "file.get")


def _what(spec: dict[str, Any]) -> str:
    """What a job does, as ``crc job show`` prints it after its kind: the command (an
    argv quoted as a shell would need it, so that ``a b`` as one argument is not shown
    as two and the line can be pasted back), or the path a push writes or a pull reads
    (raw: the caller escapes it)."""
    if spec.get("argv"):
        return shlex.join(str(arg) for arg in spec["argv"])
    if spec.get("command"):
        return str(spec["command"])
    if spec.get("type") in _FILE_KINDS and spec.get("path"):
        return str(spec["path"])
    return str(spec.get("type") or "-")


def _listed_what(job: dict[str, Any]) -> str:
    """The WHAT of ``crc job list``: a command, or a file job's kind and path."""
    what = _what(job)
    if job.get("type") in _FILE_KINDS and job.get("path"):
        return f"{job['type']} {what}"
    return what


_JOB_ID = re.compile(r"[0-9a-fA-F]{32}")


def _job_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A job id as the server makes them (32 hex digits), refused here otherwise: a
    path such as ``../x`` would only get a puzzling answer from the server."""
    if not _JOB_ID.fullmatch(value):
        shown = safe(repr(value if len(value) <= 64 else value[:64] + "..."))
        raise click.BadParameter(
            f"not a job id: {shown} (a job id is 32 hex digits, as `crc run` and "
            "`crc job list` print)"
        )
    return value.lower()


@job.command("list")
@click.argument("name", metavar="GROUP")
@click.option("--limit", type=WholeNumber(1, 1000), default=20, show_default=True)
@json_option
def job_list(name: str, limit: int, as_json: bool) -> None:
    """The latest jobs of group GROUP, oldest first."""
    with _client() as c:
        jobs = c.list_jobs(name, limit)
    if as_json:
        emit_json({"group": name, "jobs": jobs})
        return
    print_table(
        ["JOB", "STARTED", "BY", "TARGET", "STATUS", "WHAT"],
        [
            [
                j["job_id"],
                ago(j["created"]),
                j["by"],
                j["target"],
                ", ".join(f"{n} {s}" for s, n in sorted(j["statuses"].items())),
                _listed_what(j)[:60],
            ]
            for j in jobs
        ],
    )


@job.command("show")
@click.argument("job_id", callback=_job_id)
@json_option
def job_show(job_id: str, as_json: bool) -> None:
    """A job: what it runs, and each target's status, exit code and reason."""
    with _client() as c:
        j = c.job(job_id)
    if as_json:
        emit_json(j)
        return
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j["created"]))
    click.echo(f"job {j['job_id']} in group {j['group']}, started {started} by {j['by']}")
    click.echo(f"{j['spec'].get('type', 'job.run')}: {safe(_what(j['spec']))}")
    if j.get("rollout"):  # rate control, as the server applies it
        rules = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in j["rollout"].items())
        click.echo(f"rate control: {safe(rules)}")
    print_table(
        ["MACHINE", "STATUS", "EXIT", "UPDATED", "REASON"],
        [
            [
                t["machine"],
                t["status"],
                "-" if t["exit_code"] is None else str(t["exit_code"]),
                ago(t["updated"]),
                t.get("reason") or "-",
            ]
            for t in j["targets"]
        ],
    )


@job.command("cancel")
@click.argument("job_id", callback=_job_id)
@json_option
def job_cancel(job_id: str, as_json: bool) -> None:
    """Cancel JOB_ID on every machine where it has not finished (its processes are
    killed); `crc job show` tells when they stopped."""
    with _client() as c:
        out = c.cancel_job(job_id)
    left = list(out["cancelling"])  # unfinished when the server took the cancel
    if as_json:
        emit_json({"job_id": out["job_id"], "cancelling": left})
    elif left:
        click.echo(f"cancelling job {job_id} on {', '.join(left)}")
    else:
        click.echo(f"job {job_id}: nothing left to cancel (every target has finished)")
