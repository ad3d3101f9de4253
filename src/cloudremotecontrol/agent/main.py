"""The agent's own entry point: ``python -m cloudremotecontrol.agent run [OPTIONS]``.

What the installed service runs (systemd unit, bootstrap). It takes the options of
``crc agent run`` but loads neither click nor the CLI, master or server code: the
standard library's argparse (unloaded once the options are read), the agent and the
protocol only. ``crc agent run`` calls ``run`` here too, so both behave alike.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CrcError
from ..stdfds import fill_closed_std_fds
from .options import read_once

if TYPE_CHECKING:
    import argparse

__all__ = ["main", "run"]

LOG_LEVELS = ("debug", "info", "warning", "error")


def run(
    *,
    url: str | None,
    key: str | None,
    key_file: str | None,
    fingerprint: str | None,
    state_dir: str | None,
    gate_ready: bool = False,
    follow_logs: tuple[str, ...] = (),
    facts_interval: float = 30.0,
    keep_messages_days: float = 7.0,
    keep_messages_mib: float = 64.0,
    log_level: str = "info",
    hosts_file: str | None = None,
    as_json: bool = False,
) -> None:
    """Enroll (first run) and stay connected until stopped or revoked."""
    from .. import logsafe
    from .core import Revoked
    from .service import run_agent

    # Every log line is redacted (credential, key, Authorization headers), at any level.
    logsafe.configure(log_level, "%(asctime)s crc-agent %(levelname)s %(name)s %(message)s")
    # Jobs inherit the agent's environment: the key must not be in it.
    os.environ.pop("CRC_KEY", None)
    try:
        run_agent(
            state_dir_of(state_dir),
            url,
            key,
            fingerprint,
            key_file=key_file,
            gate_ready=gate_ready,
            follow_logs=follow_logs,
            facts_interval=facts_interval,
            keep_messages_days=keep_messages_days,
            keep_messages_mib=keep_messages_mib,
            hosts_file=hosts_file,
        )
    except Revoked as exc:
        _stopped(as_json, True, exc.message)
        return
    _stopped(as_json, False, None)


def _stopped(as_json: bool, revoked: bool, reason: str | None) -> None:
    if as_json:
        doc = {"event": "stopped", "revoked": revoked, "reason": reason}
        sys.stdout.write(json.dumps(doc, separators=(",", ":")) + "\n")
        sys.stdout.flush()
    elif reason is not None:
        from ..terminal import safe

        sys.stderr.write(f"crc agent: stopping: {safe(reason)}\n")


def state_dir_of(value: str | None) -> Path:
    if value:
        return Path(value).resolve()
    from .platform import current

    return Path(current().default_state_dir())


def _bounded(low: float, high: float) -> Callable[[str], float]:
    import argparse

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is not in the range {low:g} to {high:g}")
        return value

    return parse


def _given_path(text: str) -> str:
    """``--state-dir ""`` (an unset variable in a script) is a usage error, as with
    ``crc agent run``, not the default state directory."""
    if not text:
        import argparse

        raise argparse.ArgumentTypeError("an empty path; leave the option out for the default")
    return text


def _parser() -> argparse.ArgumentParser:
    import argparse

    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="python -m cloudremotecontrol.agent",
        description="The CloudRemoteControl agent (the options of `crc agent run`).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="Enroll (first run) and stay connected.")
    p.add_argument("--url", default=env("CRC_URL"), help="Server URL (first run only).")
    p.add_argument("--key", default=env("CRC_KEY"), help="Single-use enrollment key.")
    p.add_argument("--key-file", help="Enrollment key file (removed once enrolled).")
    p.add_argument("--fingerprint", default=env("CRC_FINGERPRINT"), help="sha256:… pin.")
    p.add_argument(
        "--state-dir",
        type=_given_path,
        default=env("CRC_AGENT_STATE_DIR") or None,  # an empty variable: the default
        help="State directory.",
    )
    p.add_argument("--gate-ready", action="store_true", help="Ready only on `crc agent ready`.")
    p.add_argument("--follow-log", dest="follow_logs", action="append", default=[])
    p.add_argument("--facts-interval", type=_bounded(0.1, 86400), default=30.0)
    p.add_argument("--keep-messages-days", type=_bounded(0, 36500), default=7.0)
    p.add_argument("--keep-messages-mib", type=_bounded(0, 65536), default=64.0)
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    p.add_argument("--hosts-file", default=env("CRC_AGENT_HOSTS_FILE"))
    p.add_argument("--json", dest="as_json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit codes as ``crc``'s: 0 stopped, 2 bad options, 3 key refused, 9 another
    agent runs with this state directory, ..."""
    from .deferred import defer

    fill_closed_std_fds()  # started with 2>&-: before a socket or a file takes 0, 1 or 2
    defer()  # before websockets is imported: see agent/deferred.py
    options = _options(sys.argv[1:] if argv is None else argv)
    try:
        run(
            url=options["url"],
            key=options["key"],
            key_file=options["key_file"],
            fingerprint=options["fingerprint"],
            state_dir=options["state_dir"],
            gate_ready=options["gate_ready"],
            follow_logs=tuple(options["follow_logs"]),
            facts_interval=options["facts_interval"],
            keep_messages_days=options["keep_messages_days"],
            keep_messages_mib=options["keep_messages_mib"],
            log_level=options["log_level"],
            hosts_file=options["hosts_file"],
            as_json=options["as_json"],
        )
    except CrcError as exc:
        from ..terminal import safe

        sys.stderr.write(f"crc agent: error: {safe(exc.message)}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


def _options(argv: list[str]) -> dict[str, Any]:
    """The options, argparse unloaded once they are read (agent/options.py)."""
    return read_once(lambda: dict(vars(_parser().parse_args(argv))))
