"""One test-suite for both Store backends: a SQLite file and a fresh PostgreSQL database.

The server's operations run directly through ``store.write`` / ``store.read``, checking
the promises the server builds on: credentials, single-use keys, exactly-once
application of agent messages, ordered outboxes and event streams, and safety under
concurrent writers and concurrent migrations.
"""

from __future__ import annotations

import asyncio
import json
import queue
import subprocess
import sys
import threading
from collections import Counter
from typing import Any

import pytest
from store_fixtures import anyio_backend_fixture, db_url_fixture, store_fixture  # noqa: F401 -- fixtures

from batches import in_one_batch
from cloudremotecontrol.errors import Conflict, InvalidInput, KeyRejected, NotFound, Unauthorized
from cloudremotecontrol.protocol.limits import MAX_OUTPUT_CHUNK_BYTES, MAX_OUTPUT_KEPT_BYTES
from cloudremotecontrol.protocol.messages import Envelope
from cloudremotecontrol.server.ops import (
    delivery,
    enrollment,
    events,
    groups,
    hostsync,
    jobs,
    users,
)
from cloudremotecontrol.server.ops.common import add_event, now
from cloudremotecontrol.server.store.base import ALL_GROUPS, Store, Tx, open_store
from cloudremotecontrol.server.store.schema import MIGRATIONS
from cloudremotecontrol.server.store.sqlite import SqliteStore

pytestmark = pytest.mark.anyio

LATEST = MIGRATIONS[-1][0]


@pytest.fixture
async def replicas(db_url: str) -> Any:
    """Two stores on one database, as two server processes would have: concurrency
    between them is real (within one store, one writer thread runs every write)."""
    stores = [open_store(db_url), open_store(db_url)]
    for s in stores:
        await s.start()
    yield stores
    for s in stores:
        await s.close()


# -- helpers ---------------------------------------------------------------------------
async def new_user(store: Store, name: str = "alice") -> dict[str, Any]:
    token = await store.write(users.create_user, name)
    return {**await store.read(users.authenticate_master, token), "token": token}


async def ready_machines(
    store: Store, user: dict[str, Any], group: str, names: list[str]
) -> dict[str, dict[str, Any]]:
    """Create ``group``, enroll every machine and connect it ready; name -> machine row."""
    out = await store.write(
        groups.create_group, user["user_id"], group, [{"name": n} for n in names]
    )
    machines = {}
    for m in out["machines"]:
        cred = await store.write(enrollment.enroll, m["key"], "127.0.0.1")
        row = await store.read(enrollment.authenticate_machine, cred["credential"])
        await store.write(delivery.machine_connected, row["id"], True, "127.0.0.1", "r1")
        machines[m["name"]] = row
    return machines


def agent_msg(group: str, machine: str, type: str, body: dict[str, Any]) -> dict[str, Any]:
    return Envelope.make(group, machine, "master", type, body).to_dict()


async def group_events(
    store: Store, user: dict[str, Any], group: str, since: int = 0
) -> list[dict[str, Any]]:
    gid = (await store.read(events.group_cursor, user["user_id"], group))["group_id"]
    return list(await store.read(events.events_after, gid, since))


def schema_versions(tx: Tx) -> list[int]:
    return [
        int(r["version"]) for r in tx.all("SELECT version FROM schema_version ORDER BY version")
    ]


# -- users and tokens ------------------------------------------------------------------
async def test_users_authenticate_with_live_tokens_only(store: Store) -> None:
    alice = await new_user(store)
    assert alice["user"] == "alice"
    with pytest.raises(Conflict):
        await store.write(users.create_user, "alice")
    ci = await store.write(users.add_token, "alice", "ci")
    assert (await store.read(users.authenticate_master, ci))["user_id"] == alice["user_id"]
    with pytest.raises(Conflict):
        await store.write(users.add_token, "alice", "ci")
    names = [t["name"] for t in await store.read(users.list_tokens, "alice")]
    assert sorted(names) == ["ci", "default"]

    await store.write(users.revoke_token, "alice", "ci")
    with pytest.raises(Unauthorized):
        await store.read(users.authenticate_master, ci)
    assert (await store.read(users.authenticate_master, alice["token"]))["user"] == "alice"
    tampered = alice["token"][:-4] + ("aaaa" if not alice["token"].endswith("aaaa") else "bbbb")
    for bad in (tampered, "crcm_nope", "", None):
        with pytest.raises(Unauthorized):
            await store.read(users.authenticate_master, bad)
    with pytest.raises(NotFound):
        await store.write(users.revoke_token, "alice", "ci")


# -- groups ----------------------------------------------------------------------------
async def test_group_create_show_delete_revokes_keys_and_is_per_user(store: Store) -> None:
    alice, bob = await new_user(store, "alice"), await new_user(store, "bob")
    out = await store.write(
        groups.create_group,
        alice["user_id"],
        "lab",
        [{"name": "db", "labels": {"role": "db"}}, {"name": "web"}],
        None,
        3600.0,
        {"note": "x"},
    )
    keys = {m["name"]: m["key"] for m in out["machines"]}
    assert sorted(keys) == ["db", "web"] and all(k.startswith("crck_") for k in keys.values())

    shown = await store.read(groups.show_group, alice["user_id"], "lab")
    assert [(m["name"], m["state"], m["labels"]) for m in shown["machines"]] == [
        ("db", "pending", {"role": "db"}),
        ("web", "pending", {}),
    ]
    assert shown["settings"] == {"note": "x"} and shown["expires"] > shown["created"]
    listed = await store.read(groups.list_groups, alice["user_id"])
    assert [(g["group"], g["machines"], g["ready"]) for g in listed] == [("lab", 2, 0)]
    with pytest.raises(Conflict):
        await store.write(groups.create_group, alice["user_id"], "lab", [{"name": "x"}])
    # Users never see each other's groups; bob may use the same name.
    assert await store.read(groups.list_groups, bob["user_id"]) == []
    with pytest.raises(NotFound):
        await store.read(groups.show_group, bob["user_id"], "lab")
    with pytest.raises(NotFound):
        await store.write(groups.delete_group, bob["user_id"], "lab")
    await store.write(groups.create_group, bob["user_id"], "lab", [{"name": "x"}])

    cred = await store.write(enrollment.enroll, keys["db"], "10.0.0.1")
    revoked, uninstall = await store.write(groups.delete_group, alice["user_id"], "lab")
    assert len(revoked) == 2 and uninstall is False
    with pytest.raises(KeyRejected, match="revoked"):
        await store.write(enrollment.enroll, keys["web"], None)
    with pytest.raises(Unauthorized):
        await store.read(enrollment.authenticate_machine, cred["credential"])
    with pytest.raises(NotFound):
        await store.read(groups.show_group, alice["user_id"], "lab")
    # The name is free again once the group is deleted.
    await store.write(groups.create_group, alice["user_id"], "lab", [{"name": "db"}])


