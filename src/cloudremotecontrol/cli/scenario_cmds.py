"""``crc up`` and ``crc down``: run a scenario file (docs/scenarios.md), tear it down."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import click

from ..errors import Conflict, CrcError, InvalidInput, NotFound, Unauthorized, Unavailable
from .numbers import WholeNumber
from .output import json_option
from .signals import said, stopped_as_by_ctrl_c


def _provider_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A registered provider's name (the registry is read only when the option is used)."""
    if value is None:
        return None
    from ..providers import provider_names

    names = provider_names()
    if value not in names:
        raise click.BadParameter(f"{value!r} is not one of: {', '.join(names)}")
    return value


@click.command()
@click.argument(
    "scenario_file", metavar="SCENARIO.yaml", type=click.Path(exists=True, dir_okay=False)
)
@click.option(
    "--rerun",
    is_flag=True,
    help="Run every step again, also those that succeeded in an earlier `crc up`.",
)
@click.option(
    "--parallel",
    type=WholeNumber(1, 64),
    default=8,
    show_default=True,
    help="At most this many steps at once.",
)
@json_option
def up(scenario_file: str, rerun: bool, parallel: int, as_json: bool) -> None:
    """Create the scenario's group and machines, wait until they are ready (live
    progress), run its steps and print a summary.

    Run it again after a failure, a crash or Ctrl-C: it resumes (no machine is made
    twice; steps that succeeded are not run again unless changed or --rerun).
    Exit code: 0 if every step succeeded, 1 if one failed or was skipped, 2 for an
    invalid file, 5 when another `crc up` or `crc down` of it runs or it needs `crc down`
    first, 6 when the server cannot be reached or machines are not ready in time, 8 for
    a provider error (a group it made before any machine is deleted again), 130 on Ctrl-C,
    143 on SIGTERM, 129 on SIGHUP (docs/scenarios.md, "Output for programs").

    \b
    Examples:
      crc up lab.yaml                   # run it (again after a failure: resumes)
      crc up lab.yaml --rerun           # run every step again
      crc up lab.yaml --json > up.jsonl # JSON lines, for a program to read
    """
    from ..master.profile import load_profile
    from ..master.scenario.model import load_scenario
    from ..master.scenario.runner import DownFirst, Runner
    from ..providers import make_provider
    from .scenario_view import make_view

    scenario = load_scenario(scenario_file)
    profile = load_profile()
    with (
        stopped_as_by_ctrl_c(),
        make_provider(scenario.provider, scenario.provider_settings, profile.url) as provider,
        make_view(as_json) as view,
    ):
        try:
            runner = Runner(scenario, profile, provider, view, rerun=rerun, max_parallel=parallel)
        except Unavailable as exc:  # a profile without the certificate connects at once
            # The summary a `crc up` that could not reach the server gives (nothing made).
            view.summary(
                {
                    "scenario": scenario.name,
                    "group": scenario.name,
                    "ok": False,
                    "seconds": 0.0,
                    "machines": [
                        {"name": m.name, "state": "-", "ip": None, "instance": None}
                        for m in scenario.machines
                    ],
                    "steps": [],
                    "unreachable": True,
                }
            )
            raise Unavailable(
                f"{exc.message}; {_left_unreached(scenario.name, None, scenario_file)}",
                code=exc.code,
            ) from None
        rc = 1
        resumable = True
        interrupted = False
        try:
            rc = runner.up()
        except DownFirst:  # the error says `crc down` first: `crc up` again would not do
            resumable = False
            raise
        except Unavailable as exc:
            if runner.started:
                raise
            # The server could not be reached before the group was there to go on with:
            # say what is left (nothing, as a rule) and that `crc up` again goes on.
            raise Unavailable(
                f"{exc.message}; "
                f"{_left_unreached(runner.group, runner.group_origin, scenario_file)}",
                code=exc.code,
            ) from None
        except KeyboardInterrupt as exc:
            # The runner said "interrupted: ..." and the summary follows it, then what is
            # left (below): no "crc: interrupted" after them.
            interrupted = True
            said(exc)
            raise
        finally:
            if rc != 0 and resumable and not interrupted and _expired(runner):
                resumable = False  # its TTL passed: its machines are revoked, `crc down`
            runner.close()
            file = shlex.quote(scenario_file)
            # A pipe (`crc up <(...)`) cannot be read again: the group names the scenario.
            again = Path(scenario_file).is_file()
            down = f"crc down {file}" if again else f"crc down --group {scenario.name}"
            left = sorted(runner.instances) + sorted(
                f"{name} (second instance {iid})" for iid, name in runner.twins_left.items()
            )
            if rc != 0 and left and not as_json:
                # Failed, interrupted or a step failed: what was made keeps running (and,
                # on a cloud, costing money) until `crc down`. Say so before the error.
                resume = f"`crc up {file}` again resumes, " if resumable and again else ""
                click.echo(
                    f"{len(left)} machine(s) of {scenario.name} are still at "
                    f"{provider.name} ({', '.join(left)}): {resume}`{down}` "
                    "destroys them",
                    err=True,
                )
            if rc == 0 and runner.twins_left and not as_json:
                # Up and running, beside a second instance that could not be destroyed
                # (one of the two enrolled first): it bills until someone destroys it.
                twins = ", ".join(
                    f"{name}: {iid}" for iid, name in sorted(runner.twins_left.items())
                )
                click.echo(
                    f"warning: second instance(s) of {scenario.name} still at "
                    f"{provider.name} ({twins}): they cost money until destroyed (in the "
                    f"provider's console, or with the rest by `{down}`)",
                    err=True,
                )
            if runner.not_in_file and not as_json:
                # Machines the file no longer names: `crc up` neither waits for them nor
                # destroys them; they keep running (and, on a cloud, costing money).
                gone = ", ".join(
                    name + (f" ({', '.join(ids)})" if ids else "")
                    for name, ids in sorted(runner.not_in_file.items())
                )
                click.echo(
                    f"warning: {len(runner.not_in_file)} machine(s) of {scenario.name} are "
                    f"no longer in {file} but still run at {provider.name} and in group "
                    f"{scenario.name} (on a cloud they cost money): {gone}; `crc up` "
                    f"leaves them; to remove them, `{down}` (it destroys every "
                    f"machine of the scenario) then `crc up {file}`",
                    err=True,
                )
            if rc != 0 and runner.uncertain and not as_json:
                # A create whose answer was lost, or that Ctrl-C cut short, may have made
                # a machine nobody lists yet.
                how = "was interrupted" if interrupted else "failed"
                click.echo(
                    f"{provider.name} may have made machine(s) {', '.join(runner.uncertain)} "
                    f"of {scenario.name} although creating them {how}: `{down}` "
                    "destroys whatever was made",
                    err=True,
                )
    exposed = [(m.name, local, port) for m in scenario.machines for local, port in m.forwards]
    if exposed and not as_json:
        click.echo(
            f"exposed ports: `crc forward {scenario.name} --scenario {scenario_file}` opens "
            "them all, or one at a time:",
            err=True,
        )
        for machine, local, port in exposed:
            click.echo(f"  crc forward {scenario.name} {machine} {local}:{port}", err=True)
    sys.exit(rc)


