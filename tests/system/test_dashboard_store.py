"""The dashboard's operations on both Store backends (a SQLite file and PostgreSQL):
browser sessions, scenario runs as `crc up` reports them, and when machines changed
state."""

from __future__ import annotations

from typing import Any

import pytest
from store_fixtures import anyio_backend_fixture, db_url_fixture, store_fixture  # noqa: F401
from test_store import new_user, ready_machines

from cloudremotecontrol.errors import Conflict, InvalidInput, NotFound, Unauthorized
from cloudremotecontrol.server.dashboard import sessions, views
from cloudremotecontrol.server.ops import delivery, events, groups, runs, users
from cloudremotecontrol.server.store.base import Store

pytestmark = pytest.mark.anyio

STEPS = [
    {"name": "a", "kind": "run", "to": "all", "needs": [], "retries": 0},
    {"name": "b", "kind": "run", "to": "m1", "needs": ["a"], "retries": 2},
    {"name": "c", "kind": "wait", "to": "m2", "needs": [], "retries": 0},
    {"name": "d", "kind": "hosts", "to": "all", "needs": ["b", "c"], "retries": 0},
]
RUN = "a" * 32


async def test_a_session_stands_for_its_user_until_logout_expiry_or_token_revocation(
    store: Store,
) -> None:
    alice = await new_user(store)
    opened = await store.write(sessions.open_session, alice["token"], "127.0.0.1")
    cookie = opened["cookie"]
    assert cookie.startswith("crcs_") and alice["token"] not in cookie
    who = await store.read(sessions.authenticate_session, cookie)
    assert (who["user_id"], who["user"]) == (alice["user_id"], "alice")
    other = await store.write(sessions.open_session, alice["token"], None)
    assert sessions.csrf_for(cookie) != sessions.csrf_for(other["cookie"])
    for bad in ("", "crcs_x", alice["token"], cookie[:-3] + "zzz"):
        with pytest.raises(Unauthorized):
            await store.read(sessions.authenticate_session, bad)
    with pytest.raises(Unauthorized, match="unknown or revoked master token"):
        await store.write(sessions.open_session, "crcm_0123456789abcdef_" + "x" * 32, None)

    assert await store.write(sessions.end_session, cookie) is True
    assert await store.write(sessions.end_session, cookie) is False
    with pytest.raises(Unauthorized, match="ended"):
        await store.read(sessions.authenticate_session, cookie)

    def age(tx: Any, session: str) -> None:
        sid = session.split("_")[1]
        tx.execute("UPDATE sessions SET expires = expires - ? WHERE id = ?", (86400, sid))

    await store.write(age, other["cookie"])
    with pytest.raises(Unauthorized, match="expired"):
        await store.read(sessions.authenticate_session, other["cookie"])
    third = await store.write(sessions.open_session, alice["token"], None)
    await store.write(users.revoke_token, "alice", "default")
    with pytest.raises(Unauthorized):
        await store.read(sessions.authenticate_session, third["cookie"])


async def test_a_run_reports_its_steps_in_order_and_refuses_stale_or_foreign_reports(
    store: Store,
) -> None:
    alice = await new_user(store)
    await ready_machines(store, alice, "lab", ["m1", "m2"])
    view = await store.write(runs.start_run, alice, "lab", RUN, "lab", STEPS)
    assert view["waves"] == [["a", "c"], ["b"], ["d"]]
    assert {s["state"] for s in view["steps"]} == {"pending"}

    async def report(**r: Any) -> None:
        await store.write(runs.report_run, alice, "lab", {"run_id": RUN, **r})

    await report(type="phase", phase="steps")
    await report(type="step", step="a", state="running", attempt=1)
    await report(type="step", step="b", state="running", attempt=1)
    await report(type="step", step="b", state="retrying", attempt=1, message="exit 3")
    await report(type="step", step="b", state="succeeded", attempt=2, seconds=1.5)
    with pytest.raises(NotFound, match="no step 'zz'"):
        await report(type="step", step="zz", state="running", attempt=1)
    with pytest.raises(Conflict, match="not the current run"):
        await store.write(
            runs.report_run, alice, "lab", {"type": "phase", "run_id": "b" * 32, "phase": "done"}
        )
    bob = await new_user(store, "bob")
    with pytest.raises(NotFound):
        await store.write(
            runs.report_run, bob, "lab", {"type": "phase", "run_id": RUN, "phase": "done"}
        )
    with pytest.raises(NotFound):
        await store.read(runs.run_view, bob["user_id"], "lab")
    await report(type="end", ok=False, message="d failed")
    with pytest.raises(Conflict, match="has ended"):
        await report(type="phase", phase="steps")

    view = await store.read(runs.run_view, alice["user_id"], "lab")
    assert (view["state"], view["phase"], view["message"]) == ("failed", "done", "d failed")
    b = next(s for s in view["steps"] if s["name"] == "b")
    assert (b["state"], b["attempt"], b["seconds"], b["message"]) == ("succeeded", 2, 1.5, None)
    assert b["started"] is not None and b["finished"] >= b["started"]
    gid = (await store.read(events.group_cursor, alice["user_id"], "lab"))["group_id"]
    kinds = [e["type"] for e in await store.read(events.events_after, gid, 0)]
    assert kinds[-6:] == ["run.phase", "run.step", "run.step", "run.step", "run.step", "run.ended"]
    # A new `crc up` replaces the run: every step pending again.
    view = await store.write(runs.start_run, alice, "lab", "c" * 32, "lab", STEPS[:2])
    assert [s["state"] for s in view["steps"]] == ["pending", "pending"]


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([{**STEPS[1], "needs": ["a"]}, STEPS[0]], "not a step listed before it"),
        ([STEPS[0], {**STEPS[1], "needs": ["b"]}], "not a step listed before it"),
        ([STEPS[0], STEPS[0]], "another step is named 'a'"),
        ([{**STEPS[0], "name": "Bad Name"}], "invalid step name"),
    ],
)
async def test_a_run_graph_with_a_cycle_a_forward_need_or_a_bad_name_is_refused(
    store: Store,
    steps: list[dict[str, Any]],
    message: str,
) -> None:
    alice = await new_user(store)
    await store.write(groups.create_group, alice["user_id"], "lab", [{"name": "m1"}])
    with pytest.raises(InvalidInput, match=message):
        await store.write(runs.start_run, alice, "lab", RUN, "lab", steps)
    with pytest.raises(NotFound):
        await store.read(runs.run_view, alice["user_id"], "lab")


