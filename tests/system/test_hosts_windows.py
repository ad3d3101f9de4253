"""A `--sync-hosts` group's automatic hosts syncs (server/ops/hostsync.py), driven through
the server's own operations on each store (a SQLite file and a fresh PostgreSQL
database) at chosen times: windows that grow while changes keep coming and shrink back
after a quiet one, a superseded sync rewritten only while it still waits, and the jobs
of old syncs forgotten.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from store_fixtures import anyio_backend_fixture, db_url_fixture, store_fixture  # noqa: F401 -- fixtures

from batches import in_one_batch
from cloudremotecontrol.errors import NotFound
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
from cloudremotecontrol.server.ops.common import dumps, now
from cloudremotecontrol.server.store.base import Store, Tx

pytestmark = pytest.mark.anyio


class Lab:
    """Group ``lab`` (``--sync-hosts``, private addresses) of machines connected ready,
    which acknowledge nothing unless told to; ``move`` gives one a new address, quietly
    (as a facts message would, without the sync it starts: the tests choose when)."""

    def __init__(self, store: Store, user: dict[str, Any], gid: str, ids: dict[str, str]):
        self.store, self.user, self.gid, self.ids = store, user, gid, ids
        self.sent = dict.fromkeys(ids, 0)  # messages each machine sent

    @classmethod
    async def create(cls, store: Store, names: list[str]) -> Lab:
        token = await store.write(users.create_user, "alice")
        user = await store.read(users.authenticate_master, token)
        settings = {"sync_hosts": True, "hosts_ip": "private"}
        out = await store.write(
            groups.create_group,
            user["user_id"],
            "lab",
            [{"name": n} for n in names],
            None,
            None,
            settings,
        )
        ids = {}
        for m in out["machines"]:
            cred = await store.write(enrollment.enroll, m["key"], "127.0.0.1")
            row = await store.read(enrollment.authenticate_machine, cred["credential"])
            await store.write(delivery.machine_connected, row["id"], True, "127.0.0.1", "r1")
            ids[m["name"]] = row["id"]
        gid = (await store.read(events.group_cursor, user["user_id"], "lab"))["group_id"]
        lab = cls(store, user, gid, ids)
        for i, name in enumerate(names):
            await lab.move(name, f"10.0.{i}.1")
        return lab

    async def move(self, name: str, ip: str) -> None:
        facts = dumps({"hostname": name, "ips": [ip], "private_ips": [ip]})

        def write(tx: Tx) -> None:
            tx.execute("UPDATE machines SET facts = ? WHERE id = ?", (facts, self.ids[name]))

        await self.store.write(write)

    async def changed(self, at: float) -> list[Any]:
        """What an address change at ``at`` sends (``auto_hosts_sync``)."""
        return list(await self.store.write(hostsync.auto_hosts_sync, self.gid, at))

    async def tick(self, at: float) -> list[Any]:
        """What the server's loop sends at ``at`` (windows ended by then)."""
        due = await self.store.read(hostsync.due_groups, at)
        return list(await self.store.write(hostsync.sync_due, due, at)) if due else []

    async def due(self) -> float | None:
        """When the open window ends (None: none open)."""

        def read(tx: Tx) -> Any:
            return tx.one("SELECT hosts_due FROM groups WHERE id = ?", (self.gid,))

        due = (await self.store.read(read))["hosts_due"]
        return None if due is None else float(due)

    async def syncs(self) -> list[dict[str, Any]]:
        """Every automatic sync's ``job.created`` event, oldest first (kept as events)."""
        evs = await self.store.read(events.events_after, self.gid, 0)
        return [e for e in evs if e["type"] == "job.created" and e["data"]["by"] == hostsync.BY]

    async def jobs(self) -> list[str]:
        """The automatic syncs whose jobs the database holds, oldest first."""

        def read(tx: Tx) -> Any:
            return tx.all(
                "SELECT id FROM jobs WHERE group_id = ? AND created_by = ? ORDER BY created",
                (self.gid, hostsync.BY),
            )

        return [r["id"] for r in await self.store.read(read)]

    def report(self, name: str, type: str, body: dict[str, Any]) -> tuple[Any, ...]:
        """Machine ``name``'s next message, as a write (``(op, *args)``), no ack on it."""
        self.sent[name] += 1
        raw = Envelope.make("lab", name, "master", type, body).to_dict()
        return (delivery.apply_agent_message, self.ids[name], self.sent[name], raw)

    async def send(self, name: str, type: str, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.store.write(*self.report(name, type, body))
        assert result["receipt"] == "new" and "error" not in result, result
        return result

    async def outbox(self, name: str) -> list[tuple[str, str | None]]:
        """``(type, job_id)`` of each message waiting in ``name``'s outbox, in order."""
        rows = await self.store.read(delivery.outbox_after, self.ids[name], 0)
        msgs = [json.loads(frame)["msg"] for _, frame in rows]
        return [(m["type"], m["body"].get("job_id")) for m in msgs]

    async def targets(self, job_id: str) -> dict[str, tuple[str, str | None]]:
        view = await self.store.read(jobs.job_view, self.user["user_id"], job_id)
        return {t["machine"]: (t["status"], t["reason"]) for t in view["targets"]}


async def test_windows_double_while_changes_keep_coming_and_shrink_back_after_a_quiet_one(
    store: Store,
) -> None:
    lab = await Lab.create(store, ["a", "b"])
    t0 = now()
    await lab.move("b", "10.9.0.1")
    assert await lab.changed(t0)  # the first change: at once
    assert await lab.due() == t0 + 5
    # Changes that keep coming: each window that ends with one syncs it and opens one
    # twice as long, up to a minute; inside a window nothing is synced.
    ends = [t0 + 5]
    for i, length in enumerate([10, 20, 40, 60, 60], start=2):
        await lab.move("b", f"10.9.0.{i}")
        assert await lab.changed(ends[-1] - 0.5) == []
        assert await lab.tick(ends[-1] - 0.5) == []
        assert await lab.tick(ends[-1])
        assert await lab.due() == ends[-1] + length
        ends.append(ends[-1] + length)
    syncs = await lab.syncs()
    assert len(syncs) == 6
    assert ["10.9.0.6", "b"] in syncs[-1]["data"]["spec"]["entries"]  # the last addresses
    # A window that ends with nothing to sync closes: the next change goes at once, and
    # opens the shortest window again.
    assert await lab.tick(ends[-1]) == []
    assert await lab.due() is None
    await lab.move("b", "10.9.0.7")
    assert await lab.changed(ends[-1] + 1)
    assert await lab.due() == ends[-1] + 6
    assert len(await lab.syncs()) == 7


async def test_a_superseded_sync_is_rewritten_only_while_it_still_waits(store: Store) -> None:
    """A newer automatic sync turns an older one into a ``job.cancel`` only where it is
    still queued: not on a machine that started it before its ack came (the message is
    still in its outbox), nor on one that acknowledged it."""
    lab = await Lab.create(store, ["a", "b", "c"])
    t0 = now()
    await lab.move("a", "10.9.0.1")
    assert await lab.changed(t0)
    [first] = await lab.jobs()
    await lab.send("a", "job.started", {"job_id": first})  # its ack still to come
    await store.write(delivery.ack_outbox, lab.ids["c"], 1)
    assert await lab.targets(first) == {
        "a": ("running", None),
        "b": ("queued", None),
        "c": ("delivered", None),
    }
    await lab.move("a", "10.9.0.2")
    assert await lab.tick(t0 + 5)
    second = (await lab.jobs())[-1]
    superseded = f"superseded by hosts sync {second}"
    assert await lab.targets(first) == {
        "a": ("running", None),
        "b": ("cancelled", superseded),
        "c": ("delivered", None),
    }
    assert await lab.outbox("a") == [("hosts.sync", first), ("hosts.sync", second)]
    assert await lab.outbox("b") == [("job.cancel", first), ("hosts.sync", second)]
    assert await lab.outbox("c") == [("hosts.sync", second)]
    evs = await store.read(events.events_after, lab.gid, 0, first)
    assert [(e["machine"], e["data"]["status"]) for e in evs if e["type"] == "job.status"] == [
        ("a", "running"),
        ("c", "delivered"),
        ("b", "cancelled"),
    ]
    # A third sync leaves the cancel where it is, and supersedes the second on a and b.
    await lab.move("a", "10.9.0.3")
    assert await lab.tick(t0 + 15)
    assert [kind for kind, _ in await lab.outbox("a")] == ["hosts.sync", "job.cancel", "hosts.sync"]
    assert [kind for kind, _ in await lab.outbox("b")] == ["job.cancel", "job.cancel", "hosts.sync"]
    assert (await lab.targets(first))["a"] == ("running", None)


async def test_one_batch_reads_a_superseded_target_as_the_batch_left_it(store: Store) -> None:
    """Reports on an automatic sync in the batch that supersedes it: one before the
    newer sync keeps its target running (never rewritten), one after it finds its target
    cancelled and changes nothing. On PostgreSQL the batch read both targets ahead
    (``TargetCache``): the rewrite must not leave a stale copy there."""
    lab = await Lab.create(store, ["a", "b"])
    t0 = now()
    await lab.move("a", "10.9.0.1")
    assert await lab.changed(t0)
    [first] = await lab.jobs()
    await lab.move("a", "10.9.0.2")
    served = getattr(store, "rows_read_ahead", 0)
    results = await in_one_batch(
        store,
        [
            lab.report("a", "job.started", {"job_id": first}),
            (hostsync.sync_due, [lab.gid], t0 + 5),
            lab.report("b", "job.started", {"job_id": first}),
        ],
    )
    assert [results[0]["receipt"], results[2]["receipt"]] == ["new", "new"], results
    assert results[1], results  # the newer sync was sent
    if store.dialect == "postgresql":
        assert getattr(store, "rows_read_ahead", 0) > served  # the targets were read ahead
    second = (await lab.jobs())[-1]
    assert await lab.targets(first) == {
        "a": ("running", None),
        "b": ("cancelled", f"superseded by hosts sync {second}"),
    }
    evs = await store.read(events.events_after, lab.gid, 0, first)
    assert [(e["machine"], e["data"]["status"]) for e in evs if e["type"] == "job.status"] == [
        ("a", "running"),
        ("b", "cancelled"),
    ]


async def test_a_group_keeps_the_jobs_of_its_newest_finished_automatic_syncs_only(
    store: Store,
) -> None:
    """Each window leaves a job with a target per machine: a group keeps those of its
    newest ``hostsync.KEEP`` finished syncs, and every one still under way, with the new one;
    their events stay, and a machine acknowledging a forgotten one changes nothing."""
    assert hostsync.KEEP == 3  # the number docs/reference.md gives
    lab = await Lab.create(store, ["a", "b"])
    await lab.move("a", "10.9.0.1")
    assert await lab.changed(now())
    for i in range(2, 13):
        if i == 4:  # a starts the third sync before the fourth: under way, kept
            await lab.send("a", "job.started", {"job_id": (await lab.jobs())[-1]})
        await lab.move("a", f"10.9.0.{i}")
        due = await lab.due()
        assert due is not None and await lab.tick(due)
    created = [e["job_id"] for e in await lab.syncs()]
    assert len(created) == 12  # every sync's events are kept
    kept = [created[2], *created[-hostsync.KEEP - 1 :]]
    assert await lab.jobs() == kept
    with pytest.raises(NotFound):
        await store.read(jobs.job_view, lab.user["user_id"], created[0])
    # The third ended: still kept while its message waits in a's outbox (a machine that
    # has it reports on it), and what the machines acknowledge now, of syncs forgotten
    # or not, changes nothing but the newest: b's superseded ones, a's third.
    body = {"job_id": created[2], "status": "succeeded", "exit_code": 0}
    await lab.send("a", "job.result", body)
    await lab.move("a", "10.9.0.13")
    due = await lab.due()
    assert due is not None and await lab.tick(due)
    newest = (await lab.jobs())[-1]
    assert await lab.jobs() == [created[2], *created[-hostsync.KEEP :], newest]
    assert ("hosts.sync", created[2]) in await lab.outbox("a")
    for name in ("a", "b"):
        waiting = await lab.outbox(name)
        assert waiting[-1] == ("hosts.sync", newest)
        assert await store.write(delivery.ack_outbox, lab.ids[name], len(waiting)) == len(waiting)
    assert await lab.targets(newest) == {"a": ("delivered", None), "b": ("delivered", None)}
    evs = await store.read(events.events_after, lab.gid, 0)
    assert not [e for e in evs if e["type"] == "agent.error"], evs
    # Acknowledged, the third is forgotten by the next sync.
    await lab.move("a", "10.9.0.14")
    due = await lab.due()
    assert due is not None and await lab.tick(due)
    assert created[2] not in await lab.jobs()


async def test_a_long_history_of_syncs_is_forgotten_a_batch_at_a_time(store: Store) -> None:
    """A group with many finished automatic syncs (kept before their pruning existed)
    forgets ``PRUNE_BATCH`` of them per sync, never all in one long write."""
    lab = await Lab.create(store, ["a"])
    old = 2 * hostsync.PRUNE_BATCH + 10

    def history(tx: Tx) -> None:
        tx.executemany(
            "INSERT INTO jobs (id, group_id, spec, target, created, created_by) "
            "VALUES (?, ?, '{}', 'all', ?, ?)",
            [(f"old{n:04d}", lab.gid, 1000.0 + n, hostsync.BY) for n in range(old)],
        )

    await store.write(history)
    before = len(await lab.jobs())
    await lab.move("a", "10.9.0.1")
    assert await lab.changed(now())
    assert len(await lab.jobs()) == before + 1 - hostsync.PRUNE_BATCH
    await lab.move("a", "10.9.0.2")
    due = await lab.due()
    assert due is not None and await lab.tick(due)
    assert len(await lab.jobs()) == before + 2 - 2 * hostsync.PRUNE_BATCH
