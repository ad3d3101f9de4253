"""carry_both_ways: a carried connection ends when both directions are done, or at once
when one of them ends the whole connection or fails."""

from __future__ import annotations

import asyncio

from cloudremotecontrol.relay import carry_both_ways


def _run(*directions: object) -> list[str]:
    events: list[str] = []

    async def direction(name: str, delay: float, outcome: object) -> bool:
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            events.append(f"{name} cancelled")
            raise
        events.append(f"{name} ended")
        if isinstance(outcome, Exception):
            raise outcome
        return bool(outcome)

    async def main() -> None:
        await carry_both_ways(*(direction(*d) for d in directions))  # type: ignore[arg-type]

    asyncio.run(main())
    return events


def test_both_half_closed_ends_after_the_second():
    assert _run(("up", 0.01, True), ("down", 0.05, True)) == ["up ended", "down ended"]


def test_a_half_close_then_the_other_side_closing_ends_it():
    assert _run(("up", 0.01, True), ("down", 0.05, False)) == ["up ended", "down ended"]


def test_a_full_close_ends_the_other_direction_at_once():
    assert _run(("up", 0.01, False), ("down", 5, True)) == ["up ended", "down cancelled"]


def test_a_failure_ends_the_other_direction_at_once():
    events = _run(("up", 0.01, ConnectionResetError()), ("down", 5, True))
    assert events == ["up ended", "down cancelled"]
    events = _run(("up", 0.01, RuntimeError("bug")), ("down", 5, True))
    assert events == ["up ended", "down cancelled"]
