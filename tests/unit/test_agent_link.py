"""An agent connection's writer (``hub.AgentLink``): acks sent from the reading task
while the socket is free, everything else by the writer task; nothing lost or reordered
when both happen at once."""

from __future__ import annotations

import asyncio

from cloudremotecontrol.errors import Unavailable
from cloudremotecontrol.server.hub import MAX_QUEUED_FRAMES, AgentLink


class Socket:
    """Records what is sent; ``gate`` (when cleared) holds a send half-way, as a socket
    that is not writable does."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.concurrent = 0
        self.most_concurrent = 0

    async def send(self, frame: str) -> None:
        self.concurrent += 1
        self.most_concurrent = max(self.most_concurrent, self.concurrent)
        try:
            await self.gate.wait()
            self.sent.append(frame)
        finally:
            self.concurrent -= 1

    async def close(self, code: int, reason: str) -> None:
        pass


async def _until(check: object, what: str) -> None:
    for _ in range(1000):
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


def _run(coro: object) -> None:
    asyncio.run(asyncio.wait_for(coro, 10))  # type: ignore[arg-type]


def test_frames_offered_during_a_direct_ack_are_sent() -> None:
    async def main() -> None:
        sock = Socket()
        outbox: list[tuple[int, str]] = [(1, "m1")]

        async def reload(machine_id: str, after: int) -> list[tuple[int, str]]:
            return [row for row in outbox if row[0] > after]

        link = AgentLink("m", sock.send, sock.close, reload, sent_upto=0)
        writer = asyncio.create_task(link.run_writer())
        try:
            await _until(lambda: sock.sent == ["m1"], "replay")
            sock.gate.clear()  # the next send waits for the socket
            direct = asyncio.create_task(link.send_control_now("ack1"))
            await _until(lambda: sock.concurrent == 1, "the ack is being sent")
            link.offer(2, "m2")  # the writer is woken while the ack goes
            link.offer(4, "m4")  # out of order: a reload is needed
            outbox.extend([(2, "m2"), (3, "m3"), (4, "m4")])
            await link.send_control_now("ack2")  # the socket is busy: queued
            for _ in range(20):
                await asyncio.sleep(0)
            assert sock.sent == ["m1"]
            sock.gate.set()
            await direct
            await _until(lambda: len(sock.sent) == 6, "everything sent")
            assert sock.sent == ["m1", "ack1", "m2", "ack2", "m3", "m4"]
            assert sock.most_concurrent == 1  # one send at a time on the socket
            await link.send_control_now("ack3")  # idle again: sent at once
            assert sock.sent[-1] == "ack3"
        finally:
            link.closed = True
            writer.cancel()

    _run(main())


def test_an_ack_waits_for_the_replay() -> None:
    async def main() -> None:
        sock = Socket()
        started, release = asyncio.Event(), asyncio.Event()

        async def reload(machine_id: str, after: int) -> list[tuple[int, str]]:
            started.set()
            await release.wait()
            return [(1, "m1")]

        link = AgentLink("m", sock.send, sock.close, reload, sent_upto=0)
        writer = asyncio.create_task(link.run_writer())
        try:
            await started.wait()
            await link.send_control_now("ack1")
            assert sock.sent == []
            release.set()
            await _until(lambda: len(sock.sent) == 2, "replay and ack sent")
            assert sorted(sock.sent) == ["ack1", "m1"]  # acks are outside the numbering
        finally:
            link.closed = True
            writer.cancel()

    _run(main())


def test_an_outbox_the_database_cannot_read_closes_the_connection() -> None:
    """The replay's read fails (database down): the link closes the connection for the
    agent to come back later, instead of its writer dying while the connection stays up
    with nothing ever sent on it again."""

    async def main() -> None:
        sock = Socket()
        closed: list[tuple[int, str]] = []

        async def close(code: int, reason: str) -> None:
            closed.append((code, reason))

        async def reload(machine_id: str, after: int) -> list[tuple[int, str]]:
            raise Unavailable("the server's database is unavailable; try again later")

        link = AgentLink("m", sock.send, close, reload, sent_upto=0)
        await asyncio.wait_for(link.run_writer(), 5)  # returns: it does not raise
        assert link.closed
        assert closed == [(1013, "the server's database is unavailable; try again later")]
        assert sock.sent == []

    _run(main())


def test_an_agent_that_does_not_read_is_read_no_faster_than_it_reads() -> None:
    """Each bad frame an agent sends is answered with an error frame. An agent that
    never reads fills the socket; the frames queued behind it are bounded: the reader
    (here the loop sending them) waits until the writer has sent what is queued."""

    async def main() -> None:
        sock = Socket()

        async def reload(machine_id: str, after: int) -> list[tuple[int, str]]:
            return []

        link = AgentLink("m", sock.send, sock.close, reload, sent_upto=0)
        writer = asyncio.create_task(link.run_writer())
        try:
            await _until(lambda: not link._need_reload, "the replay")
            sock.gate.clear()  # the agent stops reading: the socket is full
            link.offer(1, "m1")  # the writer is stuck sending it
            await _until(lambda: sock.concurrent == 1, "the writer to be sending")
            answered = 0

            async def flood() -> None:
                nonlocal answered
                for n in range(MAX_QUEUED_FRAMES * 4):
                    await link.send_control_now(f"error{n}", bounded=True)
                    answered += 1

            reader = asyncio.create_task(flood())
            await _until(lambda: answered == MAX_QUEUED_FRAMES, "the queue to fill")
            for _ in range(50):
                await asyncio.sleep(0)
            assert answered == MAX_QUEUED_FRAMES  # the next one waits, queued
            assert len(link._frames) == MAX_QUEUED_FRAMES + 1
            # An ack never waits (an honest agent's reader may be waiting to send one).
            await asyncio.wait_for(link.send_control_now("ack"), 1)
            sock.gate.set()  # it reads again: so is it
            await asyncio.wait_for(reader, 5)
            await _until(lambda: len(sock.sent) == MAX_QUEUED_FRAMES * 4 + 2, "all sent")
            errors = [f"error{n}" for n in range(MAX_QUEUED_FRAMES * 4)]
            cut = MAX_QUEUED_FRAMES + 1
            assert sock.sent == ["m1", *errors[:cut], "ack", *errors[cut:]]
        finally:
            link.closed = True
            writer.cancel()

    _run(main())


def test_a_reader_waiting_for_the_writer_goes_on_when_the_connection_ends() -> None:
    async def main() -> None:
        sock = Socket()

        async def reload(machine_id: str, after: int) -> list[tuple[int, str]]:
            return []

        link = AgentLink("m", sock.send, sock.close, reload, sent_upto=0)
        writer = asyncio.create_task(link.run_writer())
        await _until(lambda: not link._need_reload, "the replay")
        sock.gate.clear()
        link.offer(1, "m1")
        await _until(lambda: sock.concurrent == 1, "the writer to be sending")
        for n in range(MAX_QUEUED_FRAMES):
            await link.send_control_now(f"error{n}", bounded=True)
        waiting = asyncio.create_task(link.send_control_now("one too many", bounded=True))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not waiting.done()
        writer.cancel()  # the connection ends (the endpoint cancels its writer)
        await asyncio.wait_for(waiting, 5)
        assert link.closed

    _run(main())
