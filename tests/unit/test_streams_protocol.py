"""protocol/streams.py: forward specifications, terminal sizes, the control catalogue,
and the recording format's byte-exact replay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloudremotecontrol.errors import InvalidInput, TooLarge
from cloudremotecontrol.protocol.streams import (
    MAX_CONTROL_BYTES,
    ForwardSpec,
    StreamEof,
    StreamError,
    StreamExit,
    StreamOpen,
    StreamReady,
    StreamRequest,
    StreamResize,
    check_replica_url,
    check_terminal_size,
    new_stream_id,
    parse_forward_spec,
    read_control,
    write_control,
)
from cloudremotecontrol.protocol.wire import Direction


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("8080:80", ForwardSpec("127.0.0.1", 8080, "127.0.0.1", 80)),
        ("0:5432", ForwardSpec("127.0.0.1", 0, "127.0.0.1", 5432)),
        ("5433:db.lab:5432", ForwardSpec("127.0.0.1", 5433, "db.lab", 5432)),
        ("0.0.0.0:8080:10.1.0.5:80", ForwardSpec("0.0.0.0", 8080, "10.1.0.5", 80)),
        ("[::1]:8080:[fd00::5]:80", ForwardSpec("::1", 8080, "fd00::5", 80)),
        ("localhost:9000:web:80", ForwardSpec("127.0.0.1", 9000, "web", 80)),
    ],
)
def test_forward_specs_in_every_accepted_form(spec, want):
    assert parse_forward_spec(spec) == want


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "80",
        "a:b",
        "1:2:3:4:5",
        "99999:80",
        "8080:0",
        "8080:70000",
        "8080:bad host:80",
        "8080:a\nb:80",
        "host:8080:web:80",
        "-1:80",
        "x" * 700,
        None,
        8080,
    ],
)
def test_bad_forward_specs_say_the_accepted_forms(spec):
    with pytest.raises(InvalidInput) as exc:
        parse_forward_spec(spec)
    assert exc.value.details.get("field") in ("forward", "host")


@pytest.mark.parametrize("size", [(0, 24), (80, 0), (100000, 24), (80, 100000), (-1, 5)])
def test_terminal_sizes_out_of_range_are_refused(size):
    with pytest.raises(InvalidInput, match="out of range"):
        check_terminal_size(*size)


def test_terminal_sizes_must_be_integers():
    for bad in ((80.0, 24), ("80", 24), (True, 24), (None, 24)):
        with pytest.raises(InvalidInput, match="integer"):
            check_terminal_size(*bad)
    assert check_terminal_size(1, 4096) == (1, 4096)


def test_control_messages_round_trip_and_keep_their_direction():
    for control, sender in (
        (StreamResize(cols=120, rows=40), Direction.TO_AGENT),
        (StreamReady(), Direction.TO_SERVER),
        (StreamExit(code=130), Direction.TO_SERVER),
        (StreamError(code="connect_failed", message="refused"), Direction.TO_SERVER),
    ):
        assert read_control(write_control(control), sender) == control
        other = Direction.TO_SERVER if sender is Direction.TO_AGENT else Direction.TO_AGENT
        with pytest.raises(InvalidInput, match="unexpected control message"):
            read_control(write_control(control), other)  # a machine cannot resize, ...
    # A forward's half-close goes either way; an agent says whether it takes it.
    for sender in (Direction.TO_AGENT, Direction.TO_SERVER):
        assert read_control('{"type":"stream.eof"}', sender) == StreamEof()
    ready = StreamReady(half_close=True)
    assert write_control(ready) == '{"type":"stream.ready","half_close":true}'
    assert read_control(write_control(ready), Direction.TO_SERVER) == ready
    assert read_control('{"type":"stream.ready"}', Direction.TO_SERVER).half_close is None
    with pytest.raises(InvalidInput, match="half_close"):
        read_control('{"type":"stream.ready","half_close":"yes"}', Direction.TO_SERVER)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"type": "stream.resize", "cols": 0, "rows": 24}',
        '{"type": "stream.resize", "cols": 80}',
        '{"type": "stream.exit", "code": "0"}',
        '{"type": "stream.open"}',
        '{"type": "stream.nope"}',
        '{"type": "stream.error", "code": "Bad Code!", "message": "x"}',
        "[" * 5000,
        '{"type": "stream.exit", "code": 1, "pad": "' + "x" * MAX_CONTROL_BYTES + '"}',
    ],
)
def test_hostile_control_messages_are_refused(text):
    sender = Direction.TO_AGENT if "resize" in text else Direction.TO_SERVER
    with pytest.raises(InvalidInput):
        read_control(text, sender)


def test_a_long_error_message_from_a_machine_is_cut_not_refused():
    body = {"type": "stream.error", "code": "x", "message": "é" * 1500}
    text = json.dumps(body, ensure_ascii=False)
    assert len(text.encode()) < MAX_CONTROL_BYTES
    control = read_control(text, Direction.TO_SERVER)
    assert isinstance(control, StreamError) and len(control.message.encode()) <= 1000


def test_a_command_is_bounded_in_all_not_only_per_item():
    sid = new_stream_id()
    big = ["x" * (100 << 10), "y" * (100 << 10)]
    with pytest.raises(TooLarge, match="the limit is"):
        StreamOpen.from_body({"stream": sid, "kind": "shell", "argv": big})
    assert StreamOpen.from_body({"stream": sid, "kind": "shell", "argv": big[:1]}).argv


def test_a_request_through_another_replica_names_a_plain_server_url():
    sid = new_stream_id()
    body = {"stream": sid, "kind": "forward", "host": "db", "port": 5432}
    req = StreamRequest.from_body({**body, "url": "https://10.0.0.5:8443"})
    assert req.to_open() == StreamOpen.from_body(body)
    for bad in ("ftp://x", "https://a/b", "https://a b", "https://x\n", "javascript:1", ""):
        with pytest.raises(InvalidInput):
            StreamRequest.from_body({**body, "url": bad})
    assert check_replica_url("https://[::1]:8443/") == "https://[::1]:8443"


def test_stream_ids_are_random_and_checked():
    ids = {new_stream_id() for _ in range(100)}
    assert len(ids) == 100
    with pytest.raises(InvalidInput, match="stream id"):
        StreamOpen.from_body({"stream": "st_../../etc", "kind": "shell"})


def test_recordings_replay_the_exact_bytes(tmp_path: Path):
    import asyncio

    asyncio.run(_record_and_replay(tmp_path))


async def _record_and_replay(tmp_path: Path) -> None:
    """In a running loop, as on the server (the recorder's timer is a task)."""
    from cloudremotecontrol.server.recorder import Recorder, replay_bytes

    chunks = [b"caf\xc3", b"\xa9 \xff\xfe\x1b[1mbold\x1b[0m\r\n", b"\xe2\x82", b"\xac end\x80"]
    written: list[tuple[int, bytes, int]] = []

    async def sink(n: int, data: bytes, size: int) -> None:
        written.append((n, data, size))

    header = {"version": 2, "width": 80, "height": 24}
    rec = Recorder(sink, header, record_input=False)
    for chunk in chunks:
        rec.output(chunk)
    rec.input(b"secret password\r")
    rec.resize(100, 30)
    await rec.close()
    assert [n for n, _, _ in written] == [0]  # small: one chunk, at the end
    cast = written[0][1].decode("ascii")
    assert written[0][2] == len(cast)
    header = json.loads(cast.splitlines()[0])
    assert header["version"] == 2 and (header["width"], header["height"]) == (80, 24)
    assert replay_bytes(cast) == b"".join(chunks)
    assert "secret" not in cast
    assert [json.loads(x)[1] for x in cast.splitlines()[1:]].count("r") == 1


def test_a_recording_is_written_in_chunks_as_it_goes_and_capped():
    import asyncio

    asyncio.run(_record_in_chunks())


async def _record_in_chunks() -> None:
    """Each chunk is written once full (what waits stays under a chunk), in order; the
    cap holds; a sink that fails keeps the text for the next try, then gives up."""
    import os

    from cloudremotecontrol.server import recorder
    from cloudremotecontrol.server.recorder import CHUNK, MAX_RECORDING_BYTES, Recorder

    written: list[tuple[int, bytes, int]] = []

    async def sink(n: int, data: bytes, size: int) -> None:
        written.append((n, data, size))

    rec = Recorder(sink, {"version": 2}, record_input=True)
    sent = b""
    for _ in range(2000):  # ~ 100 MiB of output, over the cap
        data = os.urandom(48 << 10)
        sent += data if len(sent) < (8 << 20) else b""
        rec.output(data)
        rec.input(b"\xff")
        await rec.flush_due()
        assert rec.pending < CHUNK + (1 << 20)  # bounded memory
    await rec.close()
    assert [n for n, _, _ in written] == list(range(len(written)))
    assert all(len(d) == CHUNK for _, d, _ in written[:-1])
    cast = b"".join(d for _, d, _ in written).decode("ascii")
    assert written[-1][2] == len(cast)
    assert MAX_RECORDING_BYTES < len(cast) < MAX_RECORDING_BYTES + (1 << 20)
    lines = cast.splitlines()
    assert all(json.loads(x) for x in lines)  # whole lines only: nothing cut at the cap
    from cloudremotecontrol.server.recorder import replay_bytes

    assert replay_bytes(cast)[: len(sent)] == sent
    assert replay_bytes(cast, "i") == b"\xff" * replay_bytes(cast, "i").count(b"\xff")

    failures = 0

    async def failing(n: int, data: bytes, size: int) -> None:
        nonlocal failures
        failures += 1
        raise OSError("database down")

    rec = Recorder(failing, {"version": 2}, record_input=False)
    for _ in range(3):
        rec.output(b"x" * CHUNK)
        await rec.flush_due()
    assert not rec.failed and failures == 3  # kept, tried again
    for _ in range(3):
        rec.output(b"x" * CHUNK)
        await rec.flush_due()
    assert rec.failed and rec.pending == 0  # given up, nothing held
    await rec.close()
    assert recorder.MAX_PENDING == 4 * CHUNK


def test_what_is_recorded_while_a_chunk_is_being_written_is_kept():
    import asyncio

    asyncio.run(_record_while_writing())


async def _record_while_writing() -> None:
    """The session goes on while a chunk is written (the timer's write, a slow
    database): nothing recorded meanwhile is lost, and chunks stay in order."""
    import asyncio
    import os

    from cloudremotecontrol.server.recorder import Recorder, replay_bytes

    written: list[tuple[int, bytes, int]] = []

    async def slow(n: int, data: bytes, size: int) -> None:
        await asyncio.sleep(0.001)
        written.append((n, data, size))

    rec = Recorder(slow, {"version": 2}, record_input=False)

    async def timer_like() -> None:
        for _ in range(100):
            await rec.flush()
            await asyncio.sleep(0)

    timer = asyncio.create_task(timer_like())
    sent = b""
    for _ in range(3000):
        data = os.urandom(300)
        sent += data
        rec.output(data)
        await rec.flush_due()
        await asyncio.sleep(0)
    await timer
    await rec.close()
    assert [n for n, _, _ in written] == list(range(len(written)))
    cast = b"".join(d for _, d, _ in written).decode("ascii")
    assert written[-1][2] == len(cast)
    assert replay_bytes(cast) == sent
