"""One machine cannot make the server store its messages faster than the server's
``--machine-bytes-per-second`` after a burst of ``--machine-burst-bytes``
(server/pacing.py): a machine blasting messages without waiting for acks has them
stored at that pace, every one of them in the end (nothing it sent is lost), while a
peer's messages are not held behind its backlog; a machine that reconnects for each
message is held to the same pace (the debt is the machine's, not the connection's), and
so is one sending stored messages again, or messages out of sequence that each end its
connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection
from wire_helpers import (
    agent_envelope,
    assert_no_traceback_in_server_log,
    close_code,
    enroll,
    msg_frame,
    pinned_http,
    recv_json,
    wire_agent,
)

from cloudremotecontrol.master.localrun import ServerProcess
from cloudremotecontrol.server.pacing import MIN_COST, stored_size
from conftest import Env

RATE, BURST = 4096, 8192  # bytes per second, bytes at once
SLOW_BURST = 16384  # bytes at once, then 1 byte per second: the least there is


@contextlib.contextmanager
def _paced_server(tmp_path: Path, rate: int, burst: int) -> Iterator[tuple[Env, dict[str, str]]]:
    """A server pacing machines at ``rate`` after ``burst``, a group lab of a and b,
    their credentials."""
    srv = ServerProcess(
        tmp_path / "srv",
        args=["--machine-bytes-per-second", str(rate), "--machine-burst-bytes", str(burst)],
    ).start()
    env = Env(srv, tmp_path)
    try:
        keys = {m["name"]: m["key"] for m in env.client.create_group("lab", ["a", "b"])["machines"]}
        with pinned_http(srv) as http:
            creds = {name: enroll(http, key) for name, key in keys.items()}
        yield env, creds
        assert f"machine_bytes_per_second is {rate}:" in srv.log_path.read_text()  # warned
        env.close()
        srv.stop()
        # A connection held by its debt does not hold the stop up, nor end in a
        # traceback (the graceful wait's cancellation).
        assert_no_traceback_in_server_log(srv)
    finally:
        env.close()
        srv.stop()


@pytest.fixture
def paced(tmp_path: Path) -> Iterator[tuple[Env, dict[str, str]]]:
    """Machines paced at RATE after BURST."""
    with _paced_server(tmp_path, RATE, BURST) as server:
        yield server


@pytest.fixture
def slow(tmp_path: Path) -> Iterator[tuple[Env, dict[str, str]]]:
    """Machines paced at 1 byte per second after SLOW_BURST: a frame that goes into
    debt holds the next one back for a second per byte of the debt (about an hour for a
    3 KiB message)."""
    with _paced_server(tmp_path, 1, SLOW_BURST) as server:
        yield server


def _stored(env: Env) -> int:
    return sum(1 for e in env.client.events("lab") if e.type == "message" and e.machine == "a")


def _allowed(elapsed: float, cost: int) -> int:
    """The most messages of ``cost`` bytes the pace lets be stored ``elapsed`` seconds
    after the first was sent: the burst, what the rate refilled, and the one that went
    into debt."""
    return int((BURST + RATE * elapsed) // cost) + 1


def _frame(seq: int, body: dict[str, str], kind: str = "user.fill", to: str = "master") -> str:
    return msg_frame(seq, agent_envelope("lab", "a", kind, body, to))


def test_a_machine_blasting_messages_has_them_stored_at_its_pace(
    paced: tuple[Env, dict[str, str]],
) -> None:
    env, creds = paced
    blast = 16  # messages of about 4 KiB each: 4 s at the rate once the burst is spent

    async def run() -> None:
        async with wire_agent(env.server, creds["a"], "lab", "a") as a:
            frames = [_frame(a.seq + 1 + n, {"fill": "x" * 4000}) for n in range(blast)]
            a.seq += blast
            cost = max(len(frames[0]), MIN_COST)
            start = time.monotonic()
            for text in frames:  # all sent at once: no wait for an ack
                await a.ws.send(text)
            async with wire_agent(env.server, creds["b"], "lab", "b") as b:
                # b's message is stored while most of a's still wait.
                assert [f["type"] for f in await b.send_msg("user.hi", {})] == ["ack"]
                assert _stored(env) < blast, "a's messages were stored at once"
            seen = []
            acked = 0
            deadline = time.monotonic() + 120  # a safety net: about 15 s at the rate
            while acked < blast:
                assert time.monotonic() < deadline, f"{acked}/{blast} acknowledged"
                frame = await recv_json(a.ws, timeout=60)
                if frame.get("type") == "ack":
                    acked = frame["seq"]
                stored = _stored(env)  # counted first, then the time: never too early
                elapsed = time.monotonic() - start
                seen.append(stored)
                assert stored <= _allowed(elapsed, cost), (
                    f"{stored} messages stored {elapsed:.1f} s after the blast began; "
                    f"the pace allows {_allowed(elapsed, cost)}"
                )
            assert _stored(env) == blast, seen  # every one of them, in the end

    asyncio.run(run())


def test_reconnecting_does_not_reset_a_machines_pace(paced: tuple[Env, dict[str, str]]) -> None:
    env, creds = paced
    rounds = 5  # messages of about 6 KiB, each on a connection of its own
    body = {"fill": "x" * 6000}
    cost = max(len(_frame(1, body)), MIN_COST)

    async def run() -> None:
        start = time.monotonic()
        for _ in range(rounds):
            async with wire_agent(env.server, creds["a"], "lab", "a") as a:
                assert [f["type"] for f in await a.send_msg("user.fill", body)] == ["ack"]
            stored = _stored(env)
            elapsed = time.monotonic() - start
            assert stored <= _allowed(elapsed, cost), (
                f"{stored} messages stored {elapsed:.1f} s after the first, one per "
                f"connection; the pace allows {_allowed(elapsed, cost)}"
            )
        assert _stored(env) == rounds

    asyncio.run(run())


async def _acks(ws: ClientConnection, want: int, seconds: float) -> list[int]:
    """The seqs of the acks the server sends within ``seconds``, up to ``want`` of them."""
    acks: list[int] = []
    deadline = time.monotonic() + seconds
    with contextlib.suppress(asyncio.TimeoutError):
        while len(acks) < want:
            frame = await recv_json(ws, timeout=max(deadline - time.monotonic(), 0.01))
            if frame.get("type") == "ack":
                acks.append(frame["seq"])
    return acks


def test_a_stored_message_sent_again_counts_whatever_its_type(
    slow: tuple[Env, dict[str, str]],
) -> None:
    """A machine sending a stored message's number again and again, as a job's report
    (a type that is not counted when stored), is read at the pace all the same."""
    env, creds = slow
    body = {"fill": "x" * 3000}
    again = 8  # about 26 KB sent again: past what is left of the 16 KiB burst

    async def run() -> None:
        async with wire_agent(env.server, creds["a"], "lab", "a") as a:
            assert (await a.send_msg("user.fill", body))[-1]["type"] == "ack"
            stored = a.seq
            for _ in range(again):
                await a.ws.send(_frame(stored, body, kind="job.output"))
            acks = await _acks(a.ws, again, 10)
            assert len(acks) < again, "every message sent again was read at once"
            # The pace holds: a new message waits behind the debt.
            await a.ws.send(_frame(stored + 1, body))
            assert await _acks(a.ws, 1, 3) == []
        assert _stored(env) == 1

    asyncio.run(run())


def test_messages_out_of_sequence_count_though_each_ends_its_connection(
    slow: tuple[Env, dict[str, str]],
) -> None:
    """A machine sending messages out of sequence, each ending its connection, is paced
    as any other: once they cost more than the burst, the next one is not read."""
    env, creds = slow
    body = {"fill": "x" * 3000}
    read = SLOW_BURST // max(stored_size(_frame(9, body)), MIN_COST) + 1  # the last in debt

    async def run() -> None:
        for _ in range(read):
            async with wire_agent(env.server, creds["a"], "lab", "a") as a:
                await a.ws.send(_frame(a.seq + 5, body))
                assert await close_code(a.ws) == 4400
        async with wire_agent(env.server, creds["a"], "lab", "a") as a:
            await a.ws.send(_frame(a.seq + 5, body))
            with pytest.raises(TimeoutError):  # not read: the pace holds it
                await close_code(a.ws, timeout=5)
        # On a new connection too: a message in sequence waits.
        async with wire_agent(env.server, creds["a"], "lab", "a") as a:
            await a.ws.send(_frame(a.seq + 1, body))
            assert await _acks(a.ws, 1, 3) == []
        assert _stored(env) == 0

    asyncio.run(run())


def test_acks_that_release_nothing_count(slow: tuple[Env, dict[str, str]]) -> None:
    """A machine sending the same ack again and again (each a write for nothing) is
    read at the pace: its next message waits behind the debt."""
    env, creds = slow
    again = 2 * SLOW_BURST // MIN_COST  # twice what the burst pays for

    async def run() -> None:
        async with wire_agent(env.server, creds["a"], "lab", "a") as a:
            for _ in range(again):
                await a.ws.send(json.dumps({"type": "ack", "seq": 0}))
            await a.ws.send(_frame(a.seq + 1, {"fill": "x"}))
            assert await _acks(a.ws, 1, 5) == [], "the acks were all read at once"
        assert _stored(env) == 0

    asyncio.run(run())


def test_a_message_to_peers_costs_each_copy_stored(slow: tuple[Env, dict[str, str]]) -> None:
    """A ``user.*`` message to a peer is stored twice (the master's event, the peer's
    outbox): it costs its size twice, so fewer are read before the pace holds."""
    env, creds = slow
    body = {"fill": "x" * 3000}
    sent = 6

    async def run() -> None:
        async with wire_agent(env.server, creds["a"], "lab", "a") as a:
            frames = [_frame(a.seq + 1 + n, body, to="b") for n in range(sent)]
            cost = 2 * max(stored_size(frames[0]), MIN_COST)
            for text in frames:
                await a.ws.send(text)
            acks = await _acks(a.ws, sent, 10)
            read = SLOW_BURST // cost + 1  # the last one read goes into debt
            assert read < sent  # at its size once, every one would have been read
            assert len(acks) == read, f"{len(acks)} read; each costs {cost}"
            stored = [e for e in env.client.events("lab") if e.type == "message.sent"]
            assert len(stored) == read

    asyncio.run(run())


def test_a_machine_that_goes_away_before_its_answer_pays_all_the_same(
    slow: tuple[Env, dict[str, str]],
) -> None:
    """A machine closing its connection right after each message (so that answering it
    fails) is paced as any other: once the server stored more than the burst pays for,
    its next message waits behind the debt."""
    env, creds = slow
    body = {"fill": "x" * 3000}
    cost = 2 * max(stored_size(_frame(1, body, to="b")), MIN_COST)  # each to b: twice
    enough = SLOW_BURST // cost + 1

    async def run() -> None:
        for _ in range(10 * enough):  # a message the socket closed before is not stored
            async with wire_agent(env.server, creds["a"], "lab", "a") as a:
                if a.seq >= enough:
                    break
                await a.ws.send(_frame(a.seq + 1, body, to="b"))
                a.ws.transport.abort()  # gone before the answer
        async with wire_agent(env.server, creds["a"], "lab", "a") as a:
            assert a.seq == enough, f"{a.seq} stored"
            await a.ws.send(_frame(a.seq + 1, body))
            assert await _acks(a.ws, 1, 3) == [], f"read at once after {enough} stored"

    asyncio.run(run())


def test_reports_of_a_job_that_ended_count(slow: tuple[Env, dict[str, str]]) -> None:
    """What a job reports is not counted while it changes the job; a machine sending
    new output for one of its jobs that has ended (each stores nothing, but is read,
    checked and numbered) is read at the pace: past the burst, the next waits."""
    env, creds = slow
    sent = 8  # about 26 KB: past the 16 KiB burst

    async def run() -> str:
        async with wire_agent(env.server, creds["a"], "lab", "a") as a:
            started = await asyncio.to_thread(env.client.start_job, "lab", "a", argv=["true"])
            job_id = started["job_id"]
            assert (await a.next_msg())["type"] == "job.run"
            ended = {"job_id": job_id, "status": "succeeded", "exit_code": 0}
            # While the job runs, its reports are free: 3 KB each, twice the burst.
            for _ in range(2 * SLOW_BURST // 3000):
                out = {"job_id": job_id, "stream": "stdout", "data": "y" * 3000}
                assert (await a.send_msg("job.output", out))[-1]["type"] == "ack"
            assert (await a.send_msg("job.result", ended))[-1]["type"] == "ack"
            chunk = {"job_id": job_id, "stream": "stdout", "data": "x" * 3000}
            frames = [_frame(a.seq + 1 + n, chunk, kind="job.output") for n in range(sent)]
            a.seq += sent
            for text in frames:
                await a.ws.send(text)
            acks = await _acks(a.ws, sent, 10)
            read = SLOW_BURST // max(stored_size(frames[0]), MIN_COST) + 1  # last in debt
            assert read < sent
            assert len(acks) == read, f"{len(acks)} of {sent} read at once"
            return job_id

    job_id = asyncio.run(run())
    output = [e for e in env.client.job_events(job_id, follow=False) if e.type == "job.output"]
    kept = "".join(str(e.data) for e in output)
    assert "y" * 3000 in kept  # what the job sent while it ran
    assert "x" * 3000 not in kept  # none of what came after
