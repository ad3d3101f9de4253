"""Several server URLs: agents and the CLI move on to the next when one is down."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
import threading
from collections.abc import Iterator

import pytest

from cloudremotecontrol.errors import Unavailable
from cloudremotecontrol.master.aclient import AsyncClient
from cloudremotecontrol.master.client import Client
from cloudremotecontrol.master.localrun import AgentProcess, free_port


def test_agent_and_cli_use_the_next_url_when_the_first_is_down(env, crc):
    dead = f"https://127.0.0.1:{free_port()}"
    urls = f"{dead},{env.server.url}"
    out = env.client.create_group("lab2", ["b"])
    # Enrollment and the connection both get past the dead first URL.
    b = AgentProcess(
        env.tmp / "agents" / "b", urls, out["machines"][0]["key"], env.server.fingerprint
    ).start()
    env.agents.append(b)
    env.wait_state("lab2", ["b"], "ready")
    r = crc(
        "run",
        "lab2",
        "--to",
        "b",
        "--json",
        "--",
        "echo",
        "via-second",
        extra_env={"CRC_URL": urls},
    )
    assert r.returncode == 0, r.stderr
    assert {"machine": "b", "stream": "stdout", "data": "via-second\n"} in [
        json.loads(x) for x in r.stdout.splitlines()
    ]
    with Client(urls, env.token, env.server.fingerprint) as c:
        assert c.url == env.server.url
        assert c.group("lab2")["machines"][0]["state"] == "ready"


def test_all_urls_down_is_a_clear_error(env, crc):
    urls = f"https://127.0.0.1:{free_port()},https://127.0.0.1:{free_port()}"
    r = crc("group", "list", extra_env={"CRC_URL": urls})
    assert r.returncode == 6
    assert r.stderr.startswith("crc: error: cannot reach") and "Traceback" not in r.stderr


def test_login_with_every_url_down_names_each(tmp_path):
    """Not only the last URL tried: the user would think the first one was fine."""
    import os
    import subprocess
    import sys

    import pytest

    from cloudremotecontrol.errors import Unavailable

    first, second = (f"https://127.0.0.1:{free_port()}" for _ in range(2))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRC_")}
    token = "crcm_" + "a" * 40
    argv = ["login", "--url", f"{first},{second}", "--token", token]
    r = subprocess.run(
        [sys.executable, "-m", "cloudremotecontrol", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "HOME": str(tmp_path)},
    )
    assert r.returncode == 6, r.stderr
    assert r.stderr.startswith(f"crc: error: cannot reach any of {first}, {second}: "), r.stderr
    assert "Traceback" not in r.stderr
    # The SDK says it so too, pinned (its certificate fetched first) or not.
    for pin in (None, "sha256:" + "ab" * 32):
        with pytest.raises(Unavailable, match=f"^cannot reach any of {first}, {second}: "):
            with Client(f"{first},{second}", token, pin) as c:
                c.whoami()


@contextlib.contextmanager
def _replica_dying_mid_request(server, head_answer: bytes | None = None) -> Iterator[str]:
    """A replica as a client sees one killed while it was asked something: it takes the
    connection (with the server's own certificate) and the request, then closes without
    an answer. Each time, so that a request sent to it again would fail too. With
    ``head_answer``, a HEAD request is answered that (a replica that dies after it)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(server.data_dir / "cert.pem", server.data_dir / "key.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    asked: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed: the test is over
            with contextlib.suppress(OSError), ctx.wrap_socket(conn, server_side=True) as tls:
                asked.append(tls.recv(65536))
                if head_answer is not None and asked[-1].startswith(b"HEAD "):
                    tls.sendall(head_answer)
                    asked.append(tls.recv(65536))  # the next request, on this connection

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        thread.join(5)
    assert asked, "the dying replica was never asked anything: the test tested nothing"


def test_a_read_cut_by_its_replica_dying_goes_to_the_next_and_a_change_does_not(env):
    """A GET whose replica died after taking it (``Server disconnected without sending a
    response``) failed, the next URL untried: it reads and changes nothing, so it is sent
    to the next replica, by both clients. A POST may have been done: it is not resent."""
    env.client.create_group("cutlab", ["m"])
    with _replica_dying_mid_request(env.server) as dying:
        urls = f"{dying},{env.server.url}"
        with Client(urls, env.token, env.server.fingerprint) as c:
            assert c.url == dying
            assert c.group("cutlab")["machines"][0]["name"] == "m"
            assert c.url == env.server.url
        with Client(urls, env.token, env.server.fingerprint) as c:
            with pytest.raises(Unavailable, match=f"^cannot reach {dying}: "):
                c.create_group("cutlab2", ["m"])

        async def async_read_then_change() -> str:
            async with AsyncClient(urls, env.token, env.server.fingerprint) as ac:
                assert [m["name"] for m in (await ac.group("cutlab"))["machines"]] == ["m"]
                assert ac.url == env.server.url
            async with AsyncClient(urls, env.token, env.server.fingerprint) as ac:
                with pytest.raises(Unavailable) as info:
                    await ac.create_group("cutlab3", ["m"])
                return info.value.message

        said = asyncio.run(async_read_then_change())
        assert said.startswith(f"cannot reach {dying}: "), said
    names = [g["group"] for g in env.client.list_groups()]
    assert "cutlab" in names and "cutlab2" not in names and "cutlab3" not in names


def test_an_upload_cut_by_its_replica_dying_is_sent_again_to_the_next(env, tmp_path):
    """An upload (a push's first part) cut by its replica's end failed, the next URL
    untried: it is stored under its content's hash, so the same upload sent to the next
    replica does the same; the push then goes on there. Both clients."""
    env.group_with_agents("uplab", ["m"])
    local = tmp_path / "big.bin"
    not_there = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    for i in range(2):
        # New content (not on the server yet), more than one read of the dying replica.
        local.write_bytes(os.urandom(3 << 20))
        remote = tmp_path / f"on-m-{i}.bin"
        with _replica_dying_mid_request(env.server, head_answer=not_there) as dying:
            urls = f"{dying},{env.server.url}"
            if i == 0:
                with Client(urls, env.token, env.server.fingerprint) as c:
                    assert c.url == dying
                    assert c.upload(str(local))["uploaded"] is True  # HEAD there, PUT cut
                    assert c.url == env.server.url
                    job = c.push("uplab", "m", str(local), str(remote))
            else:

                async def async_push(urls: str, remote: str) -> dict:
                    async with AsyncClient(urls, env.token, env.server.fingerprint) as ac:
                        assert ac.url == dying
                        assert (await ac.upload(str(local)))["uploaded"] is True
                        assert ac.url == env.server.url
                        return await ac.push("uplab", "m", str(local), remote)

                job = asyncio.run(async_push(urls, str(remote)))
        events = list(env.client.follow_job(job["job_id"], ["m"]))
        assert events[-1]["data"]["status"] == "succeeded", events
        assert remote.read_bytes() == local.read_bytes()
