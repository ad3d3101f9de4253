"""Replicas on one PostgreSQL database: a group deleted through one replica stops an
idle agent connected to another within seconds (each replica looks for revoked machines
among its connected agents every ``REVOKED_SECONDS``, 2 s), not only at its next touch
of them (every 30 s)."""

from __future__ import annotations

import time

from test_replicas import lab

#: Well below the touch pass (30 s) that told such an agent before, and above the
#: check's interval (2 s) with room for a loaded machine.
BOUND = 10.0


def test_an_idle_agent_on_another_replica_stops_within_seconds_of_its_group_deleted(
    pg_url, tmp_path
):
    with lab(tmp_path, pg_url, 2) as (_, (_via_a, via_b), agent):
        # The agent is connected to the first replica and sends nothing (no job: a
        # message from it would be answered "revoked" at once); the group is deleted
        # through the second, which can tell only the agents connected to it.
        assert agent.proc is not None
        started = time.monotonic()
        via_b.delete_group("lab")
        while agent.proc.poll() is None and time.monotonic() - started < BOUND:
            time.sleep(0.05)
        took = time.monotonic() - started
        assert agent.proc.poll() == 0, f"the agent still runs {took:.1f} s after the delete"
        assert "stopping: group 'lab' deleted" in agent.log(), agent.log()
