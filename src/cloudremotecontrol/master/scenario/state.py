"""What ``crc up`` keeps between runs.

On the server (the source of truth, shared by every shell of the user):
    the group's ``settings.crc_up`` — scenario name, provider and its settings, so that
    ``crc down --group G`` knows which provider to ask;
    the group's key/value entry ``crc.up/steps`` — the steps that succeeded, each with
    a digest of its definition, so a resumed ``crc up`` skips them unless they changed;
    and per step that starts jobs, ``crc.up/job/<digest of its name>`` — the job it
    started last, so a ``crc up`` that resumes after a crash follows that job while it
    still runs rather than starting the step a second time beside it;
    the group's key/value entry ``crc.up/lease`` — which `crc up` is working on the
    group, so that one from another configuration directory or computer is refused
    meanwhile (``lease.py``).
At the provider: the instances themselves, found by tag.
Locally (``$CRC_CONFIG_DIR/scenarios/<group>.json``, mode 0600): the enrollment keys of
machines not created yet. They are shown once by the server, and a ``crc up`` that is
interrupted between creating the group and creating a machine needs them to resume.
Once every machine is ready they are dropped from the file. Beside them, which instance
is each machine (``instances``): where the provider lists two for a slot (twins.py), the
one found to be the machine, which a resumed ``crc up`` goes on with. And ``holder``:
this configuration directory's id in the group's lease (``lease.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ...errors import Conflict, CrcError
from . import runlock
from .model import PushAction, Step

__all__ = ["STEPS_KEY", "LocalState", "step_digest", "step_job_key"]

STEPS_KEY = "crc.up/steps"


def step_job_key(name: str) -> str:
    """The key/value entry naming the job step ``name`` started last (a step's name
    may hold characters a key may not)."""
    return "crc.up/job/" + hashlib.sha256(name.encode()).hexdigest()[:16]


_VAR_TAG = re.compile(r"\{\{\s*vars\.([A-Za-z0-9_-]+)")


def step_digest(step: Step, variables: Mapping[str, Any] | None = None) -> str:
    """Changes when the step's definition changes (not when it only moves in the file):
    its fields, the values of the variables its templates use, and the content of the
    local file a ``push: src:`` sends."""
    text = repr((step.kind, step.action, step.to, step.needs, step.retries, step.timeout))
    inputs: list[Any] = []
    used = sorted(set(_VAR_TAG.findall(text)))
    if used and variables is not None:
        inputs.append({name: variables.get(name) for name in used})
    if isinstance(step.action, PushAction) and step.action.src is not None:
        try:
            inputs.append(hashlib.sha256(step.action.src.read_bytes()).hexdigest())
        except OSError as exc:
            inputs.append(f"unreadable: {exc.strerror}")
    if inputs:  # steps without either keep the digest they always had
        text += json.dumps(inputs, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class LocalState:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {}
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if isinstance(data, dict):  # else damaged (``null``, a list): as if absent
            self.data = data

    @classmethod
    def for_group(cls, group: str) -> LocalState:
        from ..profile import config_dir

        return cls(config_dir() / "scenarios" / f"{group}.json")

    @property
    def keys(self) -> dict[str, str]:
        return self._names("keys")

    @property
    def instances(self) -> dict[str, str]:
        """Machine name -> the id of the instance that is the machine."""
        return self._names("instances")

    def _names(self, key: str) -> dict[str, str]:
        value = self.data.get(key)
        return (
            {k: v for k, v in value.items() if isinstance(v, str)}
            if isinstance(value, dict)
            else {}
        )

    def save(self, **changes: Any) -> None:
        self.data.update(changes)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(self.data, fh, indent=1)
        os.replace(tmp, self.path)

    @contextlib.contextmanager
    def locked(self, what: str, on_unusable: Callable[[str], None] | None = None) -> Iterator[None]:
        """Hold ``<group>.lock`` beside the file while ``what`` (``crc up``, ``crc down``)
        runs: a second one of the same scenario from this computer is refused
        (``Conflict``) instead of racing the first for the group and the machines. A lock
        that cannot be made (a read-only configuration directory, one owned by another
        user) is a one-line error, or with ``on_unusable`` is told to it and the block
        runs unlocked (``crc down``: the machines go whatever this computer's files)."""
        lock = self.path.with_suffix(".lock")
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(runlock.hold(lock, f"{what}, pid {os.getpid()}"))
            except runlock.Busy as busy:
                raise Conflict(
                    f"another `crc up` or `crc down` of {self.path.stem} is running on this "
                    f"computer ({busy.holder or 'pid unknown'}): wait for it, or stop it"
                ) from None
            except OSError as exc:
                why = f"cannot lock {lock}: {exc.strerror or exc}"
                if on_unusable is None:
                    raise CrcError(
                        f"{why} (`{what}` keeps the scenario's state there: CRC_CONFIG_DIR)",
                        code="local_state",
                    ) from None
                on_unusable(why)
            yield

    def delete(self) -> None:
        self.data = {}
        try:
            self.path.unlink()
        except (FileNotFoundError, NotADirectoryError):  # none to remove
            pass
