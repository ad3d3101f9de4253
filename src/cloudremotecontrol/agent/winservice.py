"""The Windows service host: ``python.exe -m cloudremotecontrol.agent.winservice``.

The Service Control Manager starts this module as the ``crc-agent`` service (LocalSystem;
registered by `crc agent install`, see platform/winsvc.py). It is a pywin32
``ServiceFramework`` service hosted by python.exe itself (``PrepareToHostSingle`` +
``StartServiceCtrlDispatcher``, no ``pythonservice.exe``), and runs the same agent loop
as `crc agent run`:

* START_PENDING while it loads and opens the control channel, RUNNING once scripts on
  the machine can reach it (the equivalent of systemd's ``READY=1``);
* a stop (or shutdown) request reports STOP_PENDING and cancels the agent's loop; running
  jobs are ended with their process trees (Job Objects), then the service reports
  STOPPED with exit code 0;
* revocation also ends in STOPPED with exit code 0: the recovery actions do not restart
  a revoked agent (as ``RestartPreventExitStatus=0`` on systemd);
* any other end (a crash of the loop, a damaged state directory) raises, so the SCM
  records STOPPED with an error code, and the recovery actions (``failure`` +
  ``failureflag``) restart the service.

The SCM waits only ~30 s (Wine: 10 s) for a new service process to connect, so nothing
heavy is imported before the dispatcher runs. The process is as lean as the Linux
service's (agent/main.py): no click, CLI, master or server code, the standard-library
modules that only websockets' unused paths import deferred (agent/deferred.py), and
``crc agent install`` registers it with ``-OO -X no_debug_ranges -X pycache_prefix=...``
from bytecode compiled at install (agent/install.py). Logs: ``%ProgramData%\\CloudRemoteControl\\
logs\\crc-agent.log`` (beside the state directory; rotated; ``--log-file`` overrides),
errors also to the Application event log. Run by hand (not by the SCM) it says so and exits 2.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from .options import read_once

if TYPE_CHECKING:
    import argparse

__all__ = ["SERVICE_NAME", "default_log_file", "main"]

SERVICE_NAME = "crc-agent"
ERROR_FAILED_SERVICE_CONTROLLER_CONNECT = 1063
START_WAIT_HINT_MS = 60_000
STOP_WAIT_HINT_MS = 30_000

log = logging.getLogger("crc.agent")


def default_log_file(state_dir: str) -> str:
    r"""``logs\crc-agent.log`` beside the state directory: with the default state dir,
    ``%ProgramData%\CloudRemoteControl\logs\crc-agent.log``."""
    parent = os.path.dirname(os.path.abspath(state_dir))
    return os.path.join(parent, "logs", "crc-agent.log")


def _parse(argv: list[str]) -> argparse.Namespace:
    import argparse  # unloaded once the options are read (agent/options.py)

    parser = argparse.ArgumentParser(
        prog="python -m cloudremotecontrol.agent.winservice",
        description="The crc-agent Windows service host (started by the Service Control Manager).",
    )
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--gate-ready", action="store_true")
    parser.add_argument("--hosts-file", default=None)
    parser.add_argument("--log-file", default=None)
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    return parser.parse_args(argv)


def _setup_logging(path: str, level: str) -> None:
    # Imported here, after defer() (main): logging.handlers imports pickle.
    import logging.handlers

    from ..logsafe import RedactingFormatter

    os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=5 << 20, backupCount=3, encoding="utf-8"
    )
    handler.setFormatter(
        RedactingFormatter("%(asctime)s crc-agent[%(process)d] %(levelname)s %(message)s")
    )
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())
    # A service has no console: what is printed goes beside the log, not to a pipe that
    # nobody reads (or to an invalid handle, which fails the write).
    out = open(path + ".stdout", "a", encoding="utf-8", errors="replace", buffering=1)
    sys.stdout = sys.stderr = out


def _event_log(kind: str, text: str) -> None:
    try:
        import servicemanager

        if kind == "error":
            servicemanager.LogErrorMsg(text)
        else:
            servicemanager.LogInfoMsg(text)
    except Exception:  # noqa: BLE001,S110 -- the event log is a courtesy, the file is the log
        pass


def _service_class(options: SimpleNamespace) -> type:
    import win32service
    import win32serviceutil

    class AgentService(win32serviceutil.ServiceFramework):
        _svc_name_ = SERVICE_NAME
        _svc_display_name_ = "CloudRemoteControl agent"
        _svc_description_ = "Runs the commands its master sends and reports back."

        def __init__(self, args: Any) -> None:
            super().__init__(args)
            self._lock = threading.Lock()
            self._stop: Callable[[], None] | None = None
            self._stop_requested = False

        # Called on the dispatcher's thread.
        def SvcStop(self) -> None:
            self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING, waitHint=STOP_WAIT_HINT_MS)
            log.info("stop requested by the service control manager")
            with self._lock:
                self._stop_requested = True
                stop = self._stop
            if stop is not None:
                try:
                    stop()
                except RuntimeError:  # the loop has ended already
                    pass

        SvcShutdown = SvcStop

        def _started(self, stop: Callable[[], None]) -> None:
            with self._lock:
                self._stop = stop
                requested = self._stop_requested
            if requested:
                stop()
                return
            self.ReportServiceStatus(win32service.SERVICE_RUNNING)
            log.info("service running (state dir %s)", options.state_dir)

        def SvcRun(self) -> None:
            self.ReportServiceStatus(
                win32service.SERVICE_START_PENDING, waitHint=START_WAIT_HINT_MS
            )
            from .core import Revoked
            from .platform.windows import WindowsPlatform
            from .service import run_agent

            # Jobs inherit a hidden console whose code page is UTF-8 (platform/windows.py).
            if not WindowsPlatform.use_utf8_console():
                log.warning(
                    "could not give jobs a UTF-8 console: cmd output is decoded "
                    "in the ANSI code page"
                )

            try:
                run_agent(
                    Path(options.state_dir),
                    None,
                    None,
                    None,
                    gate_ready=options.gate_ready,
                    on_started=self._started,
                    hosts_file=options.hosts_file,
                )
            except Revoked as exc:
                log.warning("stopping for good: %s", exc.message)
                _event_log("info", f"crc-agent stopped: {exc.message}")
            except BaseException as exc:
                text = "".join(traceback.format_exception(exc))
                log.error("the agent failed:\n%s", text)
                _event_log("error", f"crc-agent failed: {exc!r}")
                raise  # the SCM records a failure: the recovery actions restart us
            with self._lock:
                requested = self._stop_requested
            if not requested:
                log.info("the agent stopped on its own")
            self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING, waitHint=STOP_WAIT_HINT_MS)
            log.info("service stopped")

    return AgentService


def main(argv: list[str] | None = None) -> int:
    from .deferred import defer

    defer()  # before websockets is imported, as the lean entry point: see agent/deferred.py
    # A plain namespace: argparse's own would keep its module alive for the service's life.
    options = read_once(
        lambda: SimpleNamespace(**vars(_parse(sys.argv[1:] if argv is None else argv)))
    )
    _setup_logging(options.log_file or default_log_file(options.state_dir), options.log_level)
    try:
        import pywintypes
        import servicemanager
    except ImportError as exc:
        log.error("pywin32 is missing (%s): the Windows service cannot run", exc)
        return 2
    cls = _service_class(options)
    servicemanager.Initialize(SERVICE_NAME, None)
    servicemanager.PrepareToHostSingle(cls)
    log.info("service process %d starting (python %s)", os.getpid(), sys.version.split()[0])
    try:
        # types-pywin32 declares this one without annotations.
        servicemanager.StartServiceCtrlDispatcher()  # type: ignore[no-untyped-call]
    except pywintypes.error as exc:
        if exc.winerror != ERROR_FAILED_SERVICE_CONTROLLER_CONNECT:
            raise
        message = (
            "this is the crc-agent service host, started by the Service Control "
            "Manager: use `crc agent install` to register it, or `crc agent run` "
            "to run the agent in the foreground"
        )
        log.error(message)
        if sys.__stderr__ is not None:
            sys.__stderr__.write(f"crc: error: {message}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
