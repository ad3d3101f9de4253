"""A scenario run's step graph, reported by `crc up` (which runs on the master's
computer) so that the dashboard and event followers can watch it: server/ops/runs.py."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from . import auth
from .models import RunReport, RunStart
from .ops import runs as run_ops
from .store.base import Store

__all__ = ["router"]

router = APIRouter(prefix="/v1")
Master = Annotated[dict[str, Any], Depends(auth.master)]


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


@router.put("/groups/{group}/run", tags=["scenario"])
async def start_run(group: str, body: RunStart, user: Master, request: Request) -> dict[str, Any]:
    """Start (or replace) the group's scenario run: its steps, all ``pending``."""
    return await _store(request).write(
        run_ops.start_run,
        user,
        group,
        body.run_id,
        body.scenario,
        [s.model_dump() for s in body.steps],
    )


@router.post("/groups/{group}/run/report", tags=["scenario"])
async def report_run(group: str, body: RunReport, user: Master, request: Request) -> dict[str, Any]:
    """One change of the current run: a phase, a step's state, or its end."""
    await _store(request).write(run_ops.report_run, user, group, body.model_dump())
    return {"group": group, "run_id": body.run_id, "accepted": True}


@router.get("/groups/{group}/run", tags=["scenario"])
async def show_run(group: str, user: Master, request: Request) -> dict[str, Any]:
    """The group's current run: every step with its state, attempts and timings, and the
    steps in waves (a wave needs only earlier waves)."""
    return await _store(request).read(run_ops.run_view, user["user_id"], group)
