"""Several server replicas on one PostgreSQL database: any replica accepts any request."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudremotecontrol.master.client import Client
from cloudremotecontrol.master.localrun import AgentProcess, ServerProcess


def replicas(
    tmp: Path, database: str, n: int, env: dict[str, str] | None = None
) -> list[ServerProcess]:
    """``n`` servers sharing one certificate (as behind a load balancer) and database."""
    first = ServerProcess(tmp / "r0", database=database, env=env)
    first.init()
    out = [first]
    for i in range(1, n):
        out.append(first.replica(tmp / f"r{i}"))
    for s in out:
        s.start()
    return out


def _wait(pred, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return value


@contextlib.contextmanager
def lab(
    tmp: Path, database: str, n: int
) -> Iterator[tuple[list[ServerProcess], list[Client], AgentProcess]]:
    """``n`` replicas, alice's client on each, and group lab whose machine m has its
    agent connected to the first replica, ready; all stopped at the end."""
    servers = replicas(tmp, database, n)
    clients: list[Client] = []
    agent = None
    try:
        token = servers[0].add_user("alice")
        clients = [Client(s.url, token, s.fingerprint) for s in servers]
        out = clients[0].create_group("lab", ["m"])
        agent = AgentProcess(
            tmp / "m", servers[0].url, out["machines"][0]["key"], servers[0].fingerprint
        ).start()
        _wait(lambda: clients[-1].group("lab")["machines"][0]["state"] == "ready")
        yield servers, clients, agent
    finally:
        if agent is not None:
            agent.stop()
        for c in clients:
            c.close()
        for srv in servers:
            srv.stop()


def test_job_through_one_replica_reaches_an_agent_on_another(pg_url, tmp_path):
    with lab(tmp_path, pg_url, 3) as (_, (_via_a, via_b, via_c), _agent):
        # Submitted through B, run by the agent connected to A, followed through C.
        events = list(
            via_c.follow_job(via_b.start_job("lab", "m", argv=["echo", "across"])["job_id"], ["m"])
        )
        assert [e["data"]["data"] for e in events if e["type"] == "job.output"] == ["across\n"]
        assert events[-1]["data"]["status"] == "succeeded"


def test_replica_killed_mid_job_the_job_completes_through_another(pg_url, tmp_path):
    a, b = replicas(tmp_path, pg_url, 2)
    agent = None
    marker = tmp_path / "ran.txt"
    try:
        token = a.add_user("alice")
        urls = f"{a.url},{b.url}"
        with Client(urls, token, a.fingerprint) as crc:
            out = crc.create_group("lab", ["m"])
            agent = AgentProcess(
                tmp_path / "m", urls, out["machines"][0]["key"], a.fingerprint
            ).start()
            _wait(lambda: crc.group("lab")["machines"][0]["state"] == "ready")
            started = crc.start_job(
                "lab", "m", command=f"echo once >> {marker}; sleep 2; echo finished", shell="sh"
            )
            _wait(lambda: crc.job(started["job_id"])["targets"][0]["status"] == "running")
            a.kill()  # SIGKILL the replica holding the agent's connection and our client
            events = list(crc.follow_job(started["job_id"], ["m"]))
            assert crc.url == b.url
            assert events[-1]["data"]["status"] == "succeeded"
            outputs = [
                e["data"]["data"]
                for e in crc.job_events(started["job_id"], follow=False)
                if e["type"] == "job.output"
            ]
            assert outputs == ["finished\n"]
            assert marker.read_text() == "once\n"  # executed exactly once
    finally:
        if agent is not None:
            agent.stop()
        for s in (a, b):
            s.stop()


def test_two_replicas_tear_down_an_expired_group_once_with_the_key_either_can_read(
    pg_url, tmp_path
):
    """on_ttl: destroy with replicas: the key stored through one replica is read by
    whichever claims the teardown (same teardown.key), and only one of them does it."""
    from cloudremotecontrol.providers.base import MachineSpec
    from cloudremotecontrol.providers.vultr import VultrProvider
    from fakes.vultr_api import DEFAULT_API_KEY, FakeVultr

    fake = FakeVultr(boot=None, ready_delay=0.1).start()
    a, b = replicas(tmp_path, pg_url, 2, env={"CRC_VULTR_API_URL": fake.url})
    try:
        token = a.add_user("alice")
        with (
            Client(b.url, token, b.fingerprint) as via_b,
            VultrProvider(DEFAULT_API_KEY, fake.url) as vultr,
        ):
            via_b.create_group("shop", ["web", "db"], ttl=3)
            via_b.arm_teardown("shop", "vultr", DEFAULT_API_KEY)
            ids = [
                vultr.create(
                    "shop",
                    MachineSpec(name=n, os="linux", region="ewr", plan="vc2-1c-1gb", image="2284"),
                    "#!/bin/sh\ntrue\n",
                ).id
                for n in ("web", "db")
            ]
            done = _wait(
                lambda: (
                    (via_b.group("shop")["teardown"] or {}).get("status") == "done"
                    and via_b.group("shop")["teardown"]
                )
            )
            assert sorted(done["result"]["destroyed"]) == sorted(ids) and done["attempts"] == 1
            deletes = sorted(
                q.path
                for q in fake.requests
                if q.method == "DELETE" and q.path.startswith("/instances/")
            )
            assert deletes == sorted(f"/instances/{i}" for i in ids)  # each exactly once
            statuses = [
                e["data"]["status"] for e in via_b.events("shop") if e["type"] == "group.teardown"
            ]
            assert statuses == ["running", "done"], statuses
            assert vultr.list("shop") == []
    finally:
        for s in (a, b):
            s.stop()
        fake.stop()


def test_an_agent_on_one_replica_stops_when_its_group_is_deleted_through_another(pg_url, tmp_path):
    """The agent is connected to the first replica and idle (a message from it would be
    answered "revoked" at once); the group is deleted through the second, which can tell
    only its own agents. The first finds it revoked at its next look (every 2 s,
    ``REVOKED_SECONDS``; before, its touch of its machines every 30 s) and closes it: the
    agent stops (exit 0). The bound is well below 30 s, with room for a loaded machine."""
    with lab(tmp_path, pg_url, 2) as (_, (_via_a, via_b), agent):
        via_b.delete_group("lab")
        assert agent.proc.wait(timeout=10) == 0
        assert "stopping: group 'lab' deleted" in agent.log(), agent.log()


def test_files_cross_replicas_without_a_shared_disk(pg_url, tmp_path):
    """A file pushed through replica B reaches an agent connected to replica A (A has it
    only in the database), and a file the agent uploads through A is downloaded through
    B: each replica has its own data dir, nothing shared but PostgreSQL."""
    import hashlib
    import os

    with lab(tmp_path, pg_url, 2) as ((a, _b), (via_a, via_b), _agent):
        src = tmp_path / "payload.bin"
        src.write_bytes(os.urandom(3 * (1 << 20) + 12345))  # 4 chunks, the last short
        sha = hashlib.sha256(src.read_bytes()).hexdigest()
        dest = tmp_path / "on-m" / "payload.bin"
        dest.parent.mkdir()
        job = via_b.push("lab", "m", str(src), str(dest))
        assert not (a.data_dir / "blobs" / sha[:2] / sha).exists()  # B has it, A not
        events = list(via_a.follow_job(job["job_id"], ["m"]))
        assert events[-1]["data"]["status"] == "succeeded", events
        assert dest.read_bytes() == src.read_bytes()
        assert (a.data_dir / "blobs" / sha[:2] / sha).is_file()  # fetched, then cached
        # The other way: the agent uploads through A, the master downloads through B.
        pull = via_b.start_pull("lab", "m", str(dest))
        events = list(via_b.follow_job(pull["job_id"], ["m"]))
        assert events[-1]["data"]["status"] == "succeeded", events
        back = tmp_path / "back.bin"
        assert via_b.download_pulled(pull["job_id"], str(back))["sha256"] == sha
        assert back.read_bytes() == src.read_bytes()


def test_shell_and_forward_through_one_replica_reach_an_agent_on_another(pg_url, tmp_path):
    """The machine is connected to A; the master asks B. A delivers the request (a
    numbered message) and the machine dials B back (pinned certificate: replicas share
    it); B carries the stream."""
    import http.server
    import threading
    import urllib.request

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    try:
        with lab(tmp_path, pg_url, 2) as ((a, _b), (via_a, via_b), agent):
            connected_to = via_a.group("lab")["machines"][0]
            assert connected_to["state"] == "ready"
            with via_b.shell("lab", "m", argv=["sh", "-c", "echo across; exit 5"]) as s:
                s.expect("across")
                assert s.wait(60) == 5
            with via_b.forward("lab", "m", site.server_address[1]) as port:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=60) as r:
                    assert r.status == 200

            # B carried them: its audit has them, with bytes.
            def carried() -> set[str]:
                return {x["kind"] for x in via_b.sessions("lab") if x["bytes_from_machine"] > 0}

            assert _wait(lambda: carried() == {"shell", "forward"})
            # And the direct way still works on A.
            with via_a.shell("lab", "m", argv=["true"]) as s:
                assert s.wait(60) == 0
            assert "Traceback" not in a.log_path.read_text()
            del agent
    finally:
        site.shutdown()
        site.server_close()


def test_a_recording_is_served_by_any_replica_and_outlives_the_one_that_carried_it(
    pg_url, tmp_path
):
    """A carries a shell session whose output is large (many chunks) and not UTF-8; B
    serves its recording byte for byte, to its owner only, and still does once A is
    killed with kill -9."""

    from cloudremotecontrol.errors import NotFound

    with lab(tmp_path, pg_url, 2) as ((a, b), (via_a, via_b), _agent):
        script = "head -c 400000 /dev/urandom; printf '\\377 end'; exit 3"
        with via_a.shell("lab", "m", argv=["sh", "-c", script]) as s:
            received = b""
            while chunk := s.recv(60):
                received += chunk
            assert s.exit_code == 3
        assert len(received) > 400000 and received.endswith(b"\xff end")
        sid = _wait(lambda: [x for x in via_b.sessions("lab") if x["kind"] == "shell"])[-1]
        assert sid["recorded"] is True and sid["bytes_from_machine"] == len(received)
        cast = via_b.recording(sid["stream"])
        from cloudremotecontrol.server.recorder import CHUNK, replay_bytes

        assert len(cast) > 4 * CHUNK  # written as several chunks, read back in order
        assert replay_bytes(cast) == received
        bob = Client(b.url, b.add_user("bob"), b.fingerprint)
        try:
            with pytest.raises(NotFound, match="no session"):
                bob.recording(sid["stream"])
        finally:
            bob.close()
        a.kill()
        assert via_b.recording(sid["stream"]) == cast
        assert "Traceback" not in b.log_path.read_text()


def test_a_message_from_a_machine_whose_group_another_replica_deleted_is_told_why(pg_url, tmp_path):
    """The agent speaks before the replica holding its connection has looked (its touch
    is every 30 s): the answer to its message says the group was deleted, and to remove
    the service where the deletion asked for that, as the deleting replica would."""
    import asyncio

    from wire_helpers import (
        agent_envelope,
        close_code,
        enroll,
        msg_frame,
        pinned_http,
        recv_json,
        wire_agent,
    )

    a, b = replicas(tmp_path, pg_url, 2)
    try:
        token = a.add_user("alice")
        with (
            Client(a.url, token, a.fingerprint) as via_a,
            Client(b.url, token, b.fingerprint) as via_b,
        ):
            out = via_a.create_group("wire", ["w"], settings={"uninstall_on_delete": True})
            key = out["machines"][0]["key"]
            with pinned_http(a) as http:
                cred = enroll(http, key)

            async def speak_after_delete() -> tuple[dict, int]:
                async with wire_agent(a, cred, "wire", "w") as w:
                    via_b.delete_group("wire")
                    env = agent_envelope("wire", "w", "user.hello", {})
                    await w.ws.send(msg_frame(w.seq + 1, env))
                    return await recv_json(w.ws), await close_code(w.ws)

            frame, code = asyncio.run(speak_after_delete())
            assert frame["type"] == "revoked", frame
            assert frame["reason"] == "group 'wire' deleted" and frame["uninstall"] is True, frame
            assert code == 4403
    finally:
        for s in (a, b):
            s.stop()


def _chunks_in(database: str, stream: str) -> int:
    import psycopg

    with psycopg.connect(database, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT COUNT(*) FROM recording_chunks WHERE stream = %s", (stream,)
        ).fetchone()
    return int(row[0]) if row else 0


def _shell_on(client: Client, database: str, marker: str):  # type: ignore[no-untyped-def]
    """A shell session that prints ``marker`` and waits (``read``), once its recording
    has a chunk in the database."""
    shell = client.shell("lab", "m", argv=["sh", "-c", f"echo {marker}; read x; echo got-$x"])
    shell.expect(marker, 60)
    _wait(lambda: _chunks_in(database, shell.id) > 0, 60)
    return shell


@pytest.mark.timeout(600)  # a lease of a minute to expire, on a busy machine
def test_a_session_cut_by_a_killed_replica_is_listed_as_cut_through_another(pg_url, tmp_path):
    """A carries a shell session (the machine is connected to B and dials A back);
    A is killed with kill -9: once A's lease expired (a minute), B lists the session
    as cut, with its recording, once, also after A starts again."""
    with lab(tmp_path, pg_url, 2) as ((b, a), (via_b, via_a), _agent):
        shell = _shell_on(via_a, pg_url, "cut-me")
        cut = shell.id
        a.kill()
        shell.close()

        def listed() -> dict[str, dict]:
            return {r["stream"]: r for r in via_b.sessions("lab") if r["stream"] == cut}

        row = _wait(listed, 300)[cut]
        assert row["cut"] is True and row["recorded"] is True, row
        assert row["kind"] == "shell" and row["machine"] == "m" and row["by"] == "alice", row
        assert "exit_code" not in row and "server stopped" in row["error"], row
        assert "cut-me" in via_b.recording(cut)
        a.start()  # its start-up sweep finds nothing more to cut
        assert [r["stream"] for r in via_a.sessions("lab")].count(cut) == 1
        assert "Traceback" not in b.log_path.read_text()


@pytest.mark.timeout(600)
def test_a_session_of_a_live_replica_is_never_cut_while_another_restarts(pg_url, tmp_path):
    """B carries a live session while A is killed, its own session cut, and A starts
    again: B's session is not listed until it ends, then once, with its exit code."""
    with lab(tmp_path, pg_url, 2) as ((b, a), (via_b, via_a), _agent):
        live = _shell_on(via_b, pg_url, "live")
        dead = _shell_on(via_a, pg_url, "dead")
        a.kill()
        dead.close()
        # A's lease expired and a sweep ran: its session is listed as cut ...
        _wait(lambda: any(r["stream"] == dead.id for r in via_b.sessions("lab")), 300)
        a.start()  # ... and A's start-up sweep ran too
        ended = {r["stream"] for r in via_a.sessions("lab")}
        assert live.id not in ended, ended
        live.send(b"on\n")
        live.expect("got-on", 60)
        assert live.wait(60) == 0
        rows = [r for r in via_a.sessions("lab") if r["stream"] == live.id]
        assert len(rows) == 1 and rows[0]["exit_code"] == 0, rows
        assert not rows[0].get("cut"), rows
        assert "Traceback" not in b.log_path.read_text()


