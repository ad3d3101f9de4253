"""Request bodies of the HTTP API (pydantic: validation + the OpenAPI document)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..protocol.jsoncheck import check_json


class StrictBody(BaseModel):
    """A JSON request body: unknown fields refused, and every field's value bounded in
    nesting before anything else looks at it (``protocol/jsoncheck.py``): a value
    nested too deep is a clear 400, never a 500 at a later read. Types are strict: a
    JSON ``true`` or ``"60"`` is not a number (``"ttl": true`` is not a TTL of 1 s),
    nor ``5`` a string."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, value in data.items():
                check_json(value, what=str(key)[:64], field=str(key)[:64])
        return data


class MachineIn(StrictBody):
    name: str = Field(max_length=63)
    labels: dict[str, str] = Field(default_factory=dict)


class GroupCreate(StrictBody):
    name: str = Field(max_length=63)
    machines: list[MachineIn] = Field(max_length=1000)
    key_ttl: float | None = Field(default=None, description="seconds an unused key stays valid")
    ttl: float | None = Field(default=None, description="seconds until the group expires")
    settings: dict[str, object] = Field(default_factory=dict)


class JobCreate(StrictBody):
    to: str = Field(max_length=4096, description="machine, a,b, KEY=VALUE or all")
    argv: list[str] | None = None
    command: str | None = None
    shell: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    timeout: float | None = None
    # Rate control, enforced by the server (protocol/rollout.py checks the values).
    max_concurrency: int | str | None = Field(
        default=None, description="at most N (or P% of the targets) running at once"
    )
    max_errors: int | str | None = Field(
        default=None,
        description="once N (or P%) targets failed, start no other (they end skipped)",
    )
    batch_wait: float | None = Field(
        default=None, description="seconds a finished target keeps its slot"
    )
    canary: int | None = Field(
        default=None, description="run on the first N targets; the rest only if all succeed"
    )
    deliver_within: float | None = Field(
        default=None, description="seconds; targets not reached by then end expired"
    )


class Enroll(StrictBody):
    key: str = Field(max_length=200)
    nonce: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-]{32,64}$",
        description="The agent's random retry nonce, kept before it first presents the "
        "key: the same key with the same nonce gets the same credential again while the "
        "machine has not connected yet (an enroll answer lost to a crash or the network).",
    )


class MessageSend(StrictBody):
    to: str = Field(max_length=4096)
    type: str = Field(max_length=80, description="user.NAME")
    body: dict[str, object] = Field(default_factory=dict)


class HostsSync(StrictBody):
    to: str = Field(default="all", max_length=4096)
    ip: str = Field(default="auto", description="auto, private or public")


# -- scenario runs (`crc up` reports its step graph: server/ops/runs.py) ---------------
RUN_ID = r"^[0-9a-f]{32}$"


class RunStepIn(StrictBody):
    name: str = Field(max_length=63)
    kind: str = Field(max_length=16, pattern=r"^[a-z]+$", description="run, push, wait, ...")
    to: str = Field(max_length=4096, description="the step's target, as in the scenario")
    needs: list[str] = Field(default_factory=list, max_length=500)
    retries: int = Field(default=0, ge=0, le=100)


class RunStart(StrictBody):
    run_id: str = Field(pattern=RUN_ID, description="32 hex digits, chosen by the runner")
    scenario: str = Field(max_length=63)
    steps: list[RunStepIn] = Field(max_length=500)


class RunPhaseReport(StrictBody):
    type: Literal["phase"]
    run_id: str = Field(pattern=RUN_ID)
    phase: Literal["group", "machines", "ready", "steps", "done"]
    message: str | None = Field(default=None, max_length=1000)


class RunStepReport(StrictBody):
    type: Literal["step"]
    run_id: str = Field(pattern=RUN_ID)
    step: str = Field(max_length=63)
    state: Literal["running", "retrying", "succeeded", "failed", "skipped", "done"]
    attempt: int = Field(default=0, ge=0, le=101)
    seconds: float | None = Field(default=None, ge=0, le=10 * 365 * 86400)
    message: str | None = Field(default=None, max_length=1000)


class RunEndReport(StrictBody):
    type: Literal["end"]
    run_id: str = Field(pattern=RUN_ID)
    ok: bool
    message: str | None = Field(default=None, max_length=1000)


RunReport = Annotated[RunPhaseReport | RunStepReport | RunEndReport, Field(discriminator="type")]