async def test_deleting_a_group_closes_its_hosts_sync_window(store: Store) -> None:
    """A `--sync-hosts` group deleted within a hosts sync window (`crc up`, then `crc
    down` at once) leaves no window open: deleted groups stay in the table, and each
    would stay in the index the server's loop reads every second, on every replica."""
    alice = await new_user(store)
    await store.write(
        groups.create_group,
        alice["user_id"],
        "lab",
        [{"name": "a"}],
        None,
        None,
        {"sync_hosts": True},
    )
    gid = (await store.read(events.group_cursor, alice["user_id"], "lab"))["group_id"]

    def open_window(tx: Tx) -> None:
        tx.execute("UPDATE groups SET hosts_due = ? WHERE id = ?", (now() + 5, gid))

    await store.write(open_window)
    assert await store.read(hostsync.due_groups, now() + 60) == [gid]
    await store.write(groups.delete_group, alice["user_id"], "lab")

    def due(tx: Tx) -> Any:
        return tx.one("SELECT hosts_due FROM groups WHERE id = ?", (gid,))["hosts_due"]

    assert await store.read(due) is None


async def test_concurrent_creates_of_one_group_name_give_one_group(replicas: list[Store]) -> None:
    alice = await new_user(replicas[0])
    results = await asyncio.gather(
        *(
            replicas[i % 2].write(groups.create_group, alice["user_id"], "lab", [{"name": f"m{i}"}])
            for i in range(12)
        ),
        return_exceptions=True,
    )
    assert sum(isinstance(r, dict) for r in results) == 1
    assert all(isinstance(r, (dict, Conflict)) for r in results), results
    assert len(await replicas[1].read(groups.list_groups, alice["user_id"])) == 1


# -- enrollment ------------------------------------------------------------------------
async def test_enrollment_key_is_single_use_and_expires(store: Store) -> None:
    alice = await new_user(store)
    out = await store.write(
        groups.create_group, alice["user_id"], "lab", [{"name": "a"}, {"name": "b"}]
    )
    key_a, key_b = (m["key"] for m in out["machines"])
    cred = await store.write(enrollment.enroll, key_a, "10.0.0.5")
    assert (cred["machine"], cred["group"]) == ("a", "lab")
    me = await store.read(enrollment.authenticate_machine, cred["credential"])
    assert (me["name"], me["group_name"], me["state"]) == ("a", "lab", "enrolled")
    assert "cred_hash" not in me
    with pytest.raises(KeyRejected, match="already used"):
        await store.write(enrollment.enroll, key_a, "10.0.0.5")
    with pytest.raises(KeyRejected, match="malformed"):
        await store.write(enrollment.enroll, "not-a-key", None)

    def expire(tx: Tx, group_id: str) -> int:
        return tx.execute(
            "UPDATE machines SET key_expires = ? WHERE group_id = ? AND name = ?",
            (now() - 1, group_id, "b"),
        )

    assert await store.write(expire, me["group_id"]) == 1
    with pytest.raises(KeyRejected, match="expired"):
        await store.write(enrollment.enroll, key_b, None)


async def test_concurrent_enrollments_with_one_key_succeed_once(replicas: list[Store]) -> None:
    store = replicas[0]
    alice = await new_user(store)
    out = await store.write(groups.create_group, alice["user_id"], "lab", [{"name": "a"}])
    key = out["machines"][0]["key"]
    results = await asyncio.gather(
        *(replicas[i % 2].write(enrollment.enroll, key, "10.0.0.1") for i in range(16)),
        return_exceptions=True,
    )
    creds = [r for r in results if isinstance(r, dict)]
    assert len(creds) == 1
    assert all(isinstance(r, KeyRejected) for r in results if not isinstance(r, dict)), results
    me = await store.read(enrollment.authenticate_machine, creds[0]["credential"])
    assert me["name"] == "a"
    states = [e for e in await group_events(store, alice, "lab") if e["type"] == "machine.state"]
    assert [e["data"]["state"] for e in states] == ["enrolled"]


# -- jobs, outbox, agent messages ------------------------------------------------------
async def test_job_outbox_ack_and_agent_messages_are_applied_once(store: Store) -> None:
    alice = await new_user(store)
    m = (await ready_machines(store, alice, "lab", ["a"]))["a"]
    job = await store.write(jobs.create_job, alice, "lab", "a", {"argv": ["echo", "hi"]})
    assert job["targets"] == ["a"]
    [(machine_id, seq, frame)] = job["deliveries"]
    assert (machine_id, seq) == (m["id"], 1)
    assert json.loads(frame)["msg"]["body"]["job_id"] == job["job_id"]
    assert await store.read(delivery.outbox_after, m["id"], 0) == [(1, frame)]
    with pytest.raises(InvalidInput):
        await store.write(delivery.ack_outbox, m["id"], 2)  # never sent
    assert await store.write(delivery.ack_outbox, m["id"], 1) == 1
    assert await store.read(delivery.outbox_after, m["id"], 0) == []

    def send(seq: int, type: str, body: dict[str, Any]) -> Any:
        return store.write(
            delivery.apply_agent_message,
            m["id"],
            seq,
            agent_msg("lab", "a", type, {"job_id": job["job_id"], **body}),
        )

    assert (await send(1, "job.started", {}))["receipt"] == "new"
    assert (await send(1, "job.started", {}))["receipt"] == "duplicate"
    assert await send(3, "job.output", {"stream": "stdout", "data": "x"}) == {
        "receipt": "gap",
        "expected": 2,
    }
    assert (await send(2, "job.output", {"stream": "stdout", "data": "hi\n"}))["receipt"] == "new"
    assert (await send(2, "job.output", {"stream": "stdout", "data": "hi\n"}))["receipt"] == (
        "duplicate"
    )
    bad = await send(3, "job.run", {})  # machines may not command
    assert bad["receipt"] == "new" and bad["error"]["code"] == "unknown_type"
    assert (await send(4, "job.result", {"status": "succeeded", "exit_code": 0}))["receipt"] == (
        "new"
    )

    view = await store.read(jobs.job_view, alice["user_id"], job["job_id"])
    [target] = view["targets"]
    assert (target["machine"], target["status"], target["exit_code"]) == ("a", "succeeded", 0)
    assert target["output_bytes"] == 3
    job_events = await store.read(events.events_after, m["group_id"], 0, job["job_id"])
    assert [(e["type"], e["data"].get("status")) for e in job_events] == [
        ("job.created", None),
        ("job.status", "delivered"),
        ("job.status", "running"),
        ("job.output", None),
        ("job.status", "succeeded"),
    ]
    assert [e["data"]["data"] for e in job_events if e["type"] == "job.output"] == ["hi\n"]
    errors = [e for e in await group_events(store, alice, "lab") if e["type"] == "agent.error"]
    assert len(errors) == 1