def _expired(runner: Any) -> bool:
    """Whether the run's group has expired (its TTL passed during the run): `crc up`
    again would be refused, only `crc down` is left."""
    try:
        return bool(runner.client.group(runner.group).get("expired"))
    except CrcError:
        return False


def _left_unreached(group: str, origin: str | None, scenario_file: str) -> str:
    """What a `crc up` that could not reach the server before its start leaves (what it
    did with the group: ``Runner.group_origin``), and what to do next."""
    # A pipe (`crc up <(...)`) cannot be read again: then the file is not named.
    file = f" {shlex.quote(scenario_file)}" if Path(scenario_file).is_file() else ""
    again = f"`crc up{file}` again once the server can be reached"
    if origin is None:
        return f"nothing was made (no group, no machine): {again}"
    if origin == "sent":
        return (
            f"group {group} may have been made (its answer was lost), no machine was: "
            f"{again} goes on from there"
        )
    if origin == "deleted":
        return f"nothing is left (group {group} was deleted again): {again}"
    if origin == "created":
        return f"group {group} was made, no machine: {again} resumes it, `crc down` deletes it"
    return f"group {group} is left as it was: {again} resumes it"


def _say_ignored(scenario_file: str, problems: list[Any]) -> None:
    """One line on stderr: the file's problems `crc down` went past."""
    from ..terminal import safe

    first = str(problems[0])
    first = first if len(first) <= 200 else first[:199] + "…"
    more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
    click.echo(
        f"warning: {safe(scenario_file)} has {len(problems)} problem(s) that `crc down` ignores "
        f"(it reads only the scenario's name and provider): {safe(first)}{more}",
        err=True,
    )


