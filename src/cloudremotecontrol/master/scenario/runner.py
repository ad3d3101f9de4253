"""``crc up``: bring a scenario to life, resumable at every point.

``up`` is a sequence of idempotent phases, each of which first looks at what exists:

1. the group (server): created with one key per machine, or found again — it must
   carry ``settings.crc_up`` for this scenario, so ``up`` never adopts a stranger's group;
   one this run made is deleted again if the run fails before any machine was made;
   while it runs, ``up`` holds the group's lease (``lease.py``): a ``crc up`` from
   another configuration directory or computer is refused before it changes anything;
2. the instances (provider, found by tag): only machines without one are created, with
   the key kept in the local state file since phase 1 — so ``up`` after a crash or
   Ctrl-C never makes a second machine for a slot;
3. readiness: a live view of each machine's state and latest progress line;
4. the steps (graph.py), skipping those that succeeded before (``crc.up/steps``);
5. a summary table (or a JSON document).

``crc down`` takes it all away again (``down.py``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

from ...bootstrap import BootstrapParams
from ...errors import (
    Conflict,
    CrcError,
    InvalidInput,
    NotFound,
    ProviderError,
    Unavailable,
)
from ...providers import (
    MACHINE_TAG_PREFIX,
    Feature,
    Instance,
    MachineSpec,
    Provider,
    tag_value,
)
from ..client import Client
from ..follow import follow_events
from ..profile import Profile
from .graph import StepResult, run_steps
from .lease import Lease, lease_period, new_holder
from .model import Scenario
from .report import RunReporter
from .state import STEPS_KEY, LocalState, step_digest
from .steps import StepExecutor
from .twins import Verdict, resolve_twins
from .view import View

__all__ = ["DownFirst", "Runner"]


class DownFirst(Conflict):
    """What was made cannot be resumed (the scenario changed under it, a machine or its
    key is lost): only `crc down` then `crc up` goes on. The CLI then does not say that
    `crc up` again resumes."""


def _loopback(urls: str) -> bool:
    """Whether the server URL (one of several, comma-separated) is a loopback one."""
    return any(_loopback_one(u.strip()) for u in urls.split(","))


def _loopback_one(url: str) -> bool:
    try:
        host = urllib.parse.urlsplit(url).hostname or ""
    except ValueError:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _labels(labels: object) -> str:
    pairs = sorted(labels.items()) if isinstance(labels, dict) else []
    return ",".join(f"{k}={v}" for k, v in pairs) or "no labels"


def _ttl_text(ttl: float | None) -> str:
    return "none" if ttl is None else f"{ttl:g}s"


def _ttl_of(group: dict[str, Any]) -> float | None:
    """The TTL a group was made with (seconds), or None (none, or not told)."""
    created, expires = group.get("created"), group.get("expires")
    if isinstance(created, (int, float)) and isinstance(expires, (int, float)):
        return round(float(expires) - float(created))
    return None


def _progress_text(progress: dict[str, Any] | None) -> str | None:
    if not progress:
        return None
    pct = progress.get("percent")
    return (f"{pct:.0f}% " if isinstance(pct, (int, float)) else "") + str(progress.get("text"))


RECORD_WINDOW = 30.0  # how long recording a succeeded step is tried through a server blip


class Runner:
    """Brings ``scenario`` up on the server of ``profile`` with ``provider``."""

    def __init__(
        self,
        scenario: Scenario,
        profile: Profile,
        provider: Provider,
        view: View,
        *,
        state: LocalState | None = None,
        rerun: bool = False,
        max_parallel: int = 8,
    ) -> None:
        self.scenario = scenario
        self.group = scenario.name
        self.profile = profile
        self.provider = provider
        self.view = view
        self.state = state or LocalState.for_group(self.group)
        self.rerun = rerun
        self.max_parallel = max_parallel
        self.client = Client(profile.url, profile.token, profile.fingerprint, profile.cert_pem)
        self._cert = self.client.cert_pem
        self._lock = threading.Lock()
        self.instances: dict[str, Instance] = {}
        self._twins: set[str] = set()  # second instances of a machine, dealt with
        # Second instances not destroyed (only named): instance id -> machine name.
        self.twins_left: dict[str, str] = {}
        # Machines whose create failed in a way that may have made them all the same (a
        # lost answer): the provider may list them only later.
        self.uncertain: list[str] = []
        # Machines of the group or at the provider that the file no longer names: left
        # running (never destroyed by `crc up`), named at the end. Name -> instance ids.
        self.not_in_file: dict[str, list[str]] = {}
        self.results: dict[str, StepResult] = {}
        try:
            self.report = RunReporter(self.new_client(), self.group, self.view.info)
        except BaseException:
            self.client.close()
            raise
        # What this run did with the group, as far as it knows: None (not looked up: the
        # server was not reached), "existed" (found: this run never deletes it), "sent"
        # (its create was sent without an answer: it may exist), "created" (made by this
        # run), "deleted" (made by this run and deleted again: it failed before any
        # machine was made).
        self.group_origin: str | None = None
        # Whether the group was there to go on with (not refused, not unreachable first).
        self.started = False
        # A machine whose create was called and neither returned nor failed in a way
        # that says nothing was made (any error but the provider's own).
        self._creating: str | None = None
        self._replaced = False
        # The group's lease on the server (lease.py): who else may be working on it.
        holder = self.state.data.get("holder")
        self.holder = holder if isinstance(holder, str) and holder else new_holder()
        self.lease = Lease(
            self.new_client,
            self.group,
            self.holder,
            self.report.run_id,
            str(self.state.path),
            self.view.info,
            lease_period(),
        )

    def new_client(self) -> Client:
        return Client(self.profile.url, self.profile.token, self.profile.fingerprint, self._cert)

    def close(self) -> None:
        self.client.close()
        self.report.client.close()

    # -- up -----------------------------------------------------------------------------
    def up(self) -> int:
        """Run every phase; return 0 if every step succeeded, else 1 (errors raise)."""
        with self.state.locked("crc up"):
            try:
                return self._up()
            finally:
                self.lease.release()

    def _up(self) -> int:
        t0 = time.monotonic()
        s = self.scenario
        mode = self.provider.describe()
        self.view.info(
            f"scenario {s.name}: {len(s.machines)} machine(s), {len(s.steps)} "
            f"step(s), provider {self.provider.name}" + (f" ({mode})" if mode else ""),
            scenario=s.name,
            provider=self.provider.name,
            server=self.profile.url,
        )
        if self.provider.capabilities.public_addresses and _loopback(self.profile.url):
            # A cloud's machines would dial themselves: they never enroll.
            self.view.info(
                f"warning: machines at {self.provider.name} will connect to "
                f"{self.profile.url}, a loopback address: on a machine that is the "
                "machine itself, not this server (`crc login` with an address the "
                "machines can reach)",
            )
        ok = False
        why: str | None = None
        failed: CrcError | None = None
        try:
            group = self._ensure_group()
            self.started = True
            self._show_dashboard()
            self.report.start(s.name, s.steps)
            self.report.phase("machines")
            self._ensure_instances(group)
            self.report.phase("ready")
            self._wait_ready()
            self.report.phase("steps")
            self.results = self._run_steps()
            ok = all(r.ok for r in self.results.values())
        except KeyboardInterrupt:
            why = "interrupted"
            self.view.info("interrupted: running jobs were cancelled; `crc up` again resumes")
            raise
        except CrcError as exc:
            why = exc.message
            failed = exc
            raise
        finally:
            self.report.end(ok, why)
            if failed is not None and self.group_origin == "created":
                self._undo_group()
            doc = self.summary(ok, time.monotonic() - t0)
            if why == "interrupted":
                doc["interrupted"] = True
            elif failed is not None and not self.started:
                # Ended before anything was made or looked up: no address or instance
                # was read, none to show. The server could not be reached (as every
                # command says it: exit 6), or it refused (`crc down` first, a group
                # `crc up` did not make).
                doc["unreachable" if isinstance(failed, Unavailable) else "refused"] = True
            if self.group_origin == "deleted":
                doc["group_deleted"] = True
            if self.uncertain:  # creates without a clear answer: they may exist
                doc["uncertain"] = list(self.uncertain)
            if self.not_in_file:
                doc["not_in_file"] = [
                    {"machine": name, "instances": ids}
                    for name, ids in sorted(self.not_in_file.items())
                ]
            if self.twins_left:
                doc["second_instances"] = [
                    {"machine": name, "instance": iid} for iid, name in self.twins_left.items()
                ]
            self.view.summary(doc)
        return 0 if ok else 1

    def _undo_group(self) -> None:
        """After a failure: delete the group this run made when no machine was made, so
        that a `crc up` that failed at its start (the provider refused the key, the plan,
        the region) leaves nothing behind. Never a group that existed before, one made by
        another run meanwhile (``run_id``), one a machine enrolled in, nor one whose
        machines may have been made (a create without a clear answer)."""
        if self.instances or self.twins_left or self.not_in_file or self._replaced:
            return
        if self.uncertain or self._creating:
            # A provider whose failed create leaves nothing (no second instance can show
            # up later: `local`) is asked: listing none, none was made after all.
            if self.provider.capabilities.twins:
                return
            try:
                if self.provider.list(self.group):
                    return
            except ProviderError:
                return
            self.uncertain.clear()
            self._creating = None
        try:
            group = self.client.group(self.group)
            mine = (group.get("settings") or {}).get("crc_up")
            if not isinstance(mine, dict) or mine.get("run_id") != self.report.run_id:
                return  # not the group this run made (deleted and made again meanwhile)
            if any(m.get("state") != "pending" for m in group["machines"]):
                return  # a machine enrolled: it is a machine somewhere, `crc down`'s case
            self.client.delete_group(self.group)
        except NotFound:
            return  # deleted meanwhile (`crc down`)
        except KeyboardInterrupt:  # the failure is said next; the group is left as made
            self.view.info(
                f"interrupted: group {self.group} (no machine) may be left: `crc down` deletes it"
            )
            return
        except CrcError as exc:
            self.view.info(
                f"group {self.group} was made by this `crc up` and holds no machine, but "
                f"could not be deleted again ({exc.message}): `crc up` again resumes it, "
                "`crc down` deletes it",
                group=self.group,
                deleted=False,
            )
            return
        self.group_origin = "deleted"
        self.state.delete()  # the keys of a group that is gone
        self.view.info(
            f"group {self.group} deleted again: this `crc up` made it and no machine was "
            "made, so nothing is left",
            group=self.group,
            deleted=True,
        )

    def _show_dashboard(self) -> None:
        """Print where the server's dashboard shows this run (when it has one)."""
        try:
            path = self.client.health().get("dashboard")
        except CrcError:
            return
        if isinstance(path, str) and path.startswith("/"):
            url = f"{self.client.url}{path}groups/{self.group}"
            self.view.info(f"dashboard: {url}", dashboard=url)

    def summary(self, ok: bool, seconds: float) -> dict[str, Any]:
        machines = []
        try:
            states = {m["name"]: m for m in self.client.group(self.group)["machines"]}
        except CrcError:
            states = {}
        for m in self.scenario.machines:
            inst = self.instances.get(m.name)
            machines.append(
                {
                    "name": m.name,
                    "state": states.get(m.name, {}).get("state", "-"),
                    "ip": inst.private_ip or inst.main_ip if inst else None,
                    "instance": inst.id if inst else None,
                }
            )
        steps = [
            {
                "name": r.name,
                "status": r.status,
                "attempts": r.attempts,
                "seconds": round(r.seconds, 2),
                "message": r.message,
            }
            for r in (self.results.get(st.name) for st in self.scenario.steps)
            if r is not None
        ]
        return {
            "scenario": self.scenario.name,
            "group": self.group,
            "ok": ok,
            "seconds": round(seconds, 2),
            "machines": machines,
            "steps": steps,
        }

    def _settings(self) -> dict[str, Any]:
        s = self.scenario
        return {
            "scenario": s.name,
            "provider": s.provider,
            "provider_settings": s.provider_settings,
            "file": str(s.path),
            "digest": s.digest,
            # Which run made the group: only that run deletes it again (``_undo_group``).
            "run_id": self.report.run_id,
            # Which configuration directory made it, holding the lease until it writes
            # one (lease.py).
            "holder": self.holder,
            "lease_period": self.lease.period,
        }

    def _ensure_group(self) -> dict[str, Any]:
        s, c = self.scenario, self.client
        try:
            group = c.group(self.group)
        except NotFound:
            try:
                return self._create_group()
            except Conflict as exc:
                if type(exc) is not Conflict:
                    raise
                # Made by another `crc up` at the same moment: the lease says whose.
                try:
                    group = c.group(self.group)
                except NotFound:
                    raise exc from None
        self.group_origin = "existed"
        mine = (group.get("settings") or {}).get("crc_up")
        if not isinstance(mine, dict) or mine.get("scenario") != s.name:
            raise Conflict(
                f"group {self.group} exists and was not made by `crc up` for this "
                f"scenario: rename the scenario or `crc group delete {self.group}`"
            )
        if mine.get("provider") != s.provider:
            raise DownFirst(
                f"group {self.group} runs on provider {mine.get('provider')}; the "
                f"scenario now says {s.provider}: `crc down --group {self.group}` it first"
            )
        if group.get("expired"):  # the server revoked its machines: nothing resumes
            raise DownFirst(
                f"group {self.group} has expired (its TTL passed): its machines are "
                f"revoked: `crc down --group {self.group}` then `crc up`"
            )
        have = {m["name"]: m for m in group["machines"]}
        for name in have:
            if name not in s.machine_names:
                self.not_in_file.setdefault(name, [])
        # A machine's labels are given when its group is made: steps would select by
        # the file's and the server would answer with the group's.
        changed = [
            f"{m.name} ({_labels(have[m.name].get('labels'))} -> {_labels(m.labels)})"
            for m in s.machines
            if m.name in have and (have[m.name].get("labels") or {}) != m.labels
        ]
        if changed:
            raise DownFirst(
                f"the labels of machine(s) {', '.join(changed)} changed in the scenario "
                f"after group {self.group} was made: put them back, or `crc down --group "
                f"{self.group}` then `crc up`"
            )
        made_for = _ttl_of(group)
        if (s.ttl is None) != (made_for is None) or (
            s.ttl is not None and made_for is not None and abs(made_for - s.ttl) > 1
        ):
            self.view.info(
                f"ttl: the scenario says {_ttl_text(s.ttl)}; group {self.group} keeps the "
                f"TTL it was made with ({_ttl_text(made_for)}): `crc down` then `crc up` "
                "applies it"
            )
        added = [n for n in s.machine_names if n not in have]
        if added:
            raise DownFirst(
                f"machine(s) {', '.join(added)} were added to the scenario after "
                f"group {self.group} was made: `crc down --group {self.group}` then `crc up`"
            )
        # Before anything is changed: refused while another `crc up` works on it.
        self.lease.acquire(c, group)
        self.state.save(holder=self.holder)
        keys = self.state.keys if self.state.data.get("server") == self.profile.url else {}
        untouched = all(m["state"] == "pending" for m in have.values())
        if untouched and not keys and not self.provider.list(self.group):
            # Interrupted between creating the group and saving its keys: nothing else
            # exists, so start over instead of asking the user to clean up.
            self.view.info(
                f"group {self.group} exists but its keys were lost before any "
                "machine was made: making it again"
            )
            c.delete_group(self.group)
            self.group_origin = None
            self._replaced = True  # made again in place of one that existed: kept
            return self._create_group()
        self.view.info(f"group {self.group} exists: resuming", group=self.group, created=False)
        self._arm_teardown(group)
        return group

    def _create_group(self) -> dict[str, Any]:
        s = self.scenario
        self._check_teardown()  # before anything is made
        self.group_origin = "sent"
        try:
            out = self.client.create_group(
                self.group,
                [{"name": m.name, "labels": m.labels} for m in s.machines],
                ttl=s.ttl,
                settings={"crc_up": self._settings()},
            )
        except Unavailable:
            raise  # no answer: it may have been made
        except CrcError:
            self.group_origin = None  # the server answered: it made nothing
            raise
        self.group_origin = "created"
        # Keys are shown once: keep them before doing anything else.
        self.state.data = {}
        self.state.save(
            scenario=s.name,
            group=self.group,
            server=self.profile.url,
            provider=s.provider,
            file=str(s.path),
            keys={m["name"]: m["key"] for m in out["machines"]},
            holder=self.holder,
        )
        self.lease.hold_new(self.client)
        self.view.info(f"group {self.group} created", group=self.group, created=True)
        group = self.client.group(self.group)
        self._arm_teardown(group)
        return group

    def _arm_teardown(self, group: dict[str, Any]) -> None:
        """``on_ttl: destroy``: before any machine exists, hand the server the provider
        key, so that the machines go when the TTL passes even if nobody runs `crc down`."""
        if self.scenario.on_ttl != "destroy" or group.get("teardown"):
            return
        self._check_teardown()
        self.client.arm_teardown(
            self.group, self.provider.name, self.provider.teardown_credential()
        )
        self.view.info(
            f"the server destroys the machines at {self.provider.name} when the "
            "TTL passes (on_ttl: destroy)",
            group=self.group,
            teardown="armed",
        )

    def _check_teardown(self) -> None:
        if self.scenario.on_ttl == "destroy" and not self.provider.capabilities.supports(
            Feature.SERVER_TEARDOWN
        ):
            raise InvalidInput(
                f"on_ttl: destroy is not available with the {self.provider.name} provider"
            )

    def _startup_script(self, spec: MachineSpec, key: str) -> str:
        params = BootstrapParams(
            self.profile.url, self.profile.fingerprint, self.group, spec.name, key
        )
        return self.provider.startup_script(spec, params)

    def _ensure_instances(self, group: dict[str, Any]) -> None:
        s, p = self.scenario, self.provider
        found: dict[str, list[Instance]] = {}
        for inst in p.list(self.group):
            name = tag_value(inst.tags, MACHINE_TAG_PREFIX) or inst.name
            found.setdefault(name, []).append(inst)
            if name not in s.machine_names and not inst.leftover:
                self.not_in_file.setdefault(name, []).append(inst.id)
        states = {m["name"]: m["state"] for m in group["machines"]}
        keys = self.state.keys
        known = self.state.instances
        for m in s.machines:
            insts = [i for i in found.get(m.name, []) if not i.leftover]
            for stale in [i for i in found.get(m.name, []) if i.leftover]:
                p.destroy(stale.id)
            if insts:
                # The one an earlier `crc up` found to be the machine, if it had twins.
                inst = next((i for i in insts if i.id == known.get(m.name)), None) or next(
                    (i for i in insts if i.ready), insts[0]
                )
                if not inst.ready and inst.stopped and p.capabilities.supports(Feature.START):
                    inst = p.start(inst.id)
                self.instances[m.name] = inst
                self.view.machine(
                    m.name,
                    states.get(m.name),
                    f"instance {inst.id} ({inst.status})",
                    instance=inst.id,
                )
                continue
            if states.get(m.name) != "pending":
                raise DownFirst(
                    f"machine {m.name} enrolled before but has no instance at "
                    f"{p.name} any more: `crc down --group {self.group}` then `crc up`"
                )
            key = keys.get(m.name)
            if not key:
                raise DownFirst(
                    f"the enrollment key of machine {m.name} is lost (it was kept "
                    f"in {self.state.path}): `crc down --group {self.group}` then `crc up`"
                )
            spec = MachineSpec(
                name=m.name,
                os=m.os,
                region=m.region or "",
                plan=m.plan or "",
                image=m.image or "",
                labels=m.labels,
                extra=m.extra,
            )
            self._creating = m.name
            try:
                inst = p.create(self.group, spec, self._startup_script(spec, key))
            except KeyboardInterrupt:
                # Ctrl-C (or a signal taken as it) during the create: the request may
                # have reached the provider, which then makes the machine all the same.
                self.uncertain.append(m.name)
                raise
            except ProviderError as exc:
                # Refused for good, never sent (no connection) or rate limited on every
                # try: nothing was made.
                if not (exc.permanent or exc.unsent):
                    self.uncertain.append(m.name)
                self._creating = None  # said by ``uncertain``
                if exc.message.startswith(f"machine {m.name}:"):
                    raise
                # Say which machine: the provider's words name only its API call.
                raise ProviderError(
                    f"machine {m.name}: {exc.message}",
                    code=exc.code,
                    permanent=exc.permanent,
                    unsent=exc.unsent,
                    **exc.details,
                ) from None
            self._creating = None
            self.instances[m.name] = inst
            self.view.machine(m.name, "booting", f"instance {inst.id} created", instance=inst.id)
        for name, inst in list(self.instances.items()):
            if not inst.ready:
                self.instances[name] = p.wait_running(inst.id, s.ready_timeout)
        self._remember_instances()

    def _wait_ready(self) -> None:
        c, s = self.client, self.scenario
        deadline = time.monotonic() + s.ready_timeout
        cursor = c.event_cursor(self.group)
        states: dict[str, str] = {}
        wanted = set(s.machine_names)
        for m in c.group(self.group)["machines"]:
            states[m["name"]] = m["state"]
            if m["name"] in wanted:  # not those the file no longer names
                self.view.machine(m["name"], m["state"], _progress_text(m.get("progress")))
        checked = time.monotonic()
        every = self.provider.capabilities.liveness_interval

        def finished() -> bool:
            return all(states.get(n) == "ready" for n in wanted)

        if not finished():
            for ev in follow_events(self.new_client, self.group, cursor):
                if ev is not None and ev.get("machine") in wanted:
                    if ev["type"] == "machine.state":
                        states[ev["machine"]] = ev["data"]["state"]
                        self.view.machine(ev["machine"], ev["data"]["state"])
                    elif ev["type"] == "progress":
                        self.view.machine(ev["machine"], progress=_progress_text(ev["data"]))
                if finished():
                    break
                revoked = sorted(n for n in wanted if states.get(n) == "revoked")
                if revoked:
                    raise Conflict(f"machine(s) revoked while starting: {', '.join(revoked)}")
                if time.monotonic() - checked > every:
                    checked = time.monotonic()
                    self._check_alive(states)
                    self._destroy_twins()
                if time.monotonic() > deadline:
                    late = sorted(n for n in wanted if states.get(n) != "ready")
                    raise Unavailable(
                        f"timed out after {s.ready_timeout:g}s: not ready: {', '.join(late)}",
                        code="timeout",
                    )
        self._destroy_twins()
        self.state.save(keys={})  # every key is used now: nothing secret is left here
        # The stream may still hold older events than the snapshot the wait started
        # from: show what is true now before saying so.
        for m in c.group(self.group)["machines"]:
            if m["name"] in wanted:
                self.view.machine(m["name"], m["state"])
        self.view.info(f"all {len(wanted)} machines ready")

    def _destroy_twins(self) -> None:
        """Settle the slots the provider lists more than one instance for: keep the one
        that is the machine, destroy the others once that is known (``twins.py`` says
        how: the server, asked now, says whether and from where the machine enrolled).

        A create whose answer was lost and whose instance the provider did not list yet
        is sent again (Vultr: ``VultrProvider.create``), and the first instance shows up
        later, tagged for the same machine, with the same single-use key. While the
        machine is ``pending`` the one `crc up` does not wait for is destroyed; once it
        enrolled, the one whose addresses are the machine's is kept (it may be the first
        one: `crc up` then goes on with it, and records it) and the other destroyed.
        Until that is known, the others are named, and `crc down` destroys them.

        Nothing to do (and no listing) at a provider that never makes twins."""
        if not self.provider.capabilities.twins:
            return
        try:
            listed = self.provider.list(self.group)
        except ProviderError:
            return  # a hiccup at the provider: asked again at the next check
        others: dict[str, list[Instance]] = {}
        for inst in listed:
            name = tag_value(inst.tags, MACHINE_TAG_PREFIX) or inst.name
            mine = self.instances.get(name)
            if mine is None or inst.id == mine.id or inst.id in self._twins or inst.leftover:
                continue
            others.setdefault(name, []).append(inst)
        if not others:
            return
        # The events seen may be seconds old, and the second instance (the first made)
        # may be the one enrolling: the server is asked now.
        try:
            group = self.client.group(self.group)
        except CrcError:
            return  # asked again at the next check
        machines = {m["name"]: m for m in group["machines"]}
        for name, twins in others.items():
            self._settle(name, resolve_twins(self.instances[name], twins, machines.get(name)))

    def _settle(self, name: str, verdict: Verdict) -> None:
        """Carry out ``verdict`` for machine ``name`` (see ``_destroy_twins``)."""
        was = self.instances[name]
        if verdict.keep.id != was.id:
            self.instances[name] = verdict.keep
            self.twins_left.pop(verdict.keep.id, None)
            self._remember_instances()
            self.view.info(
                f"machine {name} enrolled from instance {verdict.keep.id} (its address "
                f"{verdict.address}), made by a create whose answer was lost: kept instead "
                f"of {was.id}, which cannot enroll (the key is used)",
                machine=name,
                instance=verdict.keep.id,
            )
            self.view.machine(
                name, progress=f"instance {verdict.keep.id}", instance=verdict.keep.id
            )
        for inst in verdict.destroy:
            # Named as left until its destroy is known done: a Ctrl-C while it is
            # under way still counts it among the machines at the provider.
            self.twins_left[inst.id] = name
            try:
                self.provider.destroy(inst.id)
            except ProviderError as exc:
                self.view.info(
                    f"warning: machine {name} has a second instance {inst.id} that "
                    f"{self.provider.name} did not destroy ({exc.message}); tried again "
                    "later, `crc down` destroys it"
                )
                continue
            self.twins_left.pop(inst.id, None)
            self.view.info(
                f"machine {name}: destroyed its second instance {inst.id} (made by a "
                "create whose answer was lost)",
                machine=name,
                instance=inst.id,
            )
            self._twins.add(inst.id)
        for inst in verdict.unknown:
            if inst.id not in self.twins_left:  # said once; asked again at each check
                self.twins_left[inst.id] = name
                self.view.info(
                    f"warning: machine {name} has a second instance {inst.id} beside "
                    f"{verdict.keep.id}: `crc down` destroys both"
                )

    def _remember_instances(self) -> None:
        """Keep which instance is each machine in the local state: a `crc up` that
        resumes goes on with it when the provider lists more than one."""
        self.state.save(instances={n: i.id for n, i in self.instances.items()})

    def _check_alive(self, states: dict[str, str]) -> None:
        """Fail fast when a machine that is not ready yet died at the provider."""
        for name, inst in self.instances.items():
            if states.get(name) == "ready":
                continue
            try:
                now = self.provider.get(inst.id)
            except ProviderError:
                continue  # a hiccup at the provider is not a death: ask again next time
            if now is None or now.stopped:
                detail = ""
                if self.provider.capabilities.supports(Feature.CONSOLE):
                    with contextlib.suppress(ProviderError):
                        tail = self.provider.console_tail(inst.id)
                        detail = f"; its console ends with:\n{tail}"
                raise Unavailable(f"machine {name} ({inst.id}) stopped before it was ready{detail}")

    # -- steps --------------------------------------------------------------------------
    def _stored_steps(self) -> dict[str, Any]:
        try:
            value = self.client.kv_get(self.group, STEPS_KEY)["value"]
        except NotFound:
            return {}
        return value if isinstance(value, dict) else {}

    def _run_steps(self) -> dict[str, StepResult]:
        steps = self.scenario.steps
        if self.rerun:
            # Forgotten before anything runs again: a rerun killed mid-step must not
            # leave the next `crc up` counting steps done whose new job still runs
            # (that one then follows the job, as after any crash).
            self.client.kv_set(self.group, STEPS_KEY, {})
        stored = {} if self.rerun else self._stored_steps()
        done: set[str] = set()
        for st in steps:  # file order: a step's needs come first
            rec = stored.get(st.name)
            if (
                isinstance(rec, dict)
                and rec.get("digest") == step_digest(st, self.scenario.variables)
                and all(n in done for n in st.needs)
            ):
                done.add(st.name)
        record = {n: stored[n] for n in done}
        executor = StepExecutor(
            self.scenario, self.group, self.new_client, self.provider, self.instances, self.view
        )
        by_name = {st.name: st for st in steps}

        def notify(event: str, step: Any, data: dict[str, Any]) -> None:
            self.view.step(event, step.name, **data)
            self.report.step(event, step.name, data)
            if event == "succeeded":
                with self._lock:
                    record[step.name] = {
                        "digest": step_digest(by_name[step.name], self.scenario.variables),
                        "at": time.time(),
                    }
                    self._record_steps(step.name, dict(record))

        def record_all() -> None:
            # Also wakes the event follower (any event does) so it sees it must stop.
            with self._lock, contextlib.suppress(CrcError):
                self.client.kv_set(self.group, STEPS_KEY, dict(record))

        with self._following(record_all):
            return run_steps(
                steps,
                executor,
                done=done,
                max_parallel=self.max_parallel,
                notify=notify,
                on_interrupt=executor.cancel_all,
                results=self.results,
            )

    def _record_steps(self, name: str, record: dict[str, Any]) -> None:
        """Store which steps succeeded (``crc.up/steps``), trying again through a server
        that is restarting or out of reach for up to ``RECORD_WINDOW`` seconds: the whole
        value is written each time, so a repeat changes nothing. Past that, a note; the
        step did succeed, and only a later ``crc up`` runs it again."""
        deadline = time.monotonic() + RECORD_WINDOW
        delay = 0.25
        while True:
            try:
                self.client.kv_set(self.group, STEPS_KEY, record)
                return
            except NotFound as exc:  # the group deleted, or its TTL passed: kept no more
                self.view.info(f"could not record that step {name} succeeded ({exc.message})")
                return
            except Unavailable as exc:
                if time.monotonic() + delay > deadline:
                    self.view.info(
                        f"could not record that step {name} succeeded ({exc.message}); "
                        "a later `crc up` runs it again"
                    )
                    return
            time.sleep(delay)
            delay = min(2.0, delay * 2)

    @contextlib.contextmanager
    def _following(self, wake: Callable[[], None]) -> Iterator[None]:
        """Keep the machine lines live (state, progress) while steps run: a thread that
        follows the group's events. It checks ``stop`` at each event or keepalive, so
        ``wake`` (which makes an event) lets it end at once instead of within 5 s."""
        c = self.new_client()
        stop = threading.Event()
        cursor = self.client.event_cursor(self.group)

        def follow() -> None:
            try:
                for ev in c.events(self.group, since=cursor, follow=True, keepalive=True):
                    if stop.is_set():
                        return
                    if ev is None or ev.get("machine") not in self.scenario.machine_names:
                        continue
                    if ev["type"] == "machine.state":
                        self.view.machine(ev["machine"], ev["data"]["state"])
                    elif ev["type"] == "progress":
                        self.view.machine(ev["machine"], progress=_progress_text(ev["data"]))
            except Exception:  # noqa: BLE001,S110 -- closing the client ends the stream
                pass

        thread = threading.Thread(target=follow, name="crc-up-events", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            wake()
            thread.join(10)
            c.close()