async def test_a_result_carrying_the_ack_of_its_run_keeps_every_event_in_order(
    store: Store,
) -> None:
    """job.fold + msg.ack: one message acknowledges the job.run messages and reports a
    job's start, output and end. The master sees what separate messages would give it."""
    alice = await new_user(store)
    m = (await ready_machines(store, alice, "lab", ["a"]))["a"]
    a, b, c = [
        (await store.write(jobs.create_job, alice, "lab", "a", {"argv": ["true"]}))["job_id"]
        for _ in range(3)
    ]
    cursor = (await store.read(events.group_cursor, alice["user_id"], "lab"))["cursor"]

    def result(seq: int, ack: int, job_id: str, status: str) -> Any:
        body = {"job_id": job_id, "status": status, "exit_code": 0, "started": True}
        body["output"] = [["stdout", "one\n"], ["stderr", "two\n"]]
        raw = agent_msg("lab", "a", "job.result", body)
        return store.write(delivery.apply_agent_message, m["id"], seq, raw, ack)

    # The ack covers a's and b's job.run; the result is b's.
    assert (await result(1, 2, b, "succeeded"))["receipt"] == "new"
    # A result the server cannot use is given up; the ack riding on it still counts.
    bad = await result(2, 3, c, "bogus")
    assert bad["receipt"] == "new" and bad["error"]["code"] == "invalid_input"
    gid = (await store.read(events.group_cursor, alice["user_id"], "lab"))["group_id"]
    seen = [
        (e["type"], e["job_id"], e["data"].get("status") or e["data"].get("data"))
        for e in await store.read(events.events_after, gid, cursor)
    ]
    assert seen == [
        ("job.status", a, "delivered"),
        ("job.status", b, "delivered"),
        ("job.status", b, "running"),
        ("job.output", b, "one\n"),
        ("job.output", b, "two\n"),
        ("job.status", b, "succeeded"),
        ("job.status", c, "delivered"),
        ("agent.error", None, None),
    ]
    status = {
        j: (await store.read(jobs.job_view, alice["user_id"], j))["targets"][0]["status"]
        for j in (a, b, c)
    }
    assert status == {a: "delivered", b: "succeeded", c: "delivered"}
    assert await store.read(delivery.outbox_after, m["id"], 0) == []
    # Streamed as JSON text (the event streams): the same events.
    texts = await store.read(events.events_json_after, gid, 0)
    assert [json.loads(t) for _, _, t in texts] == await store.read(events.events_after, gid, 0)
    assert [(c, kind) for c, kind, _ in texts] == [
        (e["cursor"], e["type"]) for e in await store.read(events.events_after, gid, 0)
    ]


async def test_output_kept_per_target_is_cut_at_the_limit_with_a_marker(store: Store) -> None:
    alice = await new_user(store)
    m = (await ready_machines(store, alice, "lab", ["a"]))["a"]
    job_id = (await store.write(jobs.create_job, alice, "lab", "a", {"argv": ["true"]}))["job_id"]
    await store.write(delivery.ack_outbox, m["id"], 1)

    async def apply(seq: int, type: str, body: dict[str, Any]) -> None:
        raw = agent_msg("lab", "a", type, {"job_id": job_id, **body})
        out = await store.write(delivery.apply_agent_message, m["id"], seq, raw)
        assert out["receipt"] == "new" and "error" not in out

    chunk = "x" * MAX_OUTPUT_CHUNK_BYTES
    n = MAX_OUTPUT_KEPT_BYTES // MAX_OUTPUT_CHUNK_BYTES
    for seq in range(1, n + 1):  # one byte short of the limit after the last of these
        await apply(
            seq, "job.output", {"stream": "stdout", "data": chunk[: -1 if seq == n else None]}
        )
    output = [["stdout", "yz"], ["stdout", "dropped"]]
    await apply(n + 1, "job.result", {"status": "succeeded", "exit_code": 0, "output": output})
    [target] = (await store.read(jobs.job_view, alice["user_id"], job_id))["targets"]
    assert (target["output_bytes"], target["status"]) == (MAX_OUTPUT_KEPT_BYTES, "succeeded")
    evs = await store.read(events.events_after, m["group_id"], 0, job_id)
    outputs = [e["data"]["data"] for e in evs if e["type"] == "job.output"]
    assert len(outputs) == n + 1
    assert outputs[-1] == f"y\n[crc: output truncated at {MAX_OUTPUT_KEPT_BYTES} bytes]\n"
    statuses = [e["data"]["status"] for e in evs if e["type"] == "job.status"]
    assert statuses == ["delivered", "succeeded"]


async def test_a_jobs_event_stream_finds_its_group_for_its_owner_only(store: Store) -> None:
    alice, bob = await new_user(store), await new_user(store, "bob")
    await ready_machines(store, alice, "lab", ["a"])
    job_id = (await store.write(jobs.create_job, alice, "lab", "a", {"argv": ["true"]}))["job_id"]
    gid = (await store.read(events.group_cursor, alice["user_id"], "lab"))["group_id"]
    found = await store.read(jobs.job_group, alice["user_id"], job_id)
    assert found == {"group": "lab", "group_id": gid}
    with pytest.raises(NotFound):
        await store.read(jobs.job_group, bob["user_id"], job_id)
    await store.write(groups.delete_group, alice["user_id"], "lab")
    with pytest.raises(NotFound):
        await store.read(jobs.job_group, alice["user_id"], job_id)


async def test_cancel_before_delivery_rewrites_the_queued_run(store: Store) -> None:
    alice = await new_user(store)
    m = (await ready_machines(store, alice, "lab", ["a"]))["a"]
    job = await store.write(jobs.create_job, alice, "lab", "a", {"command": "sleep 9"})
    out = await store.write(jobs.cancel_job, alice, job["job_id"])
    # The job.run becomes a job.cancel; a second job.cancel follows it, for an agent
    # that already got the job.run but whose ack has not arrived yet.
    rows = await store.read(delivery.outbox_after, m["id"], 0)
    assert [(seq, json.loads(frame)["msg"]["type"]) for seq, frame in rows] == [
        (1, "job.cancel"),
        (2, "job.cancel"),
    ]
    assert [(mid, seq) for mid, seq, _ in out["deliveries"]] == [(m["id"], 2)]
    view = await store.read(jobs.job_view, alice["user_id"], job["job_id"])
    assert view["targets"][0]["status"] == "cancelled"


async def test_machines_found_gone_keep_the_last_contact_as_last_seen(store: Store) -> None:
    """A replica killed -9 (swept by another) or a server restarting finds machines it
    cannot have heard from: they go offline with ``last_seen`` still the last contact,
    not the time they were found gone; a machine that disconnects was heard then."""
    alice = await new_user(store)
    ms = await ready_machines(store, alice, "lab", ["a", "b", "c"])
    heard = now() - 600

    def age(tx: Tx) -> None:
        tx.execute("UPDATE machines SET last_seen = ?", (heard,))

    await store.write(age)
    assert await store.write(delivery.sweep_stale, 90) == 3
    for name in ("a", "b"):
        await store.write(delivery.machine_connected, ms[name]["id"], True, "127.0.0.1", "r1")
    await store.write(age)
    assert await store.write(delivery.mark_all_offline, "r1") == 2
    await store.write(delivery.machine_connected, ms["a"]["id"], True, "127.0.0.1", "r1")
    before_goodbye = now()
    await store.write(delivery.machine_disconnected, ms["a"]["id"], "r1")
    shown = {
        m["name"]: m
        for m in (await store.read(groups.show_group, alice["user_id"], "lab"))["machines"]
    }
    assert {n: m["state"] for n, m in shown.items()} == {
        "a": "offline",
        "b": "offline",
        "c": "offline",
    }
    assert shown["b"]["last_seen"] == shown["c"]["last_seen"] == pytest.approx(heard, abs=1)
    assert shown["a"]["last_seen"] >= before_goodbye - 1


