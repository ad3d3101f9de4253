"""A job's page reads the job's output newest first and stops after ``OUTPUT_READ``
bytes: rows of a machine whose last part is already shown count too, so a machine that
printed gigabytes cannot make one page load read them all while another target (offline,
queued, quiet) never fills its part. The real store operations on a SQLite file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from cloudremotecontrol.server.dashboard import views
from cloudremotecontrol.server.ops import groups, jobs, users
from cloudremotecontrol.server.ops.common import add_events
from cloudremotecontrol.server.store.sqlite import SqliteStore


def test_a_page_stops_reading_past_its_bound_though_a_target_never_fills(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(views, "OUTPUT_TAIL", 100)
    monkeypatch.setattr(views, "OUTPUT_READ", 2_000)
    monkeypatch.setattr(views, "BATCH", 10)
    store = SqliteStore(str(tmp_path / "crc.db"))
    store.open_sync()
    try:
        token = store.write_sync(users.create_user, "alice")
        user = store.write_sync(users.authenticate_master, token)
        store.write_sync(
            groups.create_group, user["user_id"], "lab", [{"name": "m"}, {"name": "n"}]
        )
        job = store.write_sync(jobs.create_job, user, "lab", "all", {"argv": ["yes"]})
        gid = store.write_sync(lambda tx: tx.one("SELECT id FROM groups WHERE name = 'lab'"))["id"]
        chunk = {"job_id": job["job_id"], "stream": "stdout", "data": "y\n" * 100}

        def chatty(tx: Any) -> None:  # m prints 1,000 chunks; n prints nothing
            for _ in range(1_000):
                add_events(tx, gid, [("job.output", chunk)], machine="m", job_id=job["job_id"])

        store.write_sync(chatty)
        fetched = 0

        def page(tx: Any) -> dict[str, Any]:
            nonlocal fetched
            real = tx.all

            def counting(sql: str, params: Any = ()) -> list[Any]:
                nonlocal fetched
                rows = real(sql, params)
                if "FROM events" in sql:
                    fetched += len(rows)
                return rows

            tx.all = counting
            return views.job_page(tx, user["user_id"], job["job_id"])

        shown = store.write_sync(page)
        assert shown["outputs"]["m"] == ("y\n" * 100)[-100:]
        assert shown["output_cut"] is True
        assert fetched <= 2_000 // 200 + 2 * 10, f"{fetched} of 1,000 output rows read"
    finally:
        store.close_sync()


def test_a_machine_whose_output_is_older_than_what_a_page_reads_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """n printed first, then m printed past the read bound: n's output is not reached,
    and its section says how much output is not shown and where it is."""
    from cloudremotecontrol.server.dashboard import routes

    monkeypatch.setattr(views, "OUTPUT_TAIL", 100)
    monkeypatch.setattr(views, "OUTPUT_READ", 2_000)
    monkeypatch.setattr(views, "BATCH", 10)
    store = SqliteStore(str(tmp_path / "crc.db"))
    store.open_sync()
    try:
        token = store.write_sync(users.create_user, "alice")
        user = store.write_sync(users.authenticate_master, token)
        store.write_sync(
            groups.create_group, user["user_id"], "lab", [{"name": "m"}, {"name": "n"}]
        )
        job = store.write_sync(jobs.create_job, user, "lab", "all", {"argv": ["yes"]})
        job_id = job["job_id"]
        gid = store.write_sync(lambda tx: tx.one("SELECT id FROM groups WHERE name = 'lab'"))["id"]

        def printed(tx: Any) -> None:
            early = {"job_id": job_id, "stream": "stdout", "data": "<n's end>\n"}
            for _ in range(5):
                add_events(tx, gid, [("job.output", early)], machine="n", job_id=job_id)
            late = {"job_id": job_id, "stream": "stdout", "data": "y\n" * 100}
            for _ in range(100):
                add_events(tx, gid, [("job.output", late)], machine="m", job_id=job_id)
            tx.send(
                "UPDATE job_targets SET output_bytes = CASE machine WHEN 'n' THEN 50 "
                "ELSE 20000 END WHERE job_id = ?",
                (job_id,),
            )

        store.write_sync(printed)
        shown = store.write_sync(views.job_page, user["user_id"], job_id)
        assert "n" not in shown["outputs"] and shown["outputs"]["m"]
        assert shown["unshown"] == {"n": 50}
        html = routes._env.get_template("job.html").render(
            user=None, csrf="", features={}, path="", url="", data=shown
        )
        assert re.search(
            r'<section class="output" data-machine="n">\s*<h2>n</h2>\s*'
            r'<p class="hint unshown" id="unshown-n">Output not shown: 50 bytes, ',
            html,
        ), html
        assert "<code>crc events lab</code> has it" in html
        assert 'id="unshown-m"' not in html
        # Output no longer kept (its events removed by retention), all the rest read:
        # not said to be "older than what the page reads".
        store.write_sync(
            lambda tx: tx.send("DELETE FROM events WHERE job_id = ? AND machine = 'm'", (job_id,))
        )
        shown = store.write_sync(views.job_page, user["user_id"], job_id)
        assert shown["outputs"] == {"n": "<n's end>\n" * 5} and shown["unshown"] == {}
    finally:
        store.close_sync()
