"""``crc agent run``: enroll if needed, open the control socket, run until revoked."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import Conflict, CrcError, InvalidInput, NotFound, Unavailable
from ..protocol.messages import Progress
from ..protocol.names import check_message_type
from . import sdnotify
from .control import ControlServer, Handed, revoked
from .core import Agent, Revoked, load_or_enroll
from .lock import StateDirLock
from .platform import current
from .state import (
    DEFAULT_KEEP_MESSAGES_MIB,
    AgentState,
    dirs_to_make,
    discard_made_state_dir,
    remove_key_file,
)

__all__ = ["run_agent"]

log = logging.getLogger("crc.agent")

DEFAULT_KEEP_MESSAGES_DAYS = 7.0
PRUNE_SECONDS = 3600.0
KV_RETRY_SECONDS = 1.0  # between long polls for a key while the server cannot be reached


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
    key_file: str | None = None,
    keep_messages_mib: float = DEFAULT_KEEP_MESSAGES_MIB,
) -> str:
    """Run the agent in the foreground; return why it stopped (revocation).

    ``on_started`` (the Windows service host) is called once scripts can reach the agent,
    with a function that stops it from any thread. ``hosts_file``: the file hosts syncs
    write instead of the system's (/etc/hosts, or ...\\drivers\\etc\\hosts on Windows).
    ``key_file`` holds the enrollment key: read only if the machine is not enrolled yet,
    and removed once it is (the key is used up). ``keep_messages_days`` and
    ``keep_messages_mib`` bound the user messages kept for scripts, by age and by size.
    Raises AlreadyRunning when another agent runs with ``state_dir``."""
    platform = current()
    if hosts_file is not None:
        platform.hosts_file = hosts_file
    made = dirs_to_make(Path(state_dir))  # removed again if refused before enrolling
    lock = StateDirLock(Path(state_dir))  # before anything in the state dir is touched
    state: AgentState | None = None
    uninstall = False
    try:
        state = AgentState(
            state_dir, protect=platform.protect_file, keep_messages_mib=keep_messages_mib
        )
        if state.get("revoked"):
            raise Revoked(
                f"this machine was revoked ({state.get('revoked')}); remove "
                f"{state_dir} and enroll with a new key to use it again"
            )
        if key_file and state.load_credential() is None:
            key = _read_key_file(key_file)  # before --key / CRC_KEY, as it always was
        cred = load_or_enroll(state, url, key, fingerprint)
        if key_file:
            _remove_key_file(key_file)
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
            from .install import SERVICE_MARKER

            uninstall = exc.uninstall and (Path(state_dir) / SERVICE_MARKER).exists()
            raise
        return "stopped"
    finally:
        # A state dir this command made, then refused to use before a key was presented
        # (a bad --url, no key): removed again, with the parents made for it.
        unused = bool(made) and (state is None or state.unused())
        if state is not None:
            state.close()
        if unused:  # the lock still held: no other agent has written there
            discard_made_state_dir(made)
        lock.release()  # the state dir may be removed now (Windows keeps open files)
        if unused and sys.platform == "win32":
            discard_made_state_dir(made)  # the lock's file, closed only now
        if uninstall:
            _uninstall_self(platform, Path(state_dir))


def _read_key_file(key_file: str) -> str:
    try:
        return Path(key_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise InvalidInput(f"cannot read key file {key_file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidInput(
            f"key file {key_file} is not text: expected the crck_... key `crc group create` printed"
        ) from None


def _remove_key_file(key_file: str) -> None:
    """The machine is enrolled: the key file, used or not needed, must not stay on disk
    (as ``crc agent install`` does). One that cannot be removed is only logged: the
    key in it is used up."""
    why = remove_key_file(key_file)
    if why is not None:
        log.warning("did not remove the key file %s: %s", key_file, why)


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
    from .install import uninstall_agent

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
            state.prune_requests()
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
    ending: CrcError | None = None
    try:
        await agent.run()
    except asyncio.CancelledError:
        log.info("stopping")
    except Revoked as exc:
        # Scripts waiting on this agent (a message, a key) are told: nothing more comes.
        ending = revoked(exc.message)
        raise
    finally:
        supervisor.cancel()
        pruner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
        with contextlib.suppress(asyncio.CancelledError):
            await pruner
        await control.close(ending)


async def _kv_wait(agent: Agent, path: str, wait: float, newer: int) -> dict[str, Any]:
    """The server's long poll for a key, asked again for the time left while the server
    cannot be reached (it restarts, the network is cut): until ``wait`` seconds passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        left = deadline - loop.time()
        try:
            query = f"?wait={max(0.001, left):.3f}&newer_than={newer}"
            return await agent.http("GET", path + query, timeout=left + 10)
        except Unavailable:
            if loop.time() + KV_RETRY_SECONDS >= deadline:
                raise
            await asyncio.sleep(KV_RETRY_SECONDS)