async def test_one_batch_of_messages_connects_and_failures_reads_each_machine_current(
    store: Store,
) -> None:
    """Within one batch, every op reads its machine's row as the batch left it: after
    messages of the same machine, a failed message, an op rolled back after changing
    the row, a disconnect and reconnect, and a job's fan-out (PostgreSQL reads the rows
    of a batch ahead: store/pg_tx.py, ``RowCache``)."""
    alice = await new_user(store)
    ms = await ready_machines(store, alice, "lab", ["a", "b", "c", "d"])
    a, b, c, d = (ms[n]["id"] for n in "abcd")

    def progress(name: str, text: str) -> dict[str, Any]:
        return agent_msg("lab", name, "progress", {"text": text})

    def user(name: str, i: int) -> dict[str, Any]:
        return agent_msg("lab", name, "user.bench", {"i": i})

    def tamper(tx: Tx, machine_id: str) -> None:
        tx.execute("UPDATE machines SET in_done = ? WHERE id = ?", (50, machine_id))
        raise InvalidInput("rolled back")

    msg = delivery.apply_agent_message
    served = getattr(store, "rows_read_ahead", 0)
    results = await in_one_batch(
        store,
        [
            (msg, a, 1, user("a", 1)),
            (msg, a, 2, user("a", 2)),
            (msg, a, 2, user("a", 2)),  # duplicate
            (msg, a, 4, user("a", 4)),  # gap
            (msg, a, 3, progress("a", "a3")),
            (msg, a, 4, user("a", 4)),
            (tamper, d),  # raises: its changes are rolled back
            (msg, d, 1, progress("d", "d1")),
            (msg, b, 1, {"garbage": True}),  # given up: rolled back to its savepoint
            (msg, b, 2, user("b", 2)),
        ],
    )
    receipts = [r["receipt"] if isinstance(r, dict) else r for r in results]
    assert receipts[:6] == ["new", "new", "duplicate", "gap", "new", "new"]
    assert results[3]["expected"] == 3
    assert isinstance(receipts[6], InvalidInput)
    assert receipts[7:] == ["new", "new", "new"]
    assert results[8]["error"]["code"] == "invalid_input"
    results = await in_one_batch(
        store,
        [
            (delivery.machine_disconnected, c, "r1"),
            (msg, c, 1, user("c", 1)),
            (delivery.machine_connected, c, False, "10.0.0.3", "r2", 0, None),
            (msg, c, 2, progress("c", "c2")),
            (jobs.create_job, alice, "lab", "c", {"argv": ["true"]}),
            (msg, c, 3, user("c", 3)),
            (delivery.machine_disconnected, c, "r1"),  # another replica holds it now
            (msg, c, 4, user("c", 4)),
            (delivery.ack_outbox, c, 2),  # never sent
            (delivery.ack_outbox, c, 1),  # the job's run: delivered
        ],
    )
    assert results[0] is None and results[6] is None
    assert [results[i]["receipt"] for i in (1, 3, 5, 7)] == ["new"] * 4
    assert isinstance(results[8], InvalidInput) and results[9] == 1
    assert (results[2]["state"], results[2]["in_done"]) == ("enrolled", 1)
    assert results[4]["deliveries"][0][:2] == (c, 1)
    if store.dialect == "postgresql":  # reads answered by the rows read ahead
        assert getattr(store, "rows_read_ahead", 0) - served >= 7

    shown = {
        m["name"]: m
        for m in (await store.read(groups.show_group, alice["user_id"], "lab"))["machines"]
    }
    assert shown["a"]["progress"]["text"] == "a3"
    assert "progress" not in shown["b"] or shown["b"]["progress"] is None
    assert shown["d"]["progress"]["text"] == "d1"
    assert shown["c"]["progress"]["text"] == "c2"
    assert (shown["c"]["state"], shown["b"]["state"]) == ("enrolled", "ready")
    rows = {
        n: await store.read(
            lambda tx, i: tx.one(
                "SELECT in_done, out_next, connected_by FROM machines WHERE id = ?", (i,)
            ),
            ms[n]["id"],
        )
        for n in "abcd"
    }
    assert {n: r["in_done"] for n, r in rows.items()} == {"a": 4, "b": 2, "c": 4, "d": 1}
    assert (rows["c"]["out_next"], rows["c"]["connected_by"]) == (2, "r2")
    job_id = results[4]["job_id"]
    view = await store.read(jobs.job_view, alice["user_id"], job_id)
    assert [t["status"] for t in view["targets"]] == ["delivered"]
    seen = [
        (e["machine"], e["type"], e["data"].get("state") or e["data"].get("text"))
        for e in await group_events(store, alice, "lab")
        if e["type"] in ("progress", "message", "agent.error", "machine.state")
    ]
    assert seen[8:] == [  # after each machine's enrolled and ready
        ("a", "message", None),
        ("a", "message", None),
        ("a", "progress", "a3"),
        ("a", "message", None),
        ("d", "progress", "d1"),
        ("b", "agent.error", None),
        ("b", "message", None),
        ("c", "machine.state", "offline"),
        ("c", "message", None),
        ("c", "machine.state", "enrolled"),
        ("c", "progress", "c2"),
        ("c", "message", None),
        ("c", "message", None),
    ]


async def test_updates_by_id_in_one_batch_leave_what_one_after_the_other_would(
    store: Store,
) -> None:
    """Within one batch: the last update of a row wins, an op that raises leaves none of
    its updates, an op's own savepoints keep or drop what ran inside them, and an op
    reads its own updates (PostgreSQL keeps such updates until something waits for
    them, sends updates of one row by id together as one statement, and savepoints only
    when something ran inside them: store/pg_tx.py, ``Outgoing``)."""
    alice = await new_user(store)
    ms = await ready_machines(store, alice, "lab", list("abcdefg"))
    ids = {n: m["id"] for n, m in ms.items()}
    at = now()
    set_progress = "UPDATE machines SET progress = ?, last_seen = ? WHERE id = ?"
    set_in_done = "UPDATE machines SET in_done = ? WHERE id = ?"

    def put(name: str, text: str | None) -> Any:
        def op(tx: Tx) -> None:
            tx.send(set_progress, (text, at, ids[name]))

        return (op,)

    def raising(tx: Tx) -> None:
        tx.send(set_progress, ("c-gone", at, ids["c"]))
        tx.send(set_in_done, (70, ids["c"]))
        raise InvalidInput("rolled back")

    def own_savepoints(tx: Tx) -> None:
        tx.execute("SAVEPOINT first")
        tx.send(set_progress, ("d-gone", at, ids["d"]))
        tx.execute("ROLLBACK TO SAVEPOINT first")
        tx.execute("RELEASE SAVEPOINT first")
        tx.execute("SAVEPOINT outer_work")
        tx.send(set_progress, ("d1", at, ids["d"]))
        tx.execute("SAVEPOINT inner_work")
        tx.send(set_in_done, (7, ids["d"]))
        tx.execute("RELEASE SAVEPOINT outer_work")  # and inner_work with it

    def reads_then_raises(tx: Tx) -> None:
        tx.send(set_progress, ("e-gone", at, ids["e"]))
        row = tx.one("SELECT progress FROM machines WHERE id = ?", (ids["e"],))
        assert row is not None and row["progress"] == "e-gone"
        tx.send(set_in_done, (80, ids["e"]))
        raise InvalidInput("rolled back after a read")

    def reads_inside_its_savepoint(tx: Tx) -> str:
        tx.execute("SAVEPOINT inner_work")
        tx.send(set_progress, ("f-gone", at, ids["f"]))
        row = tx.one("SELECT progress FROM machines WHERE id = ?", (ids["f"],))
        tx.execute("ROLLBACK TO SAVEPOINT inner_work")
        tx.execute("RELEASE SAVEPOINT inner_work")
        tx.send(set_in_done, (9, ids["f"]))
        again = tx.one("SELECT progress FROM machines WHERE id = ?", (ids["f"],))
        assert again is not None and again["progress"] == "f0"
        return str(row["progress"] if row else None)

    results = await in_one_batch(
        store,
        [
            put("a", "a1"),
            put("b", "b1"),
            put("a", "a2"),
            put("f", "f0"),
            (raising,),
            put("g", "g1"),
            put("g", None),
            (own_savepoints,),
            put("a", "a3"),
            (reads_then_raises,),
            (reads_inside_its_savepoint,),
            put("b", "b2"),
        ],
    )
    assert [type(r).__name__ for r in results] == [
        *["NoneType"] * 4,
        "InvalidInput",
        *["NoneType"] * 4,
        "InvalidInput",
        "str",
        "NoneType",
    ]
    assert results[10] == "f-gone"
    rows = {
        n: await store.read(
            lambda tx, i: tx.one("SELECT progress, in_done FROM machines WHERE id = ?", (i,)),
            ids[n],
        )
        for n in ids
    }
    assert {n: (r["progress"], r["in_done"]) for n, r in rows.items()} == {
        "a": ("a3", 0),
        "b": ("b2", 0),
        "c": (None, 0),
        "d": ("d1", 7),
        "e": (None, 0),
        "f": ("f0", 9),
        "g": (None, 0),
    }


