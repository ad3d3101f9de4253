"""``crc demo``: the embedded scenario (master/scenarios/demo.yaml) on this computer.

No account and no setup: a server (SQLite, TLS) in a temporary directory, the scenario
run by the same ``Runner`` as ``crc up`` with the local provider, then ``crc down``'s
teardown. As root the server listens on the local provider's bridge address, so every
machine has a network namespace and an address of its own; otherwise the machines
share this computer's network (see providers/local.py).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import click

from ..errors import CrcError
from .localrun import ServerProcess, crc_argv
from .profile import Profile
from .scenario.view import View

__all__ = ["run_demo"]

SCENARIO = "demo.yaml"


def _init_server(server: ServerProcess, host: str) -> None:
    """``crc server init`` listening on ``host`` (ServerProcess.start then reuses it)."""
    subprocess.run(
        crc_argv(
            "server",
            "init",
            "--data-dir",
            str(server.data_dir),
            "--listen",
            f"{host}:{server.port}",
            "--url",
            f"https://{host}:{server.port}",
            "--json",
        ),
        check=True,
        capture_output=True,
        env=server.env,
    )


def _undisturbed(teardown: Callable[[], None]) -> KeyboardInterrupt | None:
    """Run ``teardown`` to its end on a thread of its own, which no Ctrl-C or signal
    interrupts (Python raises those in the main thread, which only waits here). Returns
    the first that came meanwhile, for the caller to raise once all is torn down."""
    failure: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            teardown()
        except BaseException as exc:  # noqa: BLE001 -- raised again in the main thread
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="crc-demo-teardown").start()
    interrupted: KeyboardInterrupt | None = None
    while True:
        # An Event, not Thread.join: a join cut by an exception may take the thread for
        # ended while it runs (Python 3.11 and before).
        try:
            if done.wait(0.5):
                break
        except KeyboardInterrupt as exc:  # a signal's own (Terminated) tells its exit code
            interrupted = interrupted or exc
    if failure:
        raise failure[0]
    return interrupted


def run_demo(view: View, keep: bool = False) -> int:
    """Run the demo, shown on ``view`` (closed at the end); return the exit code (0:
    every step succeeded, all torn down). A KeyboardInterrupt (Ctrl-C, or a signal
    the caller takes as one) tears everything down too, then propagates."""
    from ..providers import destroy_scenario
    from ..providers.local import LocalProvider
    from .scenario.down import down
    from .scenario.model import parse_scenario
    from .scenario.runner import Runner
    from .scenario.state import LocalState

    t0 = time.monotonic()
    text = (
        resources.files("cloudremotecontrol.master.scenarios")
        .joinpath(SCENARIO)
        .read_text(encoding="utf-8")
    )
    scenario = parse_scenario(text, SCENARIO)
    root = Path(tempfile.mkdtemp(prefix="crc-demo-"))
    provider = LocalProvider(root / "machines")
    server = ServerProcess(root / "server")
    rc = 1
    interrupted: KeyboardInterrupt | None = None
    try:
        _init_server(server, provider.prepare_network() or "127.0.0.1")
        server.start()
        provider.server_url = server.url
        profile = Profile(server.url, server.add_user("demo"), server.fingerprint)
        view.info(
            f"server {server.url} ({server.fingerprint[:23]}…), data in {root}",
            url=server.url,
            dir=str(root),
        )
        runner = Runner(scenario, profile, provider, view, state=LocalState(root / "up.json"))
        try:
            rc = runner.up()
            view.info("tearing down")
            if down(scenario.name, provider, runner.client, view) != 0:
                rc = rc or 1
        finally:
            runner.close()
    finally:
        # After a failure too. What is said goes where it can: a terminal that was closed
        # (SIGHUP) must not stop the teardown, nor a Ctrl-C or signal that comes during
        # it (raised once it is done).
        def teardown() -> None:
            try:
                destroy_scenario(provider, scenario.name, verify_timeout=15.0)
            except CrcError as exc:  # the server and the network go all the same
                with contextlib.suppress(OSError):
                    view.info(f"teardown: {exc.message}")
            with contextlib.suppress(OSError):
                view.info("stopping the server (it lets open connections finish, up to 3 s)")
            server.stop()
            released = provider.release_network()
            with contextlib.suppress(OSError):
                if released:
                    view.info("network bridge removed")
                view.close()
            if keep:
                click.echo(f"kept {root}", err=True)
            else:
                shutil.rmtree(root, ignore_errors=True)

        interrupted = _undisturbed(teardown)
    if interrupted is not None:  # during the teardown, which is done: said as any other
        raise interrupted
    left = provider.list(scenario.name)
    view.info(
        f"done in {time.monotonic() - t0:.1f}s; "
        + ("nothing left running" if not left else f"LEFT: {left}"),
        seconds=round(time.monotonic() - t0, 1),
        left=[i.id for i in left],
    )
    return rc if not left else 1
