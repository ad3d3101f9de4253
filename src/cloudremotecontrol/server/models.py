"""Request bodies of the HTTP API (pydantic: validation + the OpenAPI document)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MachineIn(_Strict):
    name: str = Field(max_length=63)
    labels: dict[str, str] = Field(default_factory=dict)


class GroupCreate(_Strict):
    name: str = Field(max_length=63)
    machines: list[MachineIn] = Field(max_length=1000)
    key_ttl: float | None = Field(default=None, description="seconds an unused key stays valid")
    ttl: float | None = Field(default=None, description="seconds until the group expires")
    settings: dict[str, object] = Field(default_factory=dict)


class JobCreate(_Strict):
    to: str = Field(max_length=4096, description="machine, a,b, KEY=VALUE or all")
    argv: list[str] | None = None
    command: str | None = None
    shell: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    timeout: float | None = None


class Enroll(_Strict):
    key: str = Field(max_length=200)


class MessageSend(_Strict):
    to: str = Field(max_length=4096)
    type: str = Field(max_length=80, description="user.NAME")
    body: dict[str, object] = Field(default_factory=dict)


class HostsSync(_Strict):
    to: str = Field(default="all", max_length=4096)
    ip: str = Field(default="auto", description="auto, private or public")