async def test_a_batch_of_messages_from_many_machines_is_applied_in_a_few_statements(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages of many machines in one batch: each is applied once, in order, with its
    event; on PostgreSQL the batch sends a few statements, not several per message (no
    savepoint that nothing ran in, the inboxes' updates in one statement)."""
    alice = await new_user(store)
    names = [f"m{i}" for i in range(10)]
    ms = await ready_machines(store, alice, "lab", names)
    statements = Counter[str]()
    if store.dialect == "postgresql":
        import psycopg

        execute = psycopg.Cursor.execute

        def counted(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            if threading.current_thread().name == "crc-pg-writer":
                statements[str(query).split()[0].upper()] += 1
            return execute(self, query, *args, **kwargs)

        monkeypatch.setattr(psycopg.Cursor, "execute", counted)
    writes = [
        (
            delivery.apply_agent_message,
            ms[n]["id"],
            seq,
            agent_msg("lab", n, "user.bench", {"i": seq}),
        )
        for seq in (1, 2, 3)
        for n in names
    ]
    results = await in_one_batch(store, writes)
    assert [r["receipt"] for r in results] == ["new"] * 30
    in_done = [
        await store.read(
            lambda tx, i: tx.one("SELECT in_done FROM machines WHERE id = ?", (i,)), ms[n]["id"]
        )
        for n in names
    ]
    assert [r["in_done"] for r in in_done if r] == [3] * 10
    seen = [
        (e["machine"], e["data"]["body"]["i"])
        for e in await group_events(store, alice, "lab")
        if e["type"] == "message"
    ]
    assert seen == [(n, seq) for seq in (1, 2, 3) for n in names]
    if store.dialect == "postgresql":
        # The held op's batch, then this one: rows read ahead, the inboxes' update,
        # the events' locks and insert, the notification (was: five per message).
        assert statements["SAVEPOINT"] + statements["RELEASE"] <= 2, statements
        assert sum(statements.values()) <= 12, statements


def _writer_statements(store: Store, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """The statements PostgreSQL's writer thread sends from now on, by first word, and
    under "waited" how many times it waited for a statement's rows (an empty count on
    SQLite)."""
    statements = Counter[str]()
    if store.dialect == "postgresql":
        import psycopg

        execute, fetchone, fetchall = (
            psycopg.Cursor.execute,
            psycopg.Cursor.fetchone,
            psycopg.Cursor.fetchall,
        )

        def writing() -> bool:
            return threading.current_thread().name == "crc-pg-writer"

        def counted(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            if writing():
                statements[str(query).split()[0].upper()] += 1
            return execute(self, query, *args, **kwargs)

        def one(self: Any) -> Any:
            statements["waited"] += writing()
            return fetchone(self)

        def every(self: Any) -> Any:
            statements["waited"] += writing()
            return fetchall(self)

        monkeypatch.setattr(psycopg.Cursor, "execute", counted)
        monkeypatch.setattr(psycopg.Cursor, "fetchone", one)
        monkeypatch.setattr(psycopg.Cursor, "fetchall", every)
    return statements


async def test_a_batch_of_job_results_reads_their_targets_in_one_statement(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job's results from many machines in one batch, each acknowledging its job.run
    (as a short job's agent sends it): each target ends as reported, with its events; on
    PostgreSQL the batch reads every target, machine and acknowledged outbox row ahead,
    so it waits for no read per result (store/pg_tx.py, ``TargetCache``,
    ``OutboxCache``)."""
    alice = await new_user(store)
    names = [f"m{i}" for i in range(10)]
    ms = await ready_machines(store, alice, "lab", names)
    job_id = (await store.write(jobs.create_job, alice, "lab", "all", {"argv": ["true"]}))["job_id"]
    served = getattr(store, "rows_read_ahead", 0)
    statements = _writer_statements(store, monkeypatch)

    def result(i: int, n: str) -> tuple[Any, ...]:
        body = {"job_id": job_id, "status": "succeeded", "exit_code": i, "started": True}
        body["output"] = [["stdout", f"{n}\n"]]
        return (
            delivery.apply_agent_message,
            ms[n]["id"],
            1,
            agent_msg("lab", n, "job.result", body),
            1,
        )

    results = await in_one_batch(store, [result(i, n) for i, n in enumerate(names)])
    assert [r["receipt"] for r in results] == ["new"] * 10
    view = await store.read(jobs.job_view, alice["user_id"], job_id)
    assert [
        (t["machine"], t["status"], t["exit_code"], t["output_bytes"]) for t in view["targets"]
    ] == [(n, "succeeded", i, len(n) + 1) for i, n in enumerate(names)]
    evs = await store.read(events.events_after, ms["m0"]["group_id"], 0, job_id)
    assert Counter(e["data"].get("status") or e["type"] for e in evs) == {
        "job.created": 1,
        "delivered": 10,
        "running": 10,
        "job.output": 10,
        "succeeded": 10,
    }
    if store.dialect == "postgresql":
        # The rows read ahead (machines, targets, outbox rows: one round trip), the
        # events' locks, the notification: no read of a target per result, and the
        # outbox's DELETE not waited for (were: one each).
        assert statements["SELECT"] <= 5, statements
        assert statements["waited"] <= 3, statements
        assert getattr(store, "rows_read_ahead", 0) - served >= 30
    for n in names:
        assert await store.read(delivery.outbox_after, ms[n]["id"], 0) == []


async def test_one_batch_of_job_reports_reads_each_target_as_the_batch_left_it(
    store: Store,
) -> None:
    """Within one batch, every report of a job reads its target as the ops before it in
    the batch left it: after reports of the same target, an op rolled back after
    changing a target, an op's own savepoint rolled back, and a target added by the
    batch (PostgreSQL reads a batch's targets ahead: store/pg_tx.py, ``TargetCache``)."""
    alice = await new_user(store)
    ms = await ready_machines(store, alice, "lab", ["a", "b"])
    a, b = ms["a"]["id"], ms["b"]["id"]
    j1 = (await store.write(jobs.create_job, alice, "lab", "all", {"argv": ["true"]}))["job_id"]
    j2 = (await store.write(jobs.create_job, alice, "lab", "a", {"argv": ["true"]}))["job_id"]
    j3 = "job-added-in-the-batch"
    assert await store.write(delivery.ack_outbox, a, 2) == 2
    assert await store.write(delivery.ack_outbox, b, 1) == 1
    set_target = (
        "UPDATE job_targets SET status = ?, exit_code = ?, reason = ?, output_bytes = ? "
        "WHERE job_id = ? AND machine_id = ?"
    )

    def report(name: str, seq: int, type: str, job_id: str, **body: Any) -> tuple[Any, ...]:
        raw = agent_msg("lab", name, type, {"job_id": job_id, **body})
        return (delivery.apply_agent_message, ms[name]["id"], seq, raw)

    def tamper(tx: Tx) -> None:
        tx.execute(set_target, ("failed", 9, "tampered", 0, j2, a))
        raise InvalidInput("rolled back")

    def own_savepoint(tx: Tx) -> None:
        tx.execute("SAVEPOINT undone")
        tx.send(set_target, ("cancelled", None, "undone", 0, j1, b))
        tx.execute("ROLLBACK TO SAVEPOINT undone")
        tx.execute("RELEASE SAVEPOINT undone")

    def add_target(tx: Tx) -> None:
        tx.execute(
            "INSERT INTO jobs (id, group_id, spec, target, created, created_by) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (j3, ms["a"]["group_id"], '{"type": "job.run", "argv": ["true"]}', "a", now(), "alice"),
        )
        tx.execute(
            "INSERT INTO job_targets (job_id, machine_id, machine, status, updated) "
            "VALUES (?, ?, ?, ?, ?)",
            (j3, a, "a", "delivered", now()),
        )

    out = {"stream": "stdout"}
    results = await in_one_batch(
        store,
        [
            report("a", 1, "job.started", j1),
            report("a", 2, "job.output", j1, **out, data="hi\n"),
            report("a", 3, "job.output", j1, **out, data="there\n"),
            report("a", 4, "job.started", j3),  # no such target yet (read ahead so)
            (add_target,),
            report("a", 5, "job.output", j3, **out, data="three\n"),
            (tamper,),
            (own_savepoint,),
            report("b", 1, "job.result", j1, status="succeeded", exit_code=0, started=True),
            report("a", 6, "job.started", j2),
            report(
                "a", 7, "job.result", j1, status="failed", exit_code=2, output=[["stdout", "!\n"]]
            ),
            report("a", 8, "job.result", j2, status="failed", exit_code=3),
        ],
    )
    assert isinstance(results[6], InvalidInput)
    assert results[4] is None and results[7] is None
    reports = (0, 1, 2, 3, 5, 8, 9, 10, 11)
    assert [results[i]["receipt"] for i in reports] == ["new"] * 9
    # The start of j3 before it was added: a report on a job not sent to a, refused.
    assert "was not sent to this machine" in results[3]["error"]["message"]
    assert not any("error" in results[i] for i in reports if i != 3)

    async def targets(job_id: str) -> list[tuple[Any, ...]]:
        rows = await store.read(
            lambda tx: tx.all(
                "SELECT machine, status, exit_code, reason, output_bytes FROM job_targets "
                "WHERE job_id = ? ORDER BY machine",
                (job_id,),
            )
        )
        return [tuple(r.values()) for r in rows]

    assert await targets(j1) == [("a", "failed", 2, None, 11), ("b", "succeeded", 0, None, 0)]
    assert await targets(j2) == [("a", "failed", 3, None, 0)]
    assert await targets(j3) == [("a", "delivered", None, None, 6)]
    seen = [
        (e["job_id"], e["machine"], e["data"].get("status") or e["data"].get("data"))
        for e in await group_events(store, alice, "lab")
        if e["type"] in ("job.status", "job.output")
    ]
    assert seen == [
        (j1, "a", "delivered"),
        (j2, "a", "delivered"),
        (j1, "b", "delivered"),
        (j1, "a", "running"),
        (j1, "a", "hi\n"),
        (j1, "a", "there\n"),
        (j3, "a", "three\n"),  # (its start came before it was added: refused)
        (j1, "b", "running"),
        (j1, "b", "succeeded"),
        (j2, "a", "running"),
        (j1, "a", "!\n"),
        (j1, "a", "failed"),
        (j2, "a", "failed"),
    ]


async def test_acks_in_one_batch_drop_what_the_outbox_holds_as_the_batch_left_it(
    store: Store,
) -> None:
    """Within one batch, each ack drops what the outbox holds at that point: after an
    earlier ack of the same machine, a message added by the batch, and a drop rolled
    back (PostgreSQL reads the rows a batch's acks drop ahead: store/pg_tx.py,
    ``OutboxCache``)."""
    alice = await new_user(store)
    ms = await ready_machines(store, alice, "lab", ["a", "b"])
    a, b = ms["a"]["id"], ms["b"]["id"]
    j1 = (await store.write(jobs.create_job, alice, "lab", "all", {"argv": ["true"]}))["job_id"]
    j2 = (await store.write(jobs.create_job, alice, "lab", "a", {"argv": ["true"]}))["job_id"]

    def dropped_and_undone(tx: Tx) -> None:
        gone = tx.all(
            "DELETE FROM outbox WHERE machine_id = ? AND seq <= ? RETURNING seq, type, job_id",
            (b, 1),
        )
        assert [(r["seq"], r["job_id"]) for r in gone] == [(1, j1)]
        raise InvalidInput("rolled back")

    body = {"job_id": j2, "status": "succeeded", "exit_code": 0, "started": True}
    result = agent_msg("lab", "a", "job.result", body)
    results = await in_one_batch(
        store,
        [
            (delivery.ack_outbox, a, 1),
            (delivery.ack_outbox, a, 1),  # already dropped
            (jobs.create_job, alice, "lab", "a", {"argv": ["false"]}),  # a's seq 3
            (delivery.apply_agent_message, a, 1, result, 3),  # acks j2's and the new run
            (dropped_and_undone,),
            (delivery.ack_outbox, b, 1),
        ],
    )
    assert results[:2] == [1, 0]
    j3 = results[2]["job_id"]
    assert results[2]["deliveries"][0][:2] == (a, 3)
    assert results[3]["receipt"] == "new" and "error" not in results[3]
    assert isinstance(results[4], InvalidInput)
    assert results[5] == 1
    assert await store.read(delivery.outbox_after, a, 0) == []
    assert await store.read(delivery.outbox_after, b, 0) == []
    status = {
        (j, t["machine"]): t["status"]
        for j in (j1, j2, j3)
        for t in (await store.read(jobs.job_view, alice["user_id"], j))["targets"]
    }
    assert status == {
        (j1, "a"): "delivered",
        (j1, "b"): "delivered",
        (j2, "a"): "succeeded",
        (j3, "a"): "delivered",
    }
    seen = [
        (e["job_id"], e["machine"], e["data"]["status"])
        for e in await group_events(store, alice, "lab")
        if e["type"] == "job.status"
    ]
    assert seen == [
        (j1, "a", "delivered"),
        (j2, "a", "delivered"),
        (j3, "a", "delivered"),
        (j2, "a", "running"),
        (j2, "a", "succeeded"),
        (j1, "b", "delivered"),
    ]


async def test_concurrent_jobs_get_contiguous_outbox_seqs(replicas: list[Store]) -> None:
    store = replicas[0]
    alice = await new_user(store)
    ms = await ready_machines(store, alice, "lab", ["a", "b"])
    created = await asyncio.gather(
        *(
            replicas[i % 3 % 2].write(
                jobs.create_job, alice, "lab", "all" if i % 2 else "a", {"argv": ["true"]}
            )
            for i in range(30)
        )
    )
    for name, count in (("a", 30), ("b", 15)):
        rows = await store.read(delivery.outbox_after, ms[name]["id"], 0)
        assert [seq for seq, _ in rows] == list(range(1, count + 1))
        by_seq = {seq: json.loads(frame)["msg"]["body"]["job_id"] for seq, frame in rows}
        assert by_seq == {
            seq: job["job_id"]
            for job in created
            for mid, seq, _ in job["deliveries"]
            if mid == ms[name]["id"]
        }


async def test_concurrent_messages_are_each_applied_once(replicas: list[Store]) -> None:
    """Two senders per machine (an old connection on one replica, a new one on another)
    send the same numbered messages at once: each is applied exactly once."""
    store = replicas[0]
    alice = await new_user(store)
    names = [f"m{i}" for i in range(8)]
    ms = await ready_machines(store, alice, "lab", names)
    per_machine = 15
    receipts: Counter[tuple[str, int]] = Counter()

    async def sender(name: str, via: Store) -> None:
        for seq in range(1, per_machine + 1):
            raw = agent_msg("lab", name, "progress", {"text": f"step {seq}"})
            while True:
                r = await via.write(delivery.apply_agent_message, ms[name]["id"], seq, raw)
                if r["receipt"] != "gap":
                    break
                await asyncio.sleep(0.001)  # the other sender has not got there yet
            if r["receipt"] == "new":
                receipts[(name, seq)] += 1

    await asyncio.gather(*(sender(n, via) for n in names for via in replicas))
    assert receipts == {(n, s): 1 for n in names for s in range(1, per_machine + 1)}
    progress = [e for e in await group_events(store, alice, "lab") if e["type"] == "progress"]
    assert Counter(e["machine"] for e in progress) == {n: per_machine for n in names}
    for n in names:
        texts = [e["data"]["text"] for e in progress if e["machine"] == n]
        assert texts == [f"step {s}" for s in range(1, per_machine + 1)]
    shown = await store.read(groups.show_group, alice["user_id"], "lab")
    assert {m["progress"]["text"] for m in shown["machines"]} == {f"step {per_machine}"}


# -- events ----------------------------------------------------------------------------
async def test_events_after_is_ordered_resumable_and_filtered_by_job(store: Store) -> None:
    alice = await new_user(store)
    ms = await ready_machines(store, alice, "lab", ["a"])
    info = await store.read(events.group_cursor, alice["user_id"], "lab")
    everything = await store.read(events.events_after, info["group_id"], 0)
    assert info["cursor"] == everything[-1]["cursor"]
    assert [e["type"] for e in everything] == ["group.created", "machine.state", "machine.state"]
    job = await store.write(jobs.create_job, alice, "lab", "a", {"argv": ["true"]})
    await store.write(delivery.ack_outbox, ms["a"]["id"], 1)
    newer = await store.read(events.events_after, info["group_id"], info["cursor"])
    assert [e["type"] for e in newer] == ["job.created", "job.status"]
    cursors = [e["cursor"] for e in everything + newer]
    assert cursors == sorted(set(cursors))
    assert await store.read(events.events_after, info["group_id"], cursors[-1]) == []
    first = await store.read(events.events_after, info["group_id"], 0, None, 2)
    assert [e["cursor"] for e in first] == cursors[:2]
    only_job = await store.read(events.events_after, info["group_id"], 0, job["job_id"])
    assert [e["cursor"] for e in only_job] == cursors[3:]
    # Groups do not mix.
    await ready_machines(store, alice, "other", ["z"])
    assert await store.read(events.events_after, info["group_id"], cursors[-1]) == []


async def test_events_become_visible_in_id_order(db_url: str) -> None:
    """An event committed later must not become visible before an earlier-numbered one
    that is still being written, or a follower would move its cursor past it. (Here an
    op holds its transaction open after numbering its event, which happens when each
    statement runs as it comes: PostgreSQL's pipelined batches number their events only
    at their end, see test_pg_pipeline.py.)"""
    replicas = [_one_by_one(db_url), _one_by_one(db_url)]
    for s in replicas:
        await s.start()
    try:
        await _events_become_visible_in_id_order(replicas)
    finally:
        for s in replicas:
            await s.close()


def _one_by_one(url: str) -> Store:
    if url.startswith("postgresql"):
        from cloudremotecontrol.server.store.postgres import PostgresStore

        return PostgresStore(url, pipelined=False)
    return open_store(url)


async def _events_become_visible_in_id_order(replicas: list[Store]) -> None:
    store, other = replicas
    alice = await new_user(store)
    await store.write(groups.create_group, alice["user_id"], "lab", [{"name": "a"}])
    info = await store.read(events.group_cursor, alice["user_id"], "lab")
    gid, cursor = info["group_id"], info["cursor"]
    inside, gate = threading.Event(), threading.Event()

    def slow(tx: Tx) -> None:
        add_event(tx, gid, "user.first", {})
        inside.set()
        gate.wait(30)

    def fast(tx: Tx) -> None:
        add_event(tx, gid, "user.second", {})

    first = asyncio.ensure_future(store.write(slow))
    try:
        assert await asyncio.to_thread(inside.wait, 30)
        second = asyncio.ensure_future(other.write(fast))
        for _ in range(25):  # while the first is open, the second stays invisible
            assert await store.read(events.events_after, gid, cursor) == []
            await asyncio.sleep(0.02)
    finally:
        gate.set()
        await first
    await second
    seen = await store.read(events.events_after, gid, cursor)
    assert [e["type"] for e in seen] == ["user.first", "user.second"]
    assert seen[0]["cursor"] < seen[1]["cursor"]


async def test_a_follower_misses_no_event_under_concurrent_writers(replicas: list[Store]) -> None:
    store = replicas[0]
    alice = await new_user(store)
    names = [f"m{i}" for i in range(8)]
    ms = await ready_machines(store, alice, "lab", names)
    info = await store.read(events.group_cursor, alice["user_id"], "lab")
    gid, start = info["group_id"], info["cursor"]
    per_machine = 20
    done = asyncio.Event()
    followed: list[int] = []

    async def writer(name: str, via: Store) -> None:
        for seq in range(1, per_machine + 1):
            await via.write(
                delivery.apply_agent_message,
                ms[name]["id"],
                seq,
                agent_msg("lab", name, "progress", {"text": str(seq)}),
            )

    async def follower() -> None:
        cursor = start
        while True:
            finished = done.is_set()
            batch = await store.read(events.events_after, gid, cursor)
            for e in batch:
                followed.append(e["cursor"])
                cursor = e["cursor"]
            if finished and not batch:
                return
            await asyncio.sleep(0)

    follow = asyncio.ensure_future(follower())
    await asyncio.gather(*(writer(n, replicas[i % 2]) for i, n in enumerate(names)))
    done.set()
    await follow
    stored = [e["cursor"] for e in await store.read(events.events_after, gid, start, None, 10_000)]
    assert len(stored) == len(names) * per_machine
    assert followed == stored


async def test_a_write_cancelled_while_queued_does_not_stop_later_writes(store: Store) -> None:
    started = threading.Event()
    release = threading.Event()

    def blocking(tx: Tx) -> str:
        started.set()
        release.wait(10)
        return "first"

    first = asyncio.ensure_future(store.write(blocking))
    await asyncio.to_thread(started.wait, 10)
    queued = asyncio.ensure_future(store.write(users.create_user, "bob"))
    await asyncio.sleep(0.05)
    queued.cancel()  # e.g. the client went away while its write waited
    release.set()
    assert await first == "first"
    with pytest.raises(asyncio.CancelledError):
        await queued
    token = await asyncio.wait_for(store.write(users.create_user, "carol"), 10)
    assert (await store.read(users.authenticate_master, token))["user"] == "carol"


# -- the SQLite writer's commit window --------------------------------------------------
async def _until(check: Any) -> None:
    for _ in range(3000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never happened")


async def test_sqlite_writer_commits_what_arrives_in_its_window_with_the_batch(
    tmp_path: Any,
) -> None:
    store = SqliteStore(str(tmp_path / "crc.db"))
    await store.start()
    try:
        # A long window that ends when three operations are gathered: what arrives
        # while the writer waits must join the batch it is gathering.
        store.commit_window, store.batch_limit = 600.0, 3
        started, release = threading.Event(), threading.Event()

        def hold(tx: Tx) -> None:
            started.set()
            release.wait(30)

        first = asyncio.ensure_future(store.write(hold))
        assert await asyncio.to_thread(started.wait, 30)
        a = asyncio.ensure_future(store.write(users.create_user, "a"))
        b = asyncio.ensure_future(store.write(users.create_user, "b"))
        await asyncio.sleep(0.1)  # both are queued behind the first
        release.set()
        await first
        await _until(lambda: store.window_waits == 1)  # a and b: busy, so it waits
        c = await store.write(users.create_user, "c")
        tokens = [await a, await b, c]
        assert (store.batches, store.window_waits) == (2, 1)
        # After a batch of several, a lone operation waits for company too; the next
        # one completes its batch.
        d = asyncio.ensure_future(store.write(users.create_user, "d"))
        await _until(lambda: store.window_waits == 2)
        store.batch_limit = 2
        e = await store.write(users.create_user, "e")
        tokens += [await d, e]
        assert (store.batches, store.window_waits) == (3, 2)
        names = [(await store.read(users.authenticate_master, t))["user"] for t in tokens]
        assert names == ["a", "b", "c", "d", "e"]
    finally:
        release.set()
        await store.close()


async def test_sqlite_writer_does_not_wait_for_a_write_that_finds_it_idle(
    tmp_path: Any,
) -> None:
    store = SqliteStore(str(tmp_path / "crc.db"))
    await store.start()
    try:
        store.commit_window = 600.0  # were a lone write held, this would never end
        for name in ["a", "b", "c"]:  # one after the other, as a lone caller writes
            await asyncio.wait_for(store.write(users.create_user, name), 60)
        assert (store.batches, store.window_waits) == (3, 0)
    finally:
        await store.close()


# -- migrations ------------------------------------------------------------------------
async def test_migrations_are_idempotent_and_safe_when_started_together(db_url: str) -> None:
    stores = [open_store(db_url) for _ in range(4)]
    await asyncio.gather(*(s.start() for s in stores))  # each migrates in its own thread
    try:
        alice = await new_user(stores[0])
        for s in stores:
            assert await s.read(schema_versions) == [v for v, _ in MIGRATIONS]
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    again = open_store(db_url)
    await again.start()
    try:
        assert await again.read(schema_versions) == [v for v, _ in MIGRATIONS]
        assert (await again.read(users.authenticate_master, alice["token"]))["user"] == "alice"
    finally:
        await again.close()


def test_sqlite_stores_opening_one_new_file_at_once_all_start(tmp_path: Any) -> None:
    """Four stores open the same new SQLite file at once, forty times over.

    SQLite refuses the switch to WAL at once ("database is locked", no busy handler)
    when another connection opening the same new file holds a lock it waits to upgrade;
    a single round hits that only now and then, forty rounds nearly always do.
    """
    errors: list[BaseException] = []

    def start(store: SqliteStore) -> None:
        try:
            store.open_sync()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    for n in range(40):
        path = str(tmp_path / f"crc-{n}.db")
        stores = [SqliteStore(path) for _ in range(4)]
        threads = [threading.Thread(target=start, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for s in stores:
            s.close_sync()
        assert errors == [], f"round {n}: {errors[0]!r}"


def test_server_processes_migrating_one_new_database_at_once(db_url: str, tmp_path: Any) -> None:
    """Three `crc server add-user` processes on one empty database at the same time."""
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cloudremotecontrol",
                "server",
                "add-user",
                f"u{i}",
                "--database",
                db_url,
                "--data-dir",
                str(tmp_path / "unused"),
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    for i, p in enumerate(procs):
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert json.loads(out)["user"] == f"u{i}"
    s = open_store(db_url)
    s.write_sync(lambda tx: None)  # opens (and migrates, finding nothing to do)
    try:
        assert s.write_sync(schema_versions) == [v for v, _ in MIGRATIONS]
        names = s.write_sync(lambda tx: sorted(r["name"] for r in tx.all("SELECT name FROM users")))
        assert names == ["u0", "u1", "u2"]
    finally:
        s.close_sync()  # type: ignore[attr-defined]


# -- PostgreSQL only: wake-ups across replicas -----------------------------------------
async def test_notify_wakes_other_replicas_and_a_reconnect_wakes_everyone(
    pg_url: str, pg_cluster: Any
) -> None:
    a, b = open_store(pg_url), open_store(pg_url)
    woken: queue.SimpleQueue[set[str]] = queue.SimpleQueue()
    await a.start()
    await b.start()
    b.on_commit(woken.put)
    try:
        alice = await new_user(a)
        await a.write(groups.create_group, alice["user_id"], "lab", [{"name": "x"}])
        gid = (await a.read(events.group_cursor, alice["user_id"], "lab"))["group_id"]

        def wait_for(wanted: str) -> set[str]:
            while True:
                got = woken.get(timeout=30)
                if wanted in got:
                    return got

        assert await asyncio.to_thread(wait_for, gid) == {gid}  # b never wrote anything
        while not woken.empty():
            woken.get()
        assert pg_cluster.terminate(pg_url, "LISTEN") == 2  # a's and b's listeners
        assert await asyncio.to_thread(wait_for, ALL_GROUPS) == {ALL_GROUPS}
        await a.write(groups.create_group, alice["user_id"], "lab2", [{"name": "x"}])
        gid2 = (await a.read(events.group_cursor, alice["user_id"], "lab2"))["group_id"]
        assert await asyncio.to_thread(wait_for, gid2) == {gid2}  # listening again
    finally:
        await a.close()
        await b.close()


async def test_connections_killed_between_operations_cost_nothing(
    pg_url: str, pg_cluster: Any
) -> None:
    """As after a database restart or failover: every pooled connection is dead."""
    s = open_store(pg_url)
    await s.start()
    try:
        alice = await new_user(s)
        assert pg_cluster.terminate(pg_url, "") >= 3  # writer, readers, listener
        bob = await new_user(s, "bob")  # the write re-runs on a new connection
        assert (await s.read(users.authenticate_master, alice["token"]))["user"] == "alice"
        assert (await s.read(users.authenticate_master, bob["token"]))["user"] == "bob"
    finally:
        await s.close()
