"""An agent connection's writer (``hub.AgentLink``): acks sent from the reading task
while the socket is free, everything else by the writer task; nothing lost or reordered
when both happen at once."""

from __future__ import annotations

import asyncio

from cloudremotecontrol.errors import Unavailable
from cloudremotecontrol.server.hub import AgentLink


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
