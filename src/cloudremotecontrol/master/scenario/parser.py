"""Reading a scenario file's node tree into the model (model.py), every check of the
format documented in docs/scenarios.md. Problems are collected, never raised, so one run
reports all of them (see yamlnodes.NodeReader)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ...errors import CrcError, InvalidInput
from ...protocol.fields import check_remote_path
from ...protocol.jsoncheck import check_json
from ...protocol.limits import (
    MAX_COMMAND_BYTES,
    MAX_MACHINES_PER_GROUP,
    MAX_SCENARIO_STEPS,
    MAX_TIMEOUT_SECONDS,
)
from ...protocol.messages import JobRun
from ...protocol.names import (
    check_all_alone,
    check_kv_key,
    check_label,
    check_message_type,
    check_name,
    check_new_name,
    parse_target,
)
from ...protocol.rollout import KEYS as ROLLOUT_KEYS
from ...protocol.rollout import Rollout
from ...protocol.wire import wire_fields
from ...providers import (
    DEFAULT_PROVIDER,
    Capabilities,
    Feature,
    provider_class,
    provider_names,
    teardown_providers,
)
from ...providers.base import MachineField
from . import shellquote, templates
from .model import (
    DEFAULT_READY_TIMEOUT,
    DEFAULT_RETRY_DELAY,
    DEFAULT_STEP_TIMEOUT,
    STEP_KINDS,
    Action,
    HostsAction,
    MachineDef,
    OsName,
    PushAction,
    RebootAction,
    RunAction,
    Scenario,
    SendAction,
    Step,
    WaitAction,
)
from .yamlnodes import NodeReader, read_bounded, regular_file_problem

#: The server refuses a group whose TTL is longer (server/ops/groups.py).
MAX_GROUP_TTL = 365 * 86400

__all__ = ["ScenarioParser"]

_TOP = (
    "name",
    "description",
    "provider",
    "defaults",
    "ttl",
    "on_ttl",
    "timeouts",
    "variables",
    "machines",
    "steps",
)
_OSES: tuple[OsName, ...] = ("linux", "windows")
_MACHINE = ("os", "labels", "region", "plan", "image", "provider", "description", "expose")
_STEP = (
    "name",
    "description",
    "to",
    "needs",
    "retries",
    "retry_delay",
    "timeout",
    "shell",
    "env",
    "cwd",
    *ROLLOUT_KEYS,
    *STEP_KINDS,
)
_OS_NAMES = {"linux": "Linux", "windows": "Windows"}
_SHELLS = ("bash", "sh", "powershell", "cmd")
_MODE = re.compile(r"^0?[0-7]{3,4}$")
_STR_TAG = "tag:yaml.org,2002:str"
_SCRIPT_SHELLS = {".sh": "sh", ".bash": "bash", ".ps1": "powershell", ".cmd": "cmd", ".bat": "cmd"}


def check_field(r: NodeReader, node: yaml.Node, path: str, fn: Any, *args: Any) -> Any:
    """Run one of protocol.names' checks, turning its error into a problem."""
    try:
        return fn(*args)
    except CrcError as exc:
        r.error(node, path, exc.message)
        return None