async def test_the_machines_table_knows_since_when_each_machine_is_in_its_state(
    store: Store,
) -> None:
    alice = await new_user(store)
    machines = await ready_machines(store, alice, "lab", ["m1", "m2"])
    await store.write(groups.create_group, alice["user_id"], "idle", [{"name": "p"}])
    page = await store.read(views.group_page, alice["user_id"], "lab")
    first = {m["name"]: m["since"] for m in page["machines"]}
    await store.write(delivery.machine_disconnected, machines["m2"]["id"], "r1")
    page = await store.read(views.group_page, alice["user_id"], "lab")
    rows = {m["name"]: m for m in page["machines"]}
    assert rows["m1"]["since"] == first["m1"] and rows["m2"]["since"] > first["m2"]
    assert (rows["m2"]["state"], page["counts"]) == ("offline", {"ready": 1, "offline": 1})
    idle = await store.read(views.group_page, alice["user_id"], "idle")
    assert idle["machines"][0]["since"] == idle["created"]  # pending since the group
    if store.dialect == "sqlite":  # found through the partial index, not a scan

        def plan(tx: Any) -> str:
            rows = tx.all(
                "EXPLAIN QUERY PLAN SELECT machine, MAX(created) AS since FROM events "
                "WHERE group_id = ? AND type = 'machine.state' GROUP BY machine",
                ("x",),
            )
            return " ".join(str(r["detail"]) for r in rows)

        assert "events_machine_state" in await store.read(plan)


async def test_a_jobs_events_are_read_back_from_the_latest_a_batch_at_a_time(
    store: Store,
) -> None:
    """What a job's page reads (``events.job_rows_before``): the job's events only,
    newest first, each batch ending where the next one starts."""
    from cloudremotecontrol.server.ops import jobs
    from cloudremotecontrol.server.ops.common import add_events

    alice = await new_user(store)
    await store.write(groups.create_group, alice["user_id"], "lab", [{"name": "m"}])
    job = await store.write(jobs.create_job, alice, "lab", "all", {"argv": ["yes"]})
    other = await store.write(jobs.create_job, alice, "lab", "all", {"argv": ["no"]})
    gid = (await store.read(events.group_cursor, alice["user_id"], "lab"))["group_id"]

    def printed(tx: Any) -> None:
        for i in range(7):
            for j in (job, other):
                data = {"job_id": j["job_id"], "stream": "stdout", "data": f"{i}\n"}
                add_events(tx, gid, [("job.output", data)], machine="m", job_id=j["job_id"])

    await store.write(printed)
    texts: list[str] = []
    before = None
    while True:
        rows = await store.read(events.job_rows_before, gid, job["job_id"], before, 3)
        assert all(r["job_id"] == job["job_id"] for r in rows)
        ids = [int(r["id"]) for r in rows]
        assert ids == sorted(ids, reverse=True)
        texts += [events.event_view(r)["data"]["data"] for r in rows if r["type"] == "job.output"]
        if len(rows) < 3:
            break
        before = ids[-1]
    assert texts == [f"{i}\n" for i in reversed(range(7))]
