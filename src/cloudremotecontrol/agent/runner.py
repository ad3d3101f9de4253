"""Running one job: start the process tree, stream its output, end it on timeout/cancel.

Output is read in chunks and sent in batches (every 50 ms or 32 KiB) so a chatty
command costs a few messages a second, not one per line. Decoding is incremental so a
multi-byte character split across reads is not mangled.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import errno
import functools
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import CrcError
from ..protocol.limits import MAX_OUTPUT_CHUNK_BYTES
from ..protocol.messages import JobRun
from .platform.base import Platform

if TYPE_CHECKING:
    from concurrent.futures import Executor

__all__ = ["JobOutcome", "job_environment", "run_job"]

FLUSH_SECONDS = 0.05
FLUSH_BYTES = 32 << 10
KILL_GRACE_SECONDS = 2.0
EXIT_POLL_SECONDS = 0.25  # at most, between looks at a process whose pipes stay open

# Output pipes still held open by what a finished job left running (a daemon it
# started): drained and discarded until they close, so that it never blocks writing.
_draining: set[asyncio.Task[None]] = set()

Emit = Callable[[str, str], Awaitable[None]]  # (stream, text)

_T = TypeVar("_T")


# Where a job's session is looked for (a scan of every process of the machine, long
# when it runs many): never on the event loop, and never behind a transfer that waits
# on a file that does not answer (those hold the loop's default executor's threads).
# Made at the first scan: an agent that never ends a job loads no thread pool for it.
@functools.cache
def _scan_pool() -> Executor:
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="crc-job-end")


@dataclass
class JobOutcome:
    status: str  # succeeded / failed / timed_out / cancelled
    exit_code: int | None
    reason: str | None = None


def job_environment(*layers: Mapping[str, str], windows: bool) -> dict[str, str]:
    """The environment of a job: ``layers`` (the agent's own, then what the agent sets,
    then the job's ``env``) merged, a later one's variable replacing an earlier one's.
    On Windows, where environment names are case-insensitive, a name replaces any earlier
    one equal to it ignoring case and keeps its own spelling (``--env Path=x`` replaces
    the inherited ``PATH``; the job does not get both); elsewhere names are as given."""
    if not windows:
        return {name: value for layer in layers for name, value in layer.items()}
    merged: dict[str, tuple[str, str]] = {}  # folded name -> (name as given, value)
    for layer in layers:
        for name, value in layer.items():
            merged[name.upper()] = (name, value)
    return dict(merged.values())


async def run_job(
    job: JobRun,
    platform: Platform,
    emit_output: Emit,
    started: Callable[[int], Awaitable[None]],
    cancelled: asyncio.Event,
    extra_env: dict[str, str] | None = None,
) -> JobOutcome:
    """Run ``job`` to its end; the caller reports the outcome. ``extra_env`` (the
    machine's name, group and job id) is set before the job's own ``env``."""
    try:
        argv = (
            list(job.argv)
            if job.argv is not None
            else platform.shell_argv(job.shell, job.command or "")
        )
        verbatim = platform.verbatim_shell(job.shell) if job.argv is None else None
    except CrcError as exc:
        return JobOutcome("failed", 127, exc.message)
    env = job_environment(os.environ, extra_env or {}, job.env, windows=os.name == "nt")
    try:
        options: dict[str, Any] = {
            "stdin": asyncio.subprocess.DEVNULL,
            "stdout": asyncio.subprocess.PIPE,
            "stderr": asyncio.subprocess.PIPE,
            "cwd": job.cwd or None,
            "env": env,
            **platform.popen_options(),
        }
        if verbatim is not None:
            proc = await asyncio.create_subprocess_shell(
                job.command or "", executable=verbatim, **options
            )
        else:
            proc = await asyncio.create_subprocess_exec(*argv, **options)
    except FileNotFoundError as exc:
        missing = job.cwd if job.cwd and not os.path.isdir(job.cwd) else argv[0]
        return JobOutcome("failed", 127, f"cannot start: {missing}: {exc.strerror}")
    except OSError as exc:
        if exc.errno == errno.E2BIG:  # the kernel's word names argv only; env counts too
            return JobOutcome(
                "failed",
                126,
                f"cannot start {argv[0]}: its arguments and environment are too large for "
                f"this machine ({exc.strerror}): on Linux each argument and each "
                "NAME=value of the environment must stay under 128 KiB",
            )
        return JobOutcome("failed", 126, f"cannot start {argv[0]}: {exc}")
    try:
        platform.process_started(proc)
    except OSError as exc:
        with contextlib.suppress(ProcessLookupError, OSError):
            proc.kill()
        await proc.wait()
        return JobOutcome("failed", 126, f"cannot start {argv[0]}: {exc}")
    try:
        return await _supervise(job, platform, proc, emit_output, started, cancelled)
    finally:
        platform.process_ended(proc)


async def _supervise(
    job: JobRun,
    platform: Platform,
    proc: asyncio.subprocess.Process,
    emit_output: Emit,
    started: Callable[[int], Awaitable[None]],
    cancelled: asyncio.Event,
) -> JobOutcome:
    # Taken while the job's process surely runs: what ends its whole session later.
    identity = platform.process_identity(proc.pid)
    await started(proc.pid)
    assert proc.stdout is not None and proc.stderr is not None
    readers = [
        asyncio.create_task(_pump(proc.stdout, "stdout", emit_output, platform.output_decoder())),
        asyncio.create_task(_pump(proc.stderr, "stderr", emit_output, platform.output_decoder())),
    ]
    waiter = asyncio.create_task(_exited(proc))
    canceller = asyncio.create_task(cancelled.wait())
    ending: str | None = None
    try:
        done, _ = await asyncio.wait(
            {waiter, canceller}, timeout=job.timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if waiter not in done:
            ending = "cancelled" if canceller in done else "timed_out"
            await _end_tree(proc, platform, waiter, identity)
    finally:
        canceller.cancel()
        if not waiter.done():
            await _end_tree(proc, platform, waiter, identity)
        # Grandchildren may hold the pipes open after the job's process ended (a daemon
        # it started) or after the tree was ended (a process that left its group): bound
        # the wait; what they write later is drained and dropped, not reported.
        _, pending = await asyncio.wait(readers, timeout=KILL_GRACE_SECONDS)
        for task in pending:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pending)
        for stream, task in zip((proc.stdout, proc.stderr), readers, strict=True):
            if task in pending:
                drain = asyncio.create_task(_drain(stream))
                _draining.add(drain)
                drain.add_done_callback(_draining.discard)
    code = proc.returncode
    if ending == "timed_out":
        return JobOutcome("timed_out", None, f"timed out after {job.timeout:g} s")
    if ending == "cancelled":
        return JobOutcome("cancelled", None, "cancelled by the master")
    if code == 0:
        return JobOutcome("succeeded", 0)
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        return JobOutcome("failed", 128 - code, f"killed by signal {name}")
    return JobOutcome("failed", code)


async def _exited(proc: asyncio.subprocess.Process) -> int:
    """The process's exit code once it exited. ``Process.wait`` also waits for its
    pipes to close, which a daemon the job started (``server &``) can hold open for
    ever: so its exit is also looked for, at a growing interval."""
    wait = asyncio.ensure_future(proc.wait())
    delay = 0.01
    try:
        while proc.returncode is None:
            done, _ = await asyncio.wait({wait}, timeout=delay)
            if done:
                break
            delay = min(delay * 2, EXIT_POLL_SECONDS)
    finally:
        if not wait.done():
            wait.cancel()
    assert proc.returncode is not None
    return proc.returncode


async def _end_tree(
    proc: asyncio.subprocess.Process,
    platform: Platform,
    waiter: asyncio.Task[int],
    identity: str | None,
) -> None:
    """SIGTERM to the job's process group and to the rest of its session (a child that
    moved to a group of its own, a shell's job control ``set -m``, escapes the group's
    signals), at most ``KILL_GRACE_SECONDS`` for them to end, then SIGKILL to whatever
    is left. A process that started a session of its own (a daemon's setsid) is let be,
    as after a job that ended."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + KILL_GRACE_SECONDS
    platform.kill_tree(proc, force=False)
    if identity is not None:
        await _off_loop(platform.kill_leftovers, identity, False)
    try:
        await asyncio.wait_for(asyncio.shield(waiter), KILL_GRACE_SECONDS)
    except asyncio.TimeoutError:
        pass
    while identity is not None and loop.time() < deadline:
        if not await _off_loop(platform.leftovers, identity):
            break
        await asyncio.sleep(EXIT_POLL_SECONDS / 5)
    platform.kill_tree(proc, force=True)  # whatever is left of the group, too
    if identity is not None:
        await _off_loop(platform.kill_leftovers, identity, True)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(waiter), KILL_GRACE_SECONDS)


async def _off_loop(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` in a thread of its own pool, the event loop serving meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(_scan_pool(), fn, *args)


async def _drain(stream: asyncio.StreamReader) -> None:
    with contextlib.suppress(OSError):
        while await stream.read(65536):
            pass


async def _pump(
    stream: asyncio.StreamReader,
    name: str,
    emit: Emit,
    decoder: codecs.IncrementalDecoder | None = None,
) -> None:
    if decoder is None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    buf: list[str] = []
    size = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FLUSH_SECONDS

    async def flush() -> None:
        nonlocal buf, size
        if buf:
            text = "".join(buf)
            buf, size = [], 0
            for i in range(0, len(text), MAX_OUTPUT_CHUNK_BYTES // 4):
                await emit(name, text[i : i + MAX_OUTPUT_CHUNK_BYTES // 4])

    while True:
        timeout = max(0.0, deadline - loop.time()) if buf else None
        try:
            chunk = await asyncio.wait_for(stream.read(65536), timeout)
        except asyncio.TimeoutError:
            await flush()
            continue
        if not chunk:
            buf.append(decoder.decode(b"", final=True))
            await flush()
            return
        if not buf:
            deadline = loop.time() + FLUSH_SECONDS
        text = decoder.decode(chunk)
        buf.append(text)
        size += len(chunk)
        if size >= FLUSH_BYTES:
            await flush()