async def _kv_set(
    agent: Agent, path: str, key: str, value: Any, request_id: str | None
) -> dict[str, Any]:
    """Set a key on the server, once per ``request_id`` (agent/control.py, ``ONCE_OPS``).

    The write happens on the server, so the agent cannot record it in the same
    transaction: it records the key's version before it writes, and an agent that finds
    such a record (its predecessor went away before it answered) looks at the key again.
    The same version: not written, write it now. A newer version last written by this
    machine with this value: written, answered as it was. Anything else (written since
    by someone else): it cannot tell - ``Conflict``, nothing written again."""
    if request_id is None:
        return await agent.http("PUT", path, {"value": value})
    done = agent.state.request_reply(request_id)
    if done is not None:
        return done
    started = agent.state.request_pending(request_id)
    current = await _kv_version(agent, path)
    if started is None:
        agent.state.record_request(request_id, {}, pending={"before": current[0]})
    elif current[0] != started.get("before"):
        if current[1:] != (agent.cred.machine, value):
            raise Conflict(
                f"key {key!r} may have been set by this request before the agent restarted, "
                "and was changed since: check it with `crc agent kv get`, then set it again "
                "if needed"
            )
        reply = {"key": key, "version": current[0]}
        agent.state.record_request(request_id, reply)
        return reply
    reply = await agent.http("PUT", path, {"value": value})
    agent.state.record_request(request_id, reply)
    return reply


async def _kv_version(agent: Agent, path: str) -> tuple[int, str | None, Any]:
    """A key's version, who wrote it last and its value (0, None, None: no such key)."""
    try:
        item = await agent.http("GET", path)
    except NotFound:
        return 0, None, None
    return int(item["version"]), item.get("by"), item.get("value")


async def _handle(agent: Agent, req: dict[str, Any]) -> dict[str, Any] | Handed:
    op = req.get("op")
    if op == "progress":
        # Checked by the catalogue, as the server will (one definition of a progress line).
        await agent.send_once(
            Progress.from_body({"text": req.get("text"), "percent": req.get("percent")}),
            req.get("id"),  # checked by ControlServer
        )
        return {}
    if op == "ready":
        await agent.say_ready()
        return {}
    if op == "emit":
        to = req.get("to") or "master"
        if not isinstance(to, str):
            raise InvalidInput("--to must be master, a peer name, a comma list or all")
        await agent.emit(req.get("type"), req.get("body"), to=to, request_id=req.get("id"))
        return {}
    if op == "peers":
        wait = req.get("timeout", 30)
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 < wait <= 30:
            raise InvalidInput("the roster's timeout must be between 0 and 30 seconds")
        return await agent.roster(float(wait))
    if op in ("kv-get", "kv-set", "kv-wait"):
        from urllib.parse import quote

        key = req.get("key")
        if not isinstance(key, str) or not key:
            raise InvalidInput("a key is needed")
        path = "/v1/agent/kv/" + quote(key, safe="/")
        if op == "kv-set":
            return await _kv_set(agent, path, key, req.get("value"), req.get("id"))
        if op == "kv-get":
            return await agent.http("GET", path)
        wait = req.get("timeout", 300)
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 < wait <= 300:
            raise InvalidInput("--timeout must be between 0 and 300 seconds")
        newer = int(req.get("newer_than", 0))
        return await _kv_wait(agent, path, float(wait), newer)
    if op == "wait-message":
        type_ = check_message_type(req.get("type"))
        timeout = req.get("timeout", 600)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise InvalidInput("--timeout must be a positive number of seconds")
        sender = req.get("from")
        n, message = await agent.wait_message(type_, sender, float(timeout))
        return Handed(
            {"message": message}, lambda: agent.message_taken(n), lambda: agent.message_released(n)
        )
    if op == "status":
        return {
            "machine": agent.cred.machine,
            "group": agent.cred.group,
            "url": agent.cred.url,
            "connected": agent.connected.is_set(),
            "unsent": agent.state.pending_count(),
        }
    raise InvalidInput(f"unknown operation {op!r}")