@click.command()
@click.argument(
    "scenario_file",
    metavar="[SCENARIO.yaml]",
    required=False,
    type=click.Path(exists=True, dir_okay=False),
)
@click.option(
    "--group", metavar="GROUP", help="The group (scenario name) to tear down, instead of a file."
)
@click.option(
    "--provider",
    "provider_name",
    metavar="NAME",
    callback=_provider_name,
    help="With --group, when the server no longer knows the group: the provider "
    "to clean up leftovers at (any registered provider).",
)
@json_option
def down(
    scenario_file: str | None, group: str | None, provider_name: str | None, as_json: bool
) -> None:
    """Destroy every machine of a scenario at its provider, check that none is left
    (listing by tag), delete the group (revoking every key and credential), report.

    Of SCENARIO.yaml only the name and provider are read: problems elsewhere in it (a
    step mistyped, a script deleted since `crc up`) are said and ignored.

    Exit code: 0 if no machine is left at the provider (the group deleted), 1 if some
    are still there (listed, with the command that tries again; the group is kept), 2
    for an invalid call or a file whose name or provider cannot be read, 3 when the
    token is refused or, without --provider, nobody is logged in, 4 when the server
    does not know the group (--provider cleans up leftovers), 5 for a group `crc up`
    did not make or when another `crc up` or `crc down` of it runs, 6 when the server
    cannot be reached, 7 when its certificate does not match the pin, 8 for a provider
    error, 130 on Ctrl-C, 143 on SIGTERM, 129 on SIGHUP. When the provider is known (the
    file, --provider), the machines are destroyed even if the server cannot be reached
    (6), refuses the token (3) or a CRC_* variable is set but empty (2): the exit code
    then says that the group is left.

    \b
    Examples:
      crc down lab.yaml                      # what `crc up lab.yaml` made
      crc down --group lab                   # without the file
      crc down --group lab --provider vultr  # leftovers the server no longer knows
    """
    from ..master.client import Client
    from ..master.profile import load_profile
    from ..master.scenario.down import down as run_down
    from ..master.scenario.downfile import read_for_down
    from ..master.scenario.state import LocalState
    from ..protocol.names import check_name
    from ..providers import make_provider
    from .scenario_view import make_view

    if bool(scenario_file) == bool(group):
        raise InvalidInput("give a SCENARIO.yaml or --group GROUP (one of them)")
    settings: dict[str, Any] = {}
    name = provider_name
    if scenario_file:
        # Only what teardown needs (name, provider): a file edited since `crc up` (a
        # typo in a step, a script deleted) must not keep the machines running.
        target = read_for_down(scenario_file)
        group, name, settings = target.name, target.provider, target.provider_settings
        if target.ignored and not as_json:
            _say_ignored(scenario_file, target.ignored)
    assert group is not None
    check_name(group, "group")
    client = None
    unreachable: Unavailable | Unauthorized | InvalidInput | None = None
    try:
        profile = load_profile()
        client = Client(profile.url, profile.token, profile.fingerprint, profile.cert_pem)
    except Unauthorized:
        # Not logged in: the machines still go when the provider is known (leftovers of
        # a group the server no longer knows, docs/scenarios.md); the group is not asked.
        if name is None:
            raise
    except InvalidInput as exc:
        # A CRC_* variable set but empty (a cleanup job whose secret came out empty), a
        # profile that cannot be read: the machines still go when the provider is known;
        # the group is left, and the error says so once they are gone.
        if name is None:
            raise
        unreachable = exc
    except Unavailable as exc:
        # The machines can still be destroyed when the provider is known: do that, and
        # say afterwards that the group is left.
        if name is None:
            raise Unavailable(
                f"{exc.message}; to destroy the machines of group {group} all the same, "
                "name the scenario file or the provider (--provider)"
            ) from None
        unreachable = exc
    try:
        if client is not None:
            try:
                mine = (client.group(group).get("settings") or {}).get("crc_up")
            except (Unavailable, Unauthorized) as exc:
                # A profile with the server's certificate connects at the first call:
                # the machines still go when the provider is known, as above.
                if name is None:
                    raise
                client.close()
                client, mine, unreachable = None, None, exc
            except NotFound:
                mine = None
                if name is None:
                    raise NotFound(
                        f"group {group} is not on the server: name its provider "
                        "with --provider to clean up leftovers there"
                    ) from None
            else:
                # Never delete a group `crc up` did not make (its machines may be real
                # ones enrolled by hand), also when a scenario file happens to name it.
                if not isinstance(mine, dict) or mine.get("scenario") != group:
                    raise Conflict(
                        f"group {group} was not made by `crc up`: delete it with "
                        f"`crc group delete {group}`"
                    )
                # The machines are where `crc up` made them, also if the file now
                # names another provider (`crc up` then says to `crc down` first).
                made_at = mine.get("provider")
                if not scenario_file or (isinstance(made_at, str) and made_at != name):
                    name = made_at if scenario_file else name or made_at
                    settings = mine.get("provider_settings") or {}
        if not isinstance(name, str) or not isinstance(settings, dict):
            # The group's record does not say where its machines are (it was written by
            # hand or by another tool): ask rather than guess.
            raise InvalidInput(
                f"group {group} does not say which provider made its machines: "
                "name it with --provider"
            )
        with (
            stopped_as_by_ctrl_c(),  # SIGTERM / SIGHUP: say what may be left, as Ctrl-C
            make_provider(name, settings, client.url if client else None) as provider,
        ):
            with make_view(as_json) as view:
                try:
                    rc = run_down(
                        group,
                        provider,
                        client,
                        view,
                        LocalState.for_group(group),
                        unreachable=unreachable,
                    )
                except KeyboardInterrupt as exc:  # (or a signal taken as it) the rest is unknown
                    click.echo(
                        f"crc: interrupted: machines of {group} may still be at "
                        f"{provider.name}, where a cloud bills them: `crc down --group "
                        f"{group} --provider {provider.name}` again destroys them",
                        err=True,
                    )
                    said(exc)
                    raise
    finally:
        if client is not None:
            client.close()
    sys.exit(rc)
