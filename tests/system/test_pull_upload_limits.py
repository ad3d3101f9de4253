"""A pull takes one upload from its one machine: a hostile machine cannot fill the
server's disk through one open pull, and a pull names exactly one machine (not `all`,
a list or a selector). SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from wire_helpers import (
    assert_error,
    assert_no_traceback_in_server_log,
    bearer,
    enroll,
    pinned_http,
    wire_agent,
)

from cloudremotecontrol.master.localrun import ServerProcess
from conftest import Env


@pytest.fixture
def http_of() -> Iterator[Callable[[ServerProcess], httpx.Client]]:
    """``http_of(server)``: a pinned HTTP client, closed after the test."""
    made: list[httpx.Client] = []

    def make(server: ServerProcess) -> httpx.Client:
        made.append(pinned_http(server))
        return made[-1]

    yield make
    for c in made:
        c.close()


def _on_disk(env: Env, sha: str) -> bool:
    return (env.server.data_dir / "blobs" / sha[:2] / sha).is_file()


def _blob_files(env: Env) -> list[Path]:
    root = env.server.data_dir / "blobs"
    return [p for p in root.rglob("*") if p.is_file() and p.parent.name != "tmp"]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_pull_takes_one_upload_and_the_same_one_again(
    db_env: Env, tmp_path: Path, http_of: Any
) -> None:
    env = db_env
    key = env.client.create_group("lab", ["a"])["machines"][0]["key"]
    http = http_of(env.server)
    cred = enroll(http, key)
    first, other = b"the file\n" * 1000, b"something else\n" * 5000
    user = {"Authorization": bearer(env.token)}

    async def main() -> None:
        async with wire_agent(env.server, cred, "lab", "a") as a:
            job = env.client.start_pull("lab", "a", "/etc/hostname")["job_id"]
            msg = await a.next_msg()
            assert msg["body"]["job_id"] == job
            await a.send_msg("job.started", {"job_id": job})
            h = {"Authorization": bearer(cred)}
            url = f"/v1/agent/uploads/{job}"

            def put(body: bytes, sha: str | None) -> Any:
                headers = {**h, "X-Content-SHA256": sha} if sha else h
                return http.put(url, content=body, headers=headers)

            r = await asyncio.to_thread(put, first, _sha(first))
            assert r.status_code == 200, r.text
            assert r.json() == {"sha256": _sha(first), "size": len(first)}
            # The agent sending it again (the answer was lost): the same answer.
            r = await asyncio.to_thread(put, first, _sha(first))
            assert r.status_code == 200, r.text
            assert r.json() == {"sha256": _sha(first), "size": len(first)}
            # Anything else, many times over: refused, and nothing of it kept.
            for _ in range(5):
                r = await asyncio.to_thread(put, other, _sha(other))
                assert_error(r, 409, "already_uploaded", "one upload")
                r = await asyncio.to_thread(put, other, None)
                assert_error(r, 409, "already_uploaded", "one upload")
            # Even without the header, the same content is refused (it might differ).
            r = await asyncio.to_thread(put, first, None)
            assert_error(r, 409, "already_uploaded")
            await a.send_msg("job.result", {"job_id": job, "status": "succeeded", "exit_code": 0})
            got = tmp_path / "got.bin"
            await asyncio.to_thread(env.client.download_pulled, job, str(got))
            assert got.read_bytes() == first
            # After the job: no upload at all.
            r = await asyncio.to_thread(put, first, _sha(first))
            assert_error(r, 403, "forbidden")

    asyncio.run(main())
    assert _on_disk(env, _sha(first))
    assert not _on_disk(env, _sha(other))
    assert [p.name for p in _blob_files(env)] == [_sha(first)]
    # The refused content is not the user's (not charged, not downloadable).
    assert http.head(f"/v1/blobs/{_sha(other)}", headers=user).status_code == 404
    assert http.head(f"/v1/blobs/{_sha(first)}", headers=user).status_code == 200
    assert_no_traceback_in_server_log(env.server)


def _tmp_bytes(env: Env) -> int:
    """Bytes of uploads being received (DATA_DIR/blobs/tmp)."""
    tmp = env.server.data_dir / "blobs" / "tmp"
    return sum(p.stat().st_size for p in tmp.iterdir() if p.is_file()) if tmp.is_dir() else 0


def test_a_second_upload_while_one_is_under_way_is_refused_before_its_body(
    db_env: Env, http_of: Any
) -> None:
    """Until a pull's file is recorded, every upload passed the check: many at once each
    stored a whole body (the pull's file many times over on disk). One at a time: the
    others are refused at once, unread; the first one is kept, and the agent sending
    it again afterwards (an answer lost) is answered the same."""
    env = db_env
    key = env.client.create_group("lab", ["a"])["machines"][0]["key"]
    http = http_of(env.server)
    cred = enroll(http, key)
    slow_body = b"s" * (3 << 20)
    go_on = threading.Event()
    started = threading.Event()

    def slow_chunks() -> Iterator[bytes]:
        yield slow_body[: 1 << 20]
        started.set()
        go_on.wait(60)
        yield slow_body[1 << 20 :]

    async def main() -> None:
        async with wire_agent(env.server, cred, "lab", "a") as a:
            job = env.client.start_pull("lab", "a", "/etc/hostname")["job_id"]
            await a.next_msg()
            await a.send_msg("job.started", {"job_id": job})
            h = {"Authorization": bearer(cred)}
            url = f"/v1/agent/uploads/{job}"
            slow_http = http_of(env.server)
            slow = asyncio.ensure_future(
                asyncio.to_thread(
                    slow_http.put,
                    url,
                    content=slow_chunks(),
                    headers={
                        **h,
                        "X-Content-SHA256": _sha(slow_body),
                        "Content-Length": str(len(slow_body)),
                    },
                )
            )
            try:
                assert await asyncio.to_thread(started.wait, 30)
                # The first upload's body is being stored (its first MiB arrived).
                for _ in range(300):
                    if _tmp_bytes(env) >= 1 << 20:
                        break
                    await asyncio.sleep(0.1)
                assert _tmp_bytes(env) >= 1 << 20
                # Eight more, each declaring 256 MiB and sending none of it: each is
                # answered at once (an upload waiting for its body would not be).
                for _ in range(8):
                    answer = await asyncio.to_thread(
                        _declared_only, env.server, url, cred, 256 << 20
                    )
                    assert answer.startswith(b"HTTP/1.1 409"), answer[:300]
                    assert b"upload_in_progress" in answer, answer[:600]
                    assert b"one upload at a time" in answer, answer[:600]
                # The same content, declared: refused too while the first is under way.
                answer = await asyncio.to_thread(
                    _declared_only, env.server, url, cred, len(slow_body)
                )
                assert answer.startswith(b"HTTP/1.1 409"), answer[:300]
                assert _tmp_bytes(env) < 4 << 20  # one upload's bytes, no more
            finally:
                go_on.set()
            done = await slow
            assert done.status_code == 200, done.text
            assert done.json() == {"sha256": _sha(slow_body), "size": len(slow_body)}
            # Sent again once it ended (the answer lost): the same answer.
            again = await asyncio.to_thread(
                http.put, url, content=slow_body, headers={**h, "X-Content-SHA256": _sha(slow_body)}
            )
            assert again.status_code == 200, again.text
            assert again.json() == done.json()
            other = b"other" * 1000
            r = await asyncio.to_thread(
                http.put, url, content=other, headers={**h, "X-Content-SHA256": _sha(other)}
            )
            assert_error(r, 409, "already_uploaded")

    asyncio.run(main())
    assert _on_disk(env, _sha(slow_body))
    assert [p.name for p in _blob_files(env)] == [_sha(slow_body)]
    assert _tmp_bytes(env) == 0
    assert_no_traceback_in_server_log(env.server)


def _cut_off(server: ServerProcess, path: str, token: str, body: bytes, length: int) -> None:
    """Send a PUT declaring ``length`` bytes, only ``body`` of them, then hang up."""
    import socket
    import ssl

    host, port = server.url.removeprefix("https://").rsplit(":", 1)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, int(port)), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(
                (
                    f"PUT {path} HTTP/1.1\r\nHost: {host}\r\n"
                    f"Authorization: {bearer(token)}\r\n"
                    f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n"
                ).encode()
                + body
            )


def test_an_upload_cut_off_frees_the_pull_for_the_next(db_env: Env, http_of: Any) -> None:
    env = db_env
    key = env.client.create_group("lab", ["a"])["machines"][0]["key"]
    http = http_of(env.server)
    cred = enroll(http, key)
    data = b"d" * (2 << 20)

    async def main() -> None:
        async with wire_agent(env.server, cred, "lab", "a") as a:
            job = env.client.start_pull("lab", "a", "/etc/hostname")["job_id"]
            await a.next_msg()
            await a.send_msg("job.started", {"job_id": job})
            url = f"/v1/agent/uploads/{job}"
            h = {"Authorization": bearer(cred), "X-Content-SHA256": _sha(data)}
            for _ in range(3):
                await asyncio.to_thread(_cut_off, env.server, url, cred, data[: 1 << 20], len(data))
            # The server notices each hang-up: then the pull takes an upload again.
            r = None
            for _ in range(300):
                try:
                    r = await asyncio.to_thread(http.put, url, content=data, headers=h)
                except httpx.TransportError:  # refused before the body was all sent
                    r = None
                if r is not None and r.status_code != 409:
                    break
                if r is not None:
                    assert_error(r, 409, "upload_in_progress")
                await asyncio.sleep(0.1)
            assert r is not None and r.status_code == 200, r.text if r else r
            assert r.json() == {"sha256": _sha(data), "size": len(data)}

    asyncio.run(main())
    assert [p.name for p in _blob_files(env)] == [_sha(data)]
    assert_no_traceback_in_server_log(env.server)


def test_a_pull_names_one_machine(env: Env, crc: Any, tmp_path: Path, http_of: Any) -> None:
    env.group_with_agents("lab", ["a", "b"])
    src = tmp_path / "src.txt"
    src.write_text("content\n")
    for target, rc, part in (
        ("all", 4, "no machine 'all' in group 'lab'"),
        ("a,b", 2, "a pull copies from one machine"),
        ("role=db", 2, "a pull copies from one machine"),
        ("*", 2, "a pull copies from one machine"),
        ("zz", 4, "no machine 'zz' in group 'lab'"),
    ):
        r = crc("pull", "lab", "--from", target, str(src), str(tmp_path / "out.txt"))
        assert r.returncode == rc, (target, r.returncode, r.stderr)
        assert part in r.stderr, (target, r.stderr)
        assert "Traceback" not in r.stderr
        assert not (tmp_path / "out.txt").exists()
    http = http_of(env.server)
    h = {"Authorization": bearer(env.token)}
    r = http.post("/v1/groups/lab/pulls", json={"machine": "all", "path": str(src)}, headers=h)
    assert_error(r, 404, "not_found", "no machine 'all'")
    r = http.post("/v1/groups/lab/pulls", json={"machine": "a,b", "path": str(src)}, headers=h)
    assert_error(r, 400, "invalid_input", "one machine")
    assert env.client.list_jobs("lab") == []  # none was started
    # One machine, by name, still works.
    r = crc("pull", "lab", "--from", "b", str(src), str(tmp_path / "out.txt"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.txt").read_text() == "content\n"
    assert_no_traceback_in_server_log(env.server)


def _declared_only(server: ServerProcess, path: str, token: str, length: int) -> bytes:
    """Send a PUT's headers declaring a body of ``length`` bytes, none of the body, and
    return what the server answers (the test's TLS client pins nothing: loopback)."""
    import socket
    import ssl

    host, port = server.url.removeprefix("https://").rsplit(":", 1)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, int(port)), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(
                (
                    f"PUT {path} HTTP/1.1\r\nHost: {host}\r\n"
                    f"Authorization: {bearer(token)}\r\n"
                    f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n"
                ).encode()
            )
            answer = b""
            while not _whole(answer):
                try:
                    chunk = tls.recv(65536)
                except TimeoutError:
                    pytest.fail(f"no answer to a {length}-byte upload's headers: {answer!r}")
                if not chunk:
                    break
                answer += chunk
            return answer


def _whole(answer: bytes) -> bool:
    """The response's head and its whole body (by its Content-Length) are in."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return True


def test_an_upload_declared_over_the_file_limit_is_refused_before_its_body(
    env: Env, http_of: Any
) -> None:
    key = env.client.create_group("lab", ["a"])["machines"][0]["key"]
    cred = enroll(http_of(env.server), key)
    five_gib = 5 << 30

    async def main() -> None:
        async with wire_agent(env.server, cred, "lab", "a") as a:
            job = env.client.start_pull("lab", "a", "/etc/hostname")["job_id"]
            assert (await a.next_msg())["body"]["job_id"] == job
            await a.send_msg("job.started", {"job_id": job})
            answer = await asyncio.to_thread(
                _declared_only, env.server, f"/v1/agent/uploads/{job}", cred, five_gib
            )
            assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
            assert b"4 GiB" in answer, answer[:600]

    asyncio.run(main())
    # A master's push is bounded the same way.
    answer = _declared_only(env.server, f"/v1/blobs/{'a' * 64}", env.token, five_gib)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert_no_traceback_in_server_log(env.server)


def test_a_pull_of_a_file_over_the_limit_fails_on_the_machine(
    env: Env, crc: Any, tmp_path: Path
) -> None:
    env.group_with_agents("lab", ["a"])
    big = tmp_path / "big.img"
    with big.open("wb") as f:
        f.truncate((4 << 30) + 1)  # sparse: no disk used
    r = crc("pull", "lab", "--from", "a", str(big), str(tmp_path / "out.img"), timeout=120)
    assert r.returncode != 0, r.stdout
    assert "is larger than 4 GiB, the most one file pulled can be" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out.img").exists()
    assert_no_traceback_in_server_log(env.server)