class ScenarioParser:
    def __init__(self, r: NodeReader, path: Path) -> None:
        self.r = r
        self.path = path
        self.base = path.parent
        self.machines: dict[str, MachineDef] = {}
        self.variables: dict[str, Any] = {}
        # Where `defaults:` gives each value (``region``, ``image.linux``...), so that a
        # value the provider would refuse is said there, once, not at every machine.
        self._default_nodes: dict[str, tuple[Any, yaml.Node]] = {}
        self._told_defaults: set[tuple[str, str]] = set()
        self.provider = DEFAULT_PROVIDER
        # What the provider declares (providers/base.py): every provider-specific check
        # below reads it, none names a provider.
        self.caps: Capabilities | None = None
        self.step_timeout = DEFAULT_STEP_TIMEOUT

    def scenario(self, digest: str) -> Scenario | None:
        r = self.r
        root = r.root()
        if root is None:
            if not r.problems:
                r.error(
                    None,
                    "",
                    "empty file: a scenario needs a name and machines (steps are optional)",
                )
            return None
        top = r.mapping(root, "", _TOP)
        if top is None:
            return None
        for key in ("name", "machines"):
            if key not in top:
                r.error(root, key, "required field is missing")
        name = None
        if "name" in top:
            node = top["name"][1]
            text = r.string(node, "name")
            name = text and check_field(r, node, "name", check_new_name, text, "scenario name")
        settings = self.provider_settings(top)
        # Any finite TTL here: one past the server's limit is refused just below, saying so.
        ttl = r.duration(top["ttl"][1], "ttl", math.inf) if "ttl" in top else None
        if ttl is not None and ttl > MAX_GROUP_TTL:
            r.error(top["ttl"][1], "ttl", "at most 365d (the server's limit for a group)")
        on_ttl = "revoke"
        if "on_ttl" in top:
            node = top["on_ttl"][1]
            on_ttl = r.choice(node, "on_ttl", ("revoke", "destroy")) or on_ttl
            if on_ttl == "destroy" and "ttl" not in top:
                r.error(node, "on_ttl", "destroy needs a ttl (when to destroy the machines)")
            elif (
                on_ttl == "destroy"
                and self.caps is not None
                and not self.caps.supports(Feature.SERVER_TEARDOWN)
            ):
                able = " or ".join(teardown_providers()) or "no installed"
                r.error(
                    node,
                    "on_ttl",
                    f"the server cannot destroy {self.provider} machines: "
                    f"destroy is for the {able} provider",
                )
        ready_timeout = DEFAULT_READY_TIMEOUT
        if "timeouts" in top:
            t = r.mapping(top["timeouts"][1], "timeouts", ("ready", "step")) or {}
            if "ready" in t:
                ready_timeout = r.duration(t["ready"][1], "timeouts.ready") or ready_timeout
            if "step" in t:
                self.step_timeout = r.duration(t["step"][1], "timeouts.step") or self.step_timeout
        if "variables" in top:
            node = top["variables"][1]
            value = r.value(node, "variables")
            if value is not None and not (
                isinstance(value, dict) and all(isinstance(k, str) for k in value)
            ):
                r.error(node, "variables", "expected a mapping of names to values")
            else:
                self.variables = value or {}
        defaults = self._defaults(top["defaults"][1]) if "defaults" in top else {}
        if "machines" in top:
            self._machines(top["machines"][1], defaults)
        steps: list[Step] = []
        if "steps" in top:
            steps = self._steps(top["steps"][1])
        description = ""
        if "description" in top:
            description = r.string(top["description"][1], "description", empty=True) or ""
        if r.problems or name is None:
            return None
        return Scenario(
            name=name,
            path=self.path,
            provider=self.provider,
            provider_settings=settings,
            ttl=ttl,
            on_ttl=on_ttl,
            ready_timeout=ready_timeout,
            machines=tuple(self.machines.values()),
            variables=self.variables,
            steps=tuple(steps),
            description=description,
            digest=digest,
        )

    def provider_settings(self, top: dict[str, tuple[yaml.Node, yaml.Node]]) -> dict[str, Any]:
        """The ``provider`` field of the file's mapping ``top``: sets ``self.provider``
        (and the capabilities its steps are checked against), returns its settings;
        its problems go to the reader."""
        r = self.r
        names = tuple(provider_names())
        if "provider" not in top:
            self.caps = self._capabilities(None)
            return {}
        node = top["provider"][1]
        if isinstance(node, yaml.ScalarNode):
            self.provider = r.choice(node, "provider", names) or self.provider
            self.caps = self._capabilities(node)
            return {}
        entries = r.mapping(node, "provider")
        if entries is None:
            return {}
        if "name" not in entries:
            r.error(node, "provider.name", f"required field is missing ({' or '.join(names)})")
            return {}
        name_node = entries["name"][1]
        self.provider = r.choice(name_node, "provider.name", names) or self.provider
        self.caps = self._capabilities(name_node)
        if self.caps is None:
            return {}
        settings: dict[str, Any] = {}
        allowed = ("name", *self.caps.settings)
        for key, (knode, vnode) in entries.items():
            if key not in allowed:
                r.error(
                    knode,
                    f"provider.{key}",
                    f"unknown setting for the {self.provider} "
                    f"provider (expected: {', '.join(allowed)})",
                )
            elif key != "name":
                settings[key] = r.choice(vnode, f"provider.{key}", self.caps.settings[key])
        return settings

    def _capabilities(self, node: yaml.Node | None) -> Capabilities | None:
        """What the chosen provider declares; ``None`` (and a problem) if it won't load."""
        try:
            return provider_class(self.provider).capabilities
        except CrcError as exc:
            self.r.error(node, "provider", exc.message)
            return None

    def _defaults(self, node: yaml.Node) -> dict[str, Any]:
        r = self.r
        entries = r.mapping(node, "defaults", ("os", "region", "plan", "image")) or {}
        out: dict[str, Any] = {}
        for key, (_, vnode) in entries.items():
            path = f"defaults.{key}"
            if key == "os":
                out["os"] = r.choice(vnode, path, _OSES)
            elif key == "image" and isinstance(vnode, yaml.MappingNode):
                images = r.mapping(vnode, path, ("linux", "windows")) or {}
                out["images"] = {k: r.string(v, f"{path}.{k}") for k, (_, v) in images.items()}
                for k, (_, v) in images.items():
                    self._default_nodes[f"image.{k}"] = (out["images"][k], v)
            else:
                out[key] = r.string(vnode, path)
                self._default_nodes[key] = (out[key], vnode)
        return out

    def _machines(self, node: yaml.Node, defaults: dict[str, Any]) -> None:
        r = self.r
        entries = r.mapping(node, "machines")
        if entries is None:
            return
        if not entries:
            r.error(node, "machines", "a scenario needs at least one machine")
        if len(entries) > MAX_MACHINES_PER_GROUP:
            r.error(
                node,
                "machines",
                f"{len(entries)} machines: at most {MAX_MACHINES_PER_GROUP} (the server's "
                "limit for a group)",
            )
            return
        for name, (knode, vnode) in entries.items():
            path = f"machines.{name}"
            if check_field(r, knode, path, check_new_name, name, "machine name") is None:
                continue
            spec: dict[str, tuple[yaml.Node, yaml.Node]] = {}
            if not (isinstance(vnode, yaml.ScalarNode) and r.value(vnode) is None):
                spec = r.mapping(vnode, path, _MACHINE) or {}

            def text(key: str, spec: dict[str, Any] = spec, path: str = path) -> str | None:
                return r.string(spec[key][1], f"{path}.{key}") if key in spec else None

            os_name: OsName = (
                (r.choice(spec["os"][1], f"{path}.os", _OSES) if "os" in spec else None)
                or defaults.get("os")
                or "linux"
            )
            labels: dict[str, str] = {}
            if "labels" in spec:
                labels = r.str_map(spec["labels"][1], f"{path}.labels") or {}
                for k, v in labels.items():
                    check_field(r, spec["labels"][1], f"{path}.labels.{k}", check_label, k, v)
            extra: dict[str, Any] = {}
            if "provider" in spec:
                value = r.value(spec["provider"][1], f"{path}.provider")
                if not isinstance(value, dict):
                    r.error(
                        spec["provider"][1],
                        f"{path}.provider",
                        "expected a mapping of provider fields",
                    )
                elif value and self.caps is not None and not self.caps.machine_options:
                    r.error(
                        spec["provider"][1],
                        f"{path}.provider",
                        f"the {self.provider} provider takes no per-machine overrides",
                    )
                elif self.caps is not None and isinstance(self.caps.machine_options, frozenset):
                    allowed = self.caps.machine_options
                    unknown = sorted(str(k) for k in value if k not in allowed)
                    if unknown:
                        r.error(
                            spec["provider"][1],
                            f"{path}.provider",
                            f"not a {self.provider} option: {', '.join(unknown)} "
                            f"(allowed: {', '.join(sorted(allowed))})",
                        )
                    else:
                        extra = value
                else:
                    extra = value
                if extra and self.caps is not None and self.caps.check_options is not None:
                    self._check_options(
                        self.caps.check_options, extra, spec["provider"][1], f"{path}.provider"
                    )
                sources = sorted(self.caps.image_options & set(extra)) if self.caps else []
                if "image" in spec and sources:  # `defaults`' image gives way to them
                    r.error(
                        spec["image"][1],
                        f"{path}.image",
                        f"give one image source, not {len(sources) + 1}: image, "
                        f"{', '.join(sources)} (provider: {sources[0]} stands in for image)",
                    )
            image = (
                text("image")
                or (defaults.get("images") or {}).get(os_name)
                or defaults.get("image")
            )
            expose: tuple[int, ...] = ()
            if "expose" in spec:  # ports `crc forward --scenario` opens
                enode = spec["expose"][1]
                if isinstance(enode, yaml.SequenceNode):
                    ports = [
                        r.integer(n, f"{path}.expose[{i}]", 1, 65535)
                        for i, n in enumerate(enode.value)
                    ]
                    expose = tuple(dict.fromkeys(p for p in ports if p is not None))
                else:
                    r.error(enode, f"{path}.expose", "expected a list of port numbers, e.g. [80]")
            m = MachineDef(
                expose=expose,
                name=name,
                os=os_name,
                labels=labels,
                region=text("region") or defaults.get("region"),
                plan=text("plan") or defaults.get("plan"),
                image=image,
                extra=extra,
                where=r.where(knode),
            )
            caps = self.caps
            if caps is not None and m.os not in caps.oses:
                runs = " and ".join(_OS_NAMES[o] for o in sorted(caps.oses))
                r.error(
                    knode, f"{path}.os", f"the {self.provider} provider runs {runs} machines only"
                )
            for key in caps.required if caps is not None else ():
                if key == "image" and caps is not None and caps.image_options & set(extra):
                    continue  # an option says what it boots from (a snapshot, say)
                if getattr(m, key) is None:
                    r.error(
                        knode,
                        f"{path}.{key}",
                        f"the {self.provider} provider needs "
                        f"{'an' if key == 'image' else 'a'} {key} (here or in defaults)",
                    )
            if caps is not None and caps.check_field is not None:
                self._check_fields(caps.check_field, m, spec, knode, path)
            self.machines[name] = m

    def _check_options(
        self,
        check: Callable[[dict[str, Any]], list[str]],
        options: dict[str, Any],
        node: yaml.Node,
        path: str,
    ) -> None:
        """What the provider would refuse in a machine's options: each option alone
        first, reported at its own value (its line and column), then all of them
        together for what lies between them (two image sources), at ``provider:``."""
        nodes: dict[str, yaml.Node] = {}  # merge keys are flattened by now (r.value)
        if isinstance(node, yaml.MappingNode):
            for knode, vnode in node.value:
                if isinstance(knode, yaml.ScalarNode) and knode.tag == _STR_TAG:
                    nodes[knode.value] = vnode  # the last of a duplicate, as YAML reads it
        told: set[str] = set()
        for key, value in options.items():
            for problem in check({key: value}):
                told.add(problem)
                self.r.error(nodes.get(str(key), node), f"{path}.{key}", problem)
        for problem in check(options):
            if problem not in told:
                self.r.error(node, path, problem)

    def _check_fields(
        self,
        check: Callable[[MachineField, str], str | None],
        m: MachineDef,
        spec: dict[str, tuple[yaml.Node, yaml.Node]],
        knode: yaml.Node,
        path: str,
    ) -> None:
        """What the provider would refuse in the machine's region, plan and image, found
        before any machine is created (and billed); reported where the machine gives the
        field, else at the machine (the value came from ``defaults``)."""
        fields: tuple[MachineField, ...] = ("region", "plan", "image")
        for key in fields:
            value = getattr(m, key)
            if key == "image" and self.caps is not None and self.caps.image_options & set(m.extra):
                continue  # an option says what it boots from: the image is not sent
            problem = None if value is None else check(key, value)
            if problem is None:
                continue
            if key in spec:
                self.r.error(spec[key][1], f"{path}.{key}", problem)
                continue
            # From `defaults:`: said there, once for every machine that takes it.
            for where in (key, f"{key}.{m.os}"):
                given = self._default_nodes.get(where)
                if given is not None and given[0] == value:
                    if (where, problem) not in self._told_defaults:
                        self._told_defaults.add((where, problem))
                        self.r.error(given[1], f"defaults.{where}", problem)
                    break
            else:
                self.r.error(knode, f"{path}.{key}", problem)

    # -- steps ---------------------------------------------------------------------------
    def _steps(self, node: yaml.Node) -> list[Step]:
        r = self.r
        if not isinstance(node, yaml.SequenceNode):
            if not (isinstance(node, yaml.ScalarNode) and r.value(node) is None):
                r.error(node, "steps", "expected a list of steps (lines starting with -)")
            return []
        if len(node.value) > MAX_SCENARIO_STEPS:
            r.error(node, "steps", f"{len(node.value)} steps: at most {MAX_SCENARIO_STEPS}")
            return []
        steps: list[Step] = []
        nodes: dict[str, yaml.Node] = {}  # every step that has a name, valid or not
        wanted: list[tuple[str, list[str]]] = []
        previous: str | None = None
        for i, snode in enumerate(node.value):
            name, needs, step = self._step(snode, i, previous)
            if name is None:
                continue
            previous = name
            if name in nodes:
                r.error(snode, f"steps[{i}].name", f"another step is named {name!r}")
                continue
            nodes[name] = snode
            wanted.append((name, needs))
            if step is not None:
                steps.append(step)
        # Every step's needs are checked, also those of steps with other problems, and
        # against every named step: one run reports every problem, and only real ones.
        for name, needs in wanted:
            for need in needs:
                if need not in nodes:
                    r.error(nodes[name], f"steps.{name}.needs", f"no step named {need!r}")
                elif need == name:
                    r.error(nodes[name], f"steps.{name}.needs", "a step cannot need itself")
        cycle = _find_cycle(steps)
        if cycle:
            r.error(
                nodes[cycle[0]],
                f"steps.{cycle[0]}.needs",
                "steps need each other in a cycle: " + " -> ".join(cycle),
            )
        return steps

    def _step(
        self, node: yaml.Node, i: int, previous: str | None
    ) -> tuple[str | None, list[str], Step | None]:
        """``(name, needs, step)``: the name and needs as far as they can be read (to
        check every step's needs), the step if it has no problem."""
        r = self.r
        # Every problem of a step is said under one label: ``steps.NAME`` once its name is
        # known (its own, or its default), ``steps[i]`` for one without a name to go by.
        label = f"steps[{i}]"
        known = _step_name(node, i)
        e = r.mapping(node, f"steps.{known}" if known else label, _STEP)
        if e is None:
            return None, [], None
        kinds = [k for k in STEP_KINDS if k in e]
        name: str | None = f"{kinds[0] if len(kinds) == 1 else 'step'}-{i + 1}"
        if "name" in e:
            text = r.string(e["name"][1], f"{label}.name")
            name = text and check_field(
                r, e["name"][1], f"{label}.name", check_name, text, "step name"
            )
            if not name:
                return None, [], None
        if known:
            label = f"steps.{known}"
        needs: list[str] = [previous] if previous else []
        if "needs" in e:
            needs = r.str_list(e["needs"][1], f"steps.{name}.needs") or []
        if len(kinds) != 1:
            r.error(
                node,
                label,
                "a step does exactly one of: "
                + ", ".join(STEP_KINDS)
                + (f" (found {', '.join(kinds)})" if kinds else ""),
            )
            return name, needs, None
        kind = kinds[0]
        assert name is not None
        label = f"steps.{name}"
        for key in ("shell", "env", "cwd", *ROLLOUT_KEYS):
            if key in e and kind not in ("run", "script"):
                r.error(e[key][0], f"{label}.{key}", f"only run and script steps take {key}")
        rollout = self._rollout(e, label)
        to = "all"
        if "to" in e:
            to = r.string(e["to"][1], f"{label}.to") or "all"
        targets = self._targets(to, e["to"][1] if "to" in e else node, f"{label}.to")
        retries = r.integer(e["retries"][1], f"{label}.retries") if "retries" in e else 0
        delay = (
            r.duration(e["retry_delay"][1], f"{label}.retry_delay")
            if "retry_delay" in e
            else DEFAULT_RETRY_DELAY
        )
        timeout = (
            r.duration(e["timeout"][1], f"{label}.timeout") if "timeout" in e else self.step_timeout
        )
        action = getattr(self, f"_{kind}")(e, e[kind][1], f"{label}.{kind}")
        if action is not None:
            self._check_templates(action, e[kind][1], f"{label}.{kind}", targets)
        if isinstance(action, RunAction) and timeout is not None and timeout > MAX_TIMEOUT_SECONDS:
            # The server refuses a longer job: say so now, not once the machines are made.
            r.error(
                e["timeout"][1] if "timeout" in e else node,
                f"{label}.timeout",
                f"{timeout:g}s is longer than a job may run (7d)"
                + ("" if "timeout" in e else ": it is timeouts.step"),
            )
            timeout = None
        if action is None or targets is None or retries is None or delay is None or timeout is None:
            return name, needs, None
        return (
            name,
            needs,
            Step(
                name=name,
                kind=kind,
                action=action,
                to=to,
                targets=tuple(targets),
                needs=tuple(dict.fromkeys(needs)),
                retries=retries,
                retry_delay=delay,
                timeout=timeout,
                where=r.where(node),
                rollout=rollout,
            ),
        )

    def _rollout(self, e: dict[str, Any], label: str) -> Rollout | None:
        """A step's rate control (protocol/rollout.py checks it as the server does);
        durations may be written ``30s``, ``2m``."""
        r = self.r
        rules: dict[str, Any] = {}
        bad = False
        for key in ROLLOUT_KEYS:  # each checked alone: every problem is said at once
            if key not in e:
                continue
            node = e[key][1]
            if key in ("batch_wait", "deliver_within"):
                rules[key] = r.duration(node, f"{label}.{key}")
                if rules[key] is None:
                    bad = True
                    continue
            else:
                rules[key] = r.value(node) if isinstance(node, yaml.ScalarNode) else [None]
            try:
                Rollout.from_body({key: rules[key]})
            except InvalidInput as exc:
                r.error(node, f"{label}.{key}", exc.message)
                bad = True
        if bad:
            return None
        try:
            return Rollout.from_body(rules)
        except InvalidInput as exc:
            where = e[exc.details.get("field", "")][1] if exc.details.get("field") in e else None
            r.error(where, f"{label}.{exc.details.get('field', 'rollout')}", exc.message)
            return None

    def _targets(self, to: str, node: yaml.Node, path: str) -> list[str] | None:
        names = list(self.machines)
        if not names:
            return []  # machines: is wrong; that problem is reported already
        if to == "all":
            return names
        if "=" in to:  # KEY=VALUE[,KEY=VALUE]: as a job's --to reads it
            try:
                target = parse_target(to)
            except InvalidInput as exc:
                self.r.error(node, path, exc.message)
                return None
            hit = [m.name for m in self.machines.values() if target.matches(m.name, m.labels)]
            if not hit:
                pairs = "labels" if len(target.selector) > 1 else "label"
                self.r.error(node, path, f"no machine has the {pairs} {to}")
                return None
            return hit
        chosen = [t.strip() for t in to.split(",") if t.strip()]
        if check_field(self.r, node, path, check_all_alone, to) is None:  # as crc run --to
            return None
        unknown = [t for t in chosen if t not in self.machines]
        if unknown or not chosen:
            self.r.error(
                node,
                path,
                f"no machine {', '.join(unknown) or repr(to)} in "
                f"machines: (use a name, a,b, KEY=VALUE or all)",
            )
            return None
        return list(dict.fromkeys(chosen))

    def _run(self, e: dict[str, Any], node: yaml.Node, path: str) -> RunAction | None:
        r = self.r
        command: str | None = None
        argv: tuple[str, ...] | None = None
        if isinstance(node, yaml.SequenceNode):
            items = r.str_list(node, path, as_written=True)
            if items is not None and not items:
                r.error(node, path, "an argv needs at least the program")
            argv = tuple(items) if items else None
            if argv is None:
                return None
        else:
            command = r.string(node, path, as_written=True)
            if command is None:
                return None
        return self._run_options(e, path.rsplit(".", 1)[0], command, argv, None)

    def _run_options(
        self,
        e: dict[str, Any],
        label: str,
        command: str | None,
        argv: tuple[str, ...] | None,
        shell: str | None,
    ) -> RunAction | None:
        r = self.r
        if "shell" in e:
            shell = r.choice(e["shell"][1], f"{label}.shell", _SHELLS)
            if argv is not None:
                r.error(
                    e["shell"][0],
                    f"{label}.shell",
                    "an argv runs without a shell: write the command as one string",
                )
        env = r.str_map(e["env"][1], f"{label}.env", as_written=True) if "env" in e else {}
        cwd = r.string(e["cwd"][1], f"{label}.cwd", as_written=True) if "cwd" in e else None
        if env is None:
            return None
        # What a job.run carries, checked as the agent will check it (templates are
        # rendered later, but a NUL or a variable name with "=" is wrong before that).
        given = {"argv": list(argv) if argv else None, "command": command, "env": env, "cwd": cwd}
        refused = False
        for f, spec in wire_fields(JobRun):
            if given.get(f.name) is None:
                continue
            try:
                spec.check(given[f.name], f.name)
            except CrcError as exc:
                # Named as the file says it: a command or an argv is its `run:` or `script:`.
                key = f.name if f.name in e else next((k for k in ("run", "script") if k in e), "")
                where = e.get(key)
                r.error(where[1] if where else None, f"{label}.{key or f.name}", exc.message)
                refused = True
        if refused:
            return None
        return RunAction(command=command, argv=argv, shell=shell, env=env, cwd=cwd)

    def _script(self, e: dict[str, Any], node: yaml.Node, path: str) -> RunAction | None:
        r = self.r
        rel = r.string(node, path, as_written=True)
        if rel is None:
            return None
        file = self.base / rel
        try:
            text = read_bounded(file, MAX_COMMAND_BYTES, "a script (a job's command)")
        except InvalidInput as exc:
            r.error(node, path, exc.message)
            return None
        return self._run_options(
            e, path.rsplit(".", 1)[0], text, None, _SCRIPT_SHELLS.get(file.suffix.lower())
        )

    def _push(self, e: dict[str, Any], node: yaml.Node, path: str) -> PushAction | None:
        r = self.r
        p = r.mapping(node, path, ("src", "content", "dest", "mode", "owner"))
        if p is None:
            return None
        if ("src" in p) == ("content" in p):
            r.error(node, path, "give exactly one of src (a local file) or content (text)")
            return None
        if "dest" not in p:
            r.error(node, f"{path}.dest", "required field is missing")
            return None
        dest = r.string(p["dest"][1], f"{path}.dest", as_written=True)
        if dest and "{{" not in dest:  # as the machine will check it
            check_field(r, p["dest"][1], f"{path}.dest", check_remote_path, dest)
        src = None
        if "src" in p:
            rel = r.string(p["src"][1], f"{path}.src", as_written=True)
            if rel is not None:
                src = self.base / rel
                why = regular_file_problem(src)
                if why is not None:
                    if why.startswith(f"{src} is not"):
                        why += ": push sends one file"
                    r.error(p["src"][1], f"{path}.src", why)
        content = (
            r.string(p["content"][1], f"{path}.content", empty=True, as_written=True)
            if "content" in p
            else None
        )
        mode = None
        if "mode" in p:
            raw = r.value(p["mode"][1])
            if not isinstance(raw, str) or not _MODE.match(raw):
                r.error(
                    p["mode"][1],
                    f"{path}.mode",
                    'expected an octal mode in quotes, e.g. mode: "0644"',
                )
            else:
                mode = raw
        owner = r.string(p["owner"][1], f"{path}.owner") if "owner" in p else None
        if dest is None:
            return None
        return PushAction(dest=dest, src=src, content=content, mode=mode, owner=owner)

    def _hosts(self, e: dict[str, Any], node: yaml.Node, path: str) -> HostsAction | None:
        r = self.r
        if isinstance(node, yaml.ScalarNode) and r.value(node) in (None, True):
            return HostsAction("auto")
        p = r.mapping(node, path, ("ip",))
        if p is None:
            return None
        ip = (
            r.choice(p["ip"][1], f"{path}.ip", ("auto", "private", "public"))
            if "ip" in p
            else "auto"
        )
        return HostsAction(ip) if ip else None

    def _wait(self, e: dict[str, Any], node: yaml.Node, path: str) -> WaitAction | None:
        r = self.r
        if isinstance(node, yaml.ScalarNode):
            if r.value(node) == "ready":
                return WaitAction("ready")
            r.error(node, path, "expected ready, or a mapping: {message: TYPE} or {kv: KEY}")
            return None
        p = r.mapping(node, path, ("ready", "message", "kv"))
        if p is None:
            return None
        if len(p) != 1:
            r.error(node, path, "wait for exactly one of: ready, message, kv")
            return None
        ((kind, (_, vnode)),) = p.items()
        if kind == "ready":
            if r.value(vnode) is not True:
                r.error(vnode, f"{path}.ready", "expected true")
                return None
            return WaitAction("ready")
        text = r.string(vnode, f"{path}.{kind}", as_written=True)
        if text is None:
            return None
        if kind == "message":
            type_ = text if text.startswith("user.") else "user." + text
            if check_field(r, vnode, f"{path}.message", check_message_type, type_) is None:
                return None
            return WaitAction("message", type=type_)
        if "{{" not in text and check_field(r, vnode, f"{path}.kv", check_kv_key, text) is None:
            return None
        return WaitAction("kv", key=text)

    def _send(self, e: dict[str, Any], node: yaml.Node, path: str) -> SendAction | None:
        r = self.r
        p = r.mapping(node, path, ("type", "body"))
        if p is None:
            return None
        if "type" not in p:
            r.error(node, f"{path}.type", "required field is missing (user.NAME)")
            return None
        text = r.string(p["type"][1], f"{path}.type", as_written=True)
        if text is None:
            return None
        type_ = text if text.startswith("user.") else "user." + text
        if check_field(r, p["type"][1], f"{path}.type", check_message_type, type_) is None:
            return None
        body: Any = r.value(p["body"][1], f"{path}.body") if "body" in p else {}
        if not isinstance(body, dict):
            r.error(p["body"][1], f"{path}.body", "expected a mapping (a JSON object)")
            return None
        # As the server will: finite numbers (.nan, .inf are YAML's), whole characters.
        try:
            check_json(body, what="message body")
        except CrcError as exc:
            r.error(p["body"][1], f"{path}.body", exc.message)
            return None
        return SendAction(type=type_, body=body)

    def _reboot(self, e: dict[str, Any], node: yaml.Node, path: str) -> RebootAction | None:
        r = self.r
        value = r.value(node) if isinstance(node, yaml.ScalarNode) else None
        if isinstance(node, yaml.MappingNode) and not node.value:
            return RebootAction()
        if value not in (None, True):
            r.error(node, path, "expected true (or nothing): `reboot: true`")
            return None
        return RebootAction()

    def _check_templates(
        self, action: Action, node: yaml.Node, path: str, targets: list[str] | None
    ) -> None:
        """Report the problems of the step's templates. ``targets`` None: its ``to:`` is
        wrong (reported already), so any machine may be meant: its templates are checked
        all the same, quoted for the shell of every machine when they share one."""
        texts: list[tuple[str, str | None]] = []  # (text, shell dialect if shell code)
        if isinstance(action, RunAction):
            known = targets is not None
            chosen = list(self.machines) if targets is None else targets
            oses = [self.machines[t].os for t in chosen if t in self.machines]
            if action.command is not None:
                dialect = shellquote.dialect_for(action.shell, oses)
                mixed = len({o == "windows" for o in oses}) > 1
                if dialect is None and mixed and known and "{{" in action.command:
                    self.r.error(
                        node,
                        path,
                        "its machines run Linux and Windows: name the shell (shell: sh, "
                        "bash, cmd or powershell) so that template values can be quoted for it",
                    )
                # Without a dialect, its tags are still checked (names, variables).
                texts.append((action.command, dialect))
            argv = action.argv or ()
            script = shellquote.argv_script(argv)
            texts += [
                (arg, script[1] if script and i == script[0] else None)
                for i, arg in enumerate(argv)
            ]
            texts += [(action.cwd or "", None), *((v, None) for v in action.env.values())]
        elif isinstance(action, PushAction):
            texts += [(action.dest, None), (action.content or "", None)]
        elif isinstance(action, SendAction):
            texts += [(t, None) for t in _strings(action.body)]
        elif isinstance(action, WaitAction):
            texts += [(action.key or "", None)]
        for text, dialect in texts:  # the machines by name, not a copy per text (thousands)
            for problem in templates.check(text, self.variables, self.machines, dialect):
                self.r.error(node, path, problem)


