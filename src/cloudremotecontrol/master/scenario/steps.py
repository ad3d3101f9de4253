"""Doing one step: each kind becomes the SDK calls ``crc run``, ``crc push``,
``crc hosts sync``, ``crc wait`` or ``crc send`` would make.

``execute(step, attempt)`` is called on a worker thread by ``graph.run_steps``; it opens
its own ``Client`` (an httpx client is not shared across threads here), renders the
step's templates from the roster *at that moment* (so ``machines.mysql.private_ip``
is what mysql reports now), and returns an ``Outcome``. Jobs it starts are registered
so that Ctrl-C cancels them on every machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from ...errors import CrcError, InvalidInput, NotFound, Unavailable
from ...protocol.states import JobStatus
from ...providers import Feature, Instance, Provider
from ..client import Client
from ..follow import follow_events
from ..types import Message
from ..waits import FLOOR_TYPES, MessageWait
from . import shellquote, templates
from .graph import Outcome
from .model import (
    HostsAction,
    PushAction,
    RebootAction,
    RunAction,
    Scenario,
    SendAction,
    Step,
    WaitAction,
)
from .state import step_digest, step_job_key
from .view import View

__all__ = ["StepExecutor", "template_context"]

#: The longest target the server takes (``to`` of a job, push, hosts sync or message).
MAX_TARGET_CHARS = 4096


def _first(values: Any) -> str | None:
    return values[0] if isinstance(values, list) and values else None


def template_context(
    scenario: Scenario,
    group: dict[str, Any],
    instances: dict[str, Instance],
    public_addresses: bool = True,
) -> dict[str, Any]:
    """``vars``, ``scenario`` and ``machines`` for templates, from the server's view of
    the group (facts, addresses) and the provider's instances (whose ``main_ip`` is a
    public address only where the provider says so: ``public_addresses``)."""
    machines: dict[str, Any] = {}
    for m in group.get("machines", []):
        facts = m.get("facts") or {}
        inst = instances.get(m["name"])
        private = (inst.private_ip if inst else None) or _first(facts.get("private_ips"))
        public = (
            (inst.main_ip if inst and public_addresses else None)
            or m.get("public_ip")
            or _first(m.get("ips"))
        )
        spec_os = scenario.machine(m["name"]).os if m["name"] in scenario.machine_names else None
        machines[m["name"]] = {
            "name": m["name"],
            "state": m["state"],
            "labels": m.get("labels") or {},
            "os": facts.get("os") or spec_os,
            "hostname": facts.get("hostname") or m["name"],
            "ips": m.get("ips") or [],
            "private_ip": private,
            "public_ip": public,
            "ip": private or public,
            "facts": facts,
            "instance_id": inst.id if inst else None,
        }
    return {"vars": scenario.variables, "scenario": {"name": scenario.name}, "machines": machines}


class StepExecutor:
    def __init__(
        self,
        scenario: Scenario,
        group: str,
        client_factory: Callable[[], Client],
        provider: Provider,
        instances: dict[str, Instance],
        view: View,
    ) -> None:
        self.scenario = scenario
        self.group = group
        self.client_factory = client_factory
        self.provider = provider
        self.instances = instances
        self.view = view
        self._jobs: set[str] = set()
        self._digests: dict[str, str] = {}
        self._lock = threading.Lock()
        #: Set on Ctrl-C: waits end at their next poll or tick ("interrupted").
        self.stopped = threading.Event()

    # -- entry points -------------------------------------------------------------------
    def __call__(self, step: Step, attempt: int) -> Outcome:
        if self.stopped.is_set():  # Ctrl-C before this step started: nothing is begun
            return Outcome(False, "interrupted")
        with self.client_factory() as c:
            group = c.group(self.group)
            ctx = template_context(
                self.scenario,
                group,
                self.instances,
                self.provider.capabilities.public_addresses,
            )
            to = self._to(step, group)
            action = step.action
            if isinstance(action, (RunAction, PushAction, HostsAction)) and attempt == 1:
                earlier = self._still_running(c, step)
                if earlier is not None:
                    return self._follow(c, step, earlier, record=False)
            if isinstance(action, RunAction):
                return self._run(c, step, to, action, ctx)
            if isinstance(action, PushAction):
                return self._push(c, step, to, action, ctx)
            if isinstance(action, HostsAction):
                started = c.hosts_sync(self.group, to, action.ip)
                return self._follow(c, step, started)
            if isinstance(action, WaitAction):
                return self._wait(c, step, action, ctx)
            if isinstance(action, SendAction):
                body = templates.render_value(action.body, ctx)
                out = c.send_message(self.group, to, action.type, body)
                return Outcome(True, f"sent {action.type} to {', '.join(out['targets'])}")
            if isinstance(action, RebootAction):
                return self._reboot(c, step)
        raise AssertionError(f"unknown step kind {step.kind}")

    def cancel_all(self) -> None:
        """Cancel every job still running and end every wait (Ctrl-C)."""
        self.stopped.set()
        with self._lock:
            jobs = list(self._jobs)
        if not jobs:
            return
        with self.client_factory() as c:
            for job_id in jobs:
                with contextlib.suppress(Exception):
                    c.cancel_job(job_id)

    def _to(self, step: Step, group: dict[str, Any]) -> str:
        """The target to send for ``step``: its ``to`` as written, unless the group holds
        machines the file no longer names (left running by ``crc up``, never commanded
        by it): then the machines the file's ``to`` selects, by name, so that ``all`` or
        a label reaches none of those."""
        mine = set(self.scenario.machine_names)
        if all(m["name"] in mine for m in group.get("machines", [])):
            return step.to
        names = ",".join(step.targets)
        if len(names) > MAX_TARGET_CHARS:
            raise InvalidInput(
                f"step {step.name}: the group holds machines the file no longer names, and "
                f"its {len(step.targets)} machines are too many to name one by one: "
                "`crc down` the group's other machines, or name fewer in `to:`"
            )
        return names

    # -- jobs ---------------------------------------------------------------------------
    def _run(self, c: Client, step: Step, to: str, a: RunAction, ctx: dict[str, Any]) -> Outcome:
        spec: dict[str, Any] = {
            "env": {k: templates.render(v, ctx) for k, v in a.env.items()},
            "cwd": templates.render(a.cwd, ctx) if a.cwd else None,
            "timeout": step.timeout,
            **(step.rollout.to_body() if step.rollout is not None else {}),
        }
        # Shell code gets every value quoted for its place (the parser made sure that a
        # templated command has one dialect); an argv's plain arguments reach no shell.
        if a.argv is not None:
            script = shellquote.argv_script(a.argv)
            spec["argv"] = [
                templates.render(x, ctx, script[1] if script and i == script[0] else None)
                for i, x in enumerate(a.argv)
            ]
        else:
            oses = [self.scenario.machine(m).os for m in step.targets]
            dialect = shellquote.dialect_for(a.shell, oses) or "sh"
            spec.update(command=templates.render(a.command or "", ctx, dialect), shell=a.shell)
        return self._follow(c, step, c.start_job(self.group, to, **spec))

    def _push(self, c: Client, step: Step, to: str, a: PushAction, ctx: dict[str, Any]) -> Outcome:
        dest = templates.render(a.dest, ctx)
        if a.src is not None:
            return self._follow(c, step, c.push(self.group, to, str(a.src), dest, a.mode, a.owner))
        fd, tmp = tempfile.mkstemp(prefix="crc-push-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(templates.render(a.content or "", ctx))
            started = c.push(self.group, to, tmp, dest, a.mode, a.owner)
        finally:
            os.unlink(tmp)
        return self._follow(c, step, started)

    def _digest(self, step: Step) -> str:
        """``step_digest``, once per step (a push's digest hashes its whole file)."""
        with self._lock:
            known = self._digests.get(step.name)
        if known is None:
            known = step_digest(step, self.scenario.variables)
            with self._lock:
                self._digests[step.name] = known
        return known

    def _still_running(self, c: Client, step: Step) -> dict[str, Any] | None:
        """The job this step started in an earlier ``crc up`` (one that crashed, or was
        killed, before it saw the end), if it still runs and the step is unchanged:
        followed to its end instead of a second one started beside it."""
        try:
            rec = c.kv_get(self.group, step_job_key(step.name))["value"]
        except NotFound:
            return None
        if not isinstance(rec, dict) or not isinstance(rec.get("job_id"), str):
            return None
        if (rec.get("step"), rec.get("digest")) != (
            step.name,
            self._digest(step),
        ):
            return None
        try:
            job = c.job(rec["job_id"])
        except NotFound:  # forgotten since (retention)
            return None
        statuses = [JobStatus(t["status"]) for t in job["targets"]]
        if all(s.terminal for s in statuses):
            return None
        job_id = rec["job_id"]
        self.view.info(
            f"step {step.name}: following job {job_id[:8]}, started by an earlier `crc up` "
            "and still running",
            step=step.name,
            job_id=job_id,
        )
        return {"job_id": job_id, "targets": [t["machine"] for t in job["targets"]]}

    def _follow(
        self, c: Client, step: Step, started: dict[str, Any], record: bool = True
    ) -> Outcome:
        job_id, targets = started["job_id"], started["targets"]
        with self._lock:
            self._jobs.add(job_id)
        if record:  # for a `crc up` that resumes after this one crashed
            rec = {"step": step.name, "digest": self._digest(step)}
            with contextlib.suppress(CrcError):  # not kept: only a resume cannot follow it
                c.kv_set(self.group, step_job_key(step.name), rec | {"job_id": job_id})
        # Ctrl-C while the job was being started: ``cancel_all`` did not know of it yet
        # (it sets ``stopped`` before it looks at ``_jobs``, so one of the two cancels it).
        if self.stopped.is_set():
            with contextlib.suppress(Exception):
                c.cancel_job(job_id)
        results: dict[str, dict[str, Any]] = {}
        try:
            for ev in c.follow_job(job_id, targets):
                data = ev["data"]
                if ev["type"] == "job.output":
                    self.view.output(step.name, ev.get("machine"), data["stream"], data["data"])
                elif ev["type"] == "job.status" and JobStatus(data["status"]).terminal:
                    results[ev["machine"]] = data
        finally:
            with self._lock:
                self._jobs.discard(job_id)
        bad = {m: r for m, r in results.items() if r["status"] != "succeeded"}
        detail = {
            m: {"status": r["status"], "exit_code": r.get("exit_code")} for m, r in results.items()
        }
        if not bad:
            return Outcome(True, f"job {job_id[:8]} on {len(results)} machine(s)", detail)
        why = "; ".join(
            f"{m}: {r['status']}"
            + (f" (exit {r['exit_code']})" if r.get("exit_code") else "")
            + (f": {r['reason']}" if r.get("reason") else "")
            for m, r in sorted(bad.items())
        )
        return Outcome(False, why, detail)

    # -- waiting ------------------------------------------------------------------------
    def _wait(self, c: Client, step: Step, a: WaitAction, ctx: dict[str, Any]) -> Outcome:
        deadline = time.monotonic() + step.timeout
        if a.kind == "ready":
            return self._wait_ready(c, step, deadline)
        if a.kind == "kv":
            key = templates.render(a.key or "", ctx)
            while True:
                left = deadline - time.monotonic()
                if self.stopped.is_set():
                    return Outcome(False, "interrupted")
                if left <= 0:
                    return Outcome(False, f"key {key} did not appear in time")
                try:
                    got = c.kv_get(self.group, key, wait=min(left, 2.0))
                    # JSON, as every command shows a value: a repr would show Python's words.
                    shown = json.dumps(got["value"])
                    return Outcome(True, f"{key} = {shown}"[:200], {"value": got["value"]})
                except NotFound:
                    continue

        # A message from each target, sent after the last command started there (the
        # rule of master/waits.py, the same as `crc wait --message`).
        def show(msg: Message) -> None:
            self.view.output(step.name, msg.sender, "stdout", f"{msg.type} {json.dumps(msg.body)}")

        assert a.type is not None  # the parser gives every wait for a message its type
        try:
            found = self._wait_messages(c, a.type, list(step.targets), step, deadline, show)
        except Unavailable as exc:
            return Outcome(False, exc.message.replace(" message from", " from"))
        if found is None:
            return Outcome(False, "interrupted")
        bodies = {m: found[m].body for m in step.targets}
        return Outcome(True, f"{a.type} from {', '.join(step.targets)}", bodies)

    def _wait_messages(
        self,
        c: Client,
        type: str,
        senders: list[str],
        step: Step,
        deadline: float,
        show: Callable[[Message], None],
    ) -> dict[str, Message] | None:
        """``Client.wait_messages``, that also ends (None) on Ctrl-C."""
        wait = MessageWait(type, senders, None)
        if wait.needs_floors:
            now = c.event_cursor(self.group)
            for ev in c.events(self.group, since=0, types=FLOOR_TYPES):
                if ev["cursor"] > now:
                    break
                wait.floor(ev)
        for ev in follow_events(self.client_factory, self.group, wait.start, ("message",)):
            if ev is not None:
                msg = wait.feed(ev)
                if msg is not None:
                    show(msg)
            if wait.done:
                return wait.found
            if self.stopped.is_set():
                return None
            if time.monotonic() > deadline:
                raise wait.timeout_error(step.timeout)
        raise Unavailable(f"the event stream of {self.group} ended (group deleted?)")

    def _wait_ready(self, c: Client, step: Step, deadline: float) -> Outcome:
        while True:
            if self.stopped.is_set():
                return Outcome(False, "interrupted")
            states = {m["name"]: m["state"] for m in c.group(self.group)["machines"]}
            waiting = [m for m in step.targets if states.get(m) != "ready"]
            if not waiting:
                return Outcome(True, "ready")
            revoked = [m for m in waiting if states.get(m) == "revoked"]
            if revoked or time.monotonic() > deadline:
                return Outcome(
                    False, "not ready: " + ", ".join(f"{m} ({states.get(m)})" for m in waiting)
                )
            time.sleep(0.3)

    def _reboot(self, c: Client, step: Step) -> Outcome:
        """Reboot each target and wait until it went away and came back ready."""
        cursor = c.event_cursor(self.group)
        for m in step.targets:
            inst = self.instances.get(m)
            if inst is not None and self.provider.capabilities.supports(Feature.REBOOT):
                self.provider.reboot(inst.id)
            else:  # a real machine: ask its agent (the job ends as lost: that is expected)
                windows = self.scenario.machine(m).os == "windows"
                c.start_job(
                    self.group,
                    m,
                    command="shutdown /r /t 5" if windows else "sleep 1; reboot",
                    shell="cmd" if windows else "sh",
                )
            self.view.output(step.name, m, "stdout", "rebooting")
        went_away: set[str] = set()
        back: set[str] = set()
        deadline = time.monotonic() + step.timeout
        try:
            for ev in follow_events(self.client_factory, self.group, cursor):
                if (
                    ev is not None
                    and ev["type"] == "machine.state"
                    and ev.get("machine") in step.targets
                ):
                    m, state = ev["machine"], ev["data"]["state"]
                    self.view.machine(m, state)
                    if state != "ready":
                        went_away.add(m)
                    elif m in went_away:
                        back.add(m)
                if back >= set(step.targets):
                    return Outcome(True, f"{', '.join(step.targets)} rebooted and ready")
                if self.stopped.is_set():
                    return Outcome(False, "interrupted")
                if time.monotonic() > deadline:
                    break
        except Unavailable as exc:
            return Outcome(False, exc.message)
        late = sorted(set(step.targets) - back)
        return Outcome(False, f"not back in time: {', '.join(late)}")