def test_a_push_moves_to_the_next_replica_when_its_own_is_gone(pg_url, tmp_path):
    """A long-lived SDK client whose replica died: its push (whose first request asks
    whether the server has the content) goes to the next URL, as every other call does;
    the async client's too."""
    import asyncio

    from cloudremotecontrol.master.aclient import AsyncClient

    a, b = replicas(tmp_path, pg_url, 2)
    agent = None
    try:
        token = a.add_user("alice")
        urls = f"{a.url},{b.url}"
        with Client(urls, token, a.fingerprint) as crc:
            out = crc.create_group("lab", ["m"])
            agent = AgentProcess(
                tmp_path / "m", b.url, out["machines"][0]["key"], b.fingerprint
            ).start()
            _wait(lambda: crc.group("lab")["machines"][0]["state"] == "ready")
            assert crc.url == a.url
            files = []
            for i in range(2):
                src = tmp_path / f"f{i}.txt"
                src.write_text(f"content {i}\n")
                dest = tmp_path / "on-m" / f"f{i}.txt"
                dest.parent.mkdir(exist_ok=True)
                files.append((str(src), dest))

            async def async_push() -> dict:
                async with AsyncClient(urls, token, a.fingerprint) as acrc:
                    assert (await acrc.whoami())["user"] == "alice"
                    assert acrc.url == a.url
                    a.kill()
                    return await acrc.push("lab", "m", files[0][0], str(files[0][1]))

            jobs = [asyncio.run(async_push())]
            jobs.append(crc.push("lab", "m", files[1][0], str(files[1][1])))  # still on A
            assert crc.url == b.url
            for i, job in enumerate(jobs):
                events = list(crc.follow_job(job["job_id"], ["m"]))
                assert events[-1]["data"]["status"] == "succeeded", events
                assert files[i][1].read_text() == f"content {i}\n"
    finally:
        if agent is not None:
            agent.stop()
        for s in (a, b):
            s.stop()


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_a_file_transfer_cut_by_a_replica_kill_goes_on_through_the_next(
    pg_url, tmp_path, direction
):
    """An agent given both replicas' URLs moves to the next when its own is killed; a
    push it was downloading resumes there (Range), a pull it was uploading is sent there
    again, and the job succeeds: it used to fail, every retry going to the dead URL."""
    import glob
    import hashlib
    import os

    a, b = replicas(tmp_path, pg_url, 2)
    agent = None
    size = 256 << 20
    try:
        token = a.add_user("alice")
        with Client(b.url, token, b.fingerprint, timeout=600) as crc:
            out = crc.create_group("lab", ["m"])
            agent = AgentProcess(
                tmp_path / "m", f"{a.url},{b.url}", out["machines"][0]["key"], a.fingerprint
            ).start()
            _wait(lambda: crc.group("lab")["machines"][0]["state"] == "ready", 60)
            assert "connected to " + a.url in agent.log()
            src = tmp_path / "payload.bin"
            with open(src, "wb") as f:
                for _ in range(size >> 20):
                    f.write(os.urandom(1 << 20))
            sha = hashlib.sha256(src.read_bytes()).hexdigest()
            on_m = tmp_path / "on-m"
            on_m.mkdir()
            dest = on_m / "payload.bin"
            if direction == "push":
                job = crc.push("lab", "m", str(src), str(dest))

                def cut() -> bool:  # the agent's partial file is growing, from A
                    parts = glob.glob(str(on_m / ".crc-*.part"))
                    return bool(parts) and 0 < os.path.getsize(parts[0]) < size
            else:
                os.link(src, dest)
                job = crc.start_pull("lab", "m", str(dest))

                def cut() -> bool:  # the upload is growing at A
                    return any(
                        p.stat().st_size > 0 for p in (a.data_dir / "blobs" / "tmp").glob("*")
                    )

            _wait(cut, 60)
            a.kill()
            events = list(crc.follow_job(job["job_id"], ["m"]))
            assert events[-1]["data"]["status"] == "succeeded", events[-1]
            if direction == "push":
                assert hashlib.sha256(dest.read_bytes()).hexdigest() == sha
            else:
                back = tmp_path / "back.bin"
                assert crc.download_pulled(job["job_id"], str(back))["sha256"] == sha
            assert "connected to " + b.url in agent.log()
    finally:
        if agent is not None:
            agent.stop()
        for s in (a, b):
            s.stop()
