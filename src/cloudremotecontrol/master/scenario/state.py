"""What ``crc up`` keeps between runs.

On the server (the source of truth, shared by every shell of the user):
    the group's ``settings.crc_up`` — scenario name, provider and its settings, so that
    ``crc down --group G`` knows which provider to ask;
    the group's key/value entry ``crc.up/steps`` — the steps that succeeded, each with
    a digest of its definition, so a resumed ``crc up`` skips them unless they changed.
At the provider: the instances themselves, found by tag.
Locally (``$CRC_CONFIG_DIR/scenarios/<group>.json``, mode 0600): the enrollment keys of
machines not created yet. They are shown once by the server, and a ``crc up`` that is
interrupted between creating the group and creating a machine needs them to resume.
Once every machine is ready they are dropped from the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .model import Step

__all__ = ["STEPS_KEY", "LocalState", "step_digest"]

STEPS_KEY = "crc.up/steps"


def step_digest(step: Step) -> str:
    """Changes when the step's definition changes (not when it only moves in the file)."""
    text = repr((step.kind, step.action, step.to, step.needs, step.retries, step.timeout))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class LocalState:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {}
        try:
            self.data = dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            self.data = {}

    @classmethod
    def for_group(cls, group: str) -> LocalState:
        from ..profile import config_dir

        return cls(config_dir() / "scenarios" / f"{group}.json")

    @property
    def keys(self) -> dict[str, str]:
        return dict(self.data.get("keys") or {})

    def save(self, **changes: Any) -> None:
        self.data.update(changes)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(self.data, fh, indent=1)
        os.replace(tmp, self.path)

    def delete(self) -> None:
        self.data = {}
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
