"""``crc agent run``: enroll if needed, open the control socket, run until revoked."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InvalidInput
from ..protocol.messages import Progress
from ..protocol.names import check_message_type
from . import sdnotify
from .control import ControlServer
from .core import Agent, Revoked, load_or_enroll
from .install import SERVICE_MARKER, uninstall_agent
from .lock import StateDirLock
from .platform import current
from .state import AgentState

__all__ = ["run_agent"]

log = logging.getLogger("crc.agent")

DEFAULT_KEEP_MESSAGES_DAYS = 7.0
PRUNE_SECONDS = 3600.0


def run_agent(
    state_dir: Path,
    url: str | None,
    key: str | None,
    fingerprint: str | None,
    gate_ready: bool = False,
    follow_logs: tuple[str, ...] = (),
    on_started: Callable[[Callable[[], None]], None] | None = None,
    facts_interval: float = 30.0,
    keep_messages_days: float = DEFAULT_KEEP_MESSAGES_DAYS,
    hosts_file: str | None = None,
) -> str:
    """Run the agent in the foreground; return why it stopped (revocation).

    ``on_started`` (the Windows service host) is called once scripts can reach the agent,
    with a function that stops it from any thread. ``hosts_file``: the file hosts syncs
    write instead of the system's (/etc/hosts, or ...\\drivers\\etc\\hosts on Windows).
    Raises AlreadyRunning when another agent runs with ``state_dir``."""
    platform = current()
    if hosts_file is not None:
        platform.hosts_file = hosts_file
    lock = StateDirLock(Path(state_dir))  # before anything in the state dir is touched
    state: AgentState | None = None
    uninstall = False
    try:
        state = AgentState(state_dir, protect=platform.protect_file)
        if state.get("revoked"):
            raise Revoked(
                f"this machine was revoked ({state.get('revoked')}); remove "
                f"{state_dir} and enroll with a new key to use it again"
            )
        cred = load_or_enroll(state, url, key, fingerprint)
        agent = Agent(
            state,
            cred,
            platform,
            gate_ready=gate_ready,
            follow_logs=follow_logs,
            facts_interval=facts_interval,
        )
        try:
            asyncio.run(_main(agent, state_dir, on_started, keep_messages_days))
        except Revoked as exc:
            state.put("revoked", exc.message)
            _remove_hosts_block(platform, cred.group)
            uninstall = exc.uninstall and (Path(state_dir) / SERVICE_MARKER).exists()
            raise
        return "stopped"
    finally:
        if state is not None:
            state.close()
        lock.release()  # the state dir may be removed now (Windows keeps open files)
        if uninstall:
            _uninstall_self(platform, Path(state_dir))


def _remove_hosts_block(platform: Any, group: str) -> None:
    """The group is gone for this machine (deleted, expired, revoked): its managed block
    leaves the hosts file, whose other lines stay byte for byte (hosts_file.py)."""
    from .hosts_file import sync_hosts

    try:
        if sync_hosts(platform.hosts_path(), [], group):
            log.info("removed the hosts entries of group %s", group)
    except (OSError, ValueError) as exc:
        log.warning("could not remove the hosts entries of group %s: %s", group, exc)


def _uninstall_self(platform: Any, state_dir: Path) -> None:
    """The group was deleted with ``uninstall_on_delete``: remove this agent's service
    (disabled, definition removed; it ends as this process exits) and its state (the
    credential is revoked anyway). The agent's code stays where the bootstrap put it."""
    try:
        out = uninstall_agent(platform, state_dir, purge=True, stop=False)
    except Exception as exc:  # noqa: BLE001 -- logged; the agent stops either way
        log.error("could not uninstall the agent's service: %s", exc)
        return
    log.warning(
        "group deleted with uninstall_on_delete: service %s removed (%s), state %s removed",
        out["service"],
        out["manager"],
        out["state_dir"],
    )


async def _prune_loop(state: AgentState, keep_days: float) -> None:
    """Stored user messages past their retention are forgotten, hourly."""
    while True:
        try:
            n = state.prune_messages(keep_days)
        except Exception as exc:  # noqa: BLE001 -- retention must never stop the agent
            log.warning("could not prune stored messages: %s", exc)
        else:
            if n:
                log.info("forgot %d stored message(s) older than %g days", n, keep_days)
        await asyncio.sleep(PRUNE_SECONDS)


async def _main(
    agent: Agent,
    state_dir: Path,
    on_started: Callable[[Callable[[], None]], None] | None = None,
    keep_messages_days: float = DEFAULT_KEEP_MESSAGES_DAYS,
) -> None:
    control = ControlServer(state_dir, lambda req: _handle(agent, req), agent.platform.protect_file)
    await control.start()
    loop = asyncio.get_running_loop()
    # systemd Type=notify: READY=1 now that scripts can reach us, then watchdog pings.
    supervisor = loop.create_task(sdnotify.supervise())
    pruner = loop.create_task(_prune_loop(agent.state, keep_messages_days))
    main = asyncio.current_task()
    assert main is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, main.cancel)
    if on_started is not None:

        def stop() -> None:
            loop.call_soon_threadsafe(main.cancel)

        on_started(stop)
    try:
        await agent.run()
    except asyncio.CancelledError:
        log.info("stopping")
    finally:
        supervisor.cancel()
        pruner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
        with contextlib.suppress(asyncio.CancelledError):
            await pruner
        await control.close()


async def _handle(agent: Agent, req: dict[str, Any]) -> dict[str, Any]:
    op = req.get("op")
    if op == "progress":
        # Checked by the catalogue, as the server will (one definition of a progress line).
        await agent.send(
            Progress.from_body({"text": req.get("text"), "percent": req.get("percent")})
        )
        return {}
    if op == "ready":
        await agent.say_ready()
        return {}
    if op == "emit":
        to = req.get("to") or "master"
        if not isinstance(to, str):
            raise InvalidInput("--to must be master, a peer name, a comma list or all")
        await agent.emit(req.get("type"), req.get("body"), to=to)
        return {}
    if op == "peers":
        return await agent.roster()
    if op in ("kv-get", "kv-set", "kv-wait"):
        from urllib.parse import quote

        key = req.get("key")
        if not isinstance(key, str) or not key:
            raise InvalidInput("a key is needed")
        path = "/v1/agent/kv/" + quote(key, safe="/")
        if op == "kv-set":
            return await agent.http("PUT", path, {"value": req.get("value")})
        if op == "kv-get":
            return await agent.http("GET", path)
        wait = req.get("timeout", 300)
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 < wait <= 300:
            raise InvalidInput("--timeout must be between 0 and 300 seconds")
        newer = req.get("newer_than", 0)
        return await agent.http(
            "GET", f"{path}?wait={wait}&newer_than={int(newer)}", timeout=wait + 10
        )
    if op == "wait-message":
        type_ = check_message_type(req.get("type"))
        timeout = req.get("timeout", 600)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise InvalidInput("--timeout must be a positive number of seconds")
        sender = req.get("from")
        return {"message": await agent.wait_message(type_, sender, float(timeout))}
    if op == "status":
        return {
            "machine": agent.cred.machine,
            "group": agent.cred.group,
            "url": agent.cred.url,
            "connected": agent.connected.is_set(),
            "unsent": agent.state.pending_count(),
        }
    raise InvalidInput(f"unknown operation {op!r}")