def _step_name(node: yaml.Node, i: int) -> str | None:
    """The name a step goes by, read before its fields are: its ``name:`` if that is a
    valid name, else its default ``KIND-POSITION`` if it has no ``name:`` and exactly one
    kind; None otherwise (the problem is reported where the name is read)."""
    if not isinstance(node, yaml.MappingNode):
        return None
    keys: dict[str, yaml.Node] = {}
    for knode, vnode in node.value:
        if isinstance(knode, yaml.ScalarNode) and knode.tag == _STR_TAG:
            keys.setdefault(knode.value, vnode)
    if "name" in keys:
        vnode = keys["name"]
        if not (isinstance(vnode, yaml.ScalarNode) and vnode.tag == _STR_TAG):
            return None
        try:
            return check_name(vnode.value, "step name")
        except CrcError:
            return None
    kinds = [k for k in STEP_KINDS if k in keys]
    return f"{kinds[0]}-{i + 1}" if len(kinds) == 1 else None


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _find_cycle(steps: list[Step]) -> list[str] | None:
    """A cycle of ``needs`` as a list of names (first repeated at the end), or None."""
    needs = {s.name: [n for n in s.needs if n != s.name] for s in steps}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for n in needs.get(name, []):
            if state.get(n) == 1:
                return [*path[path.index(n) :], n]
            if n in needs and n not in state:
                found = visit(n)
                if found:
                    return found
        path.pop()
        state[name] = 2
        return None

    for s in steps:
        if s.name not in state:
            found = visit(s.name)
            if found:
                return found
    return None
