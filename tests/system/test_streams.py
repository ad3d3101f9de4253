"""Shells and forwards through the agent: a real server and agents over TLS, the real
`crc` CLI under a real pty, real TCP servers on the agent's side."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pexpect
import pytest
from wire_helpers import assert_error, assert_no_traceback_in_server_log, bearer, pinned_http

from cloudremotecontrol.errors import Conflict, Forbidden, InvalidInput, NotFound, Unavailable

PROMPT = "PROMPT> "


def _cli_env(env: Any) -> dict[str, str]:
    return {**os.environ, **env.cli_env, "TERM": "xterm", "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def lab(env: Any) -> Any:
    env.group_with_agents("lab", ["dev"])
    return env


class Site:
    """An HTTP server on the agent's side (loopback: the agents run on this host)."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = f"hello from {self.path}\n".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = 128

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site()
    yield s
    s.close()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as resp:
        return str(resp.read().decode())


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _settled_fds(before: set[str], timeout: float = 20.0) -> set[str]:
    deadline = time.monotonic() + timeout
    while True:
        extra = _fds() - before
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.1)


# -- crc shell under a real terminal ---------------------------------------------------------


def test_crc_shell_follows_the_terminal_size_ctrl_c_full_screen_and_exit_code(lab):
    child = pexpect.spawn(
        sys.executable,
        ["-m", "cloudremotecontrol", "shell", "lab", "dev", "--", "env", f"PS1={PROMPT}", "sh"],
        env=_cli_env(lab),
        dimensions=(24, 80),
        timeout=60,
    )
    try:
        child.expect_exact(PROMPT)
        child.sendline("stty size")
        child.expect_exact("24 80")
        child.expect_exact(PROMPT)
        child.setwinsize(40, 132)  # SIGWINCH to crc, which resizes the remote terminal
        deadline = time.monotonic() + 30
        while True:
            child.sendline("stty size")
            if child.expect(["40 132", r"\d+ \d+"]) == 0:
                break
            assert time.monotonic() < deadline, "the remote terminal never got the new size"
            time.sleep(0.2)
        child.expect_exact(PROMPT)
        # Ctrl-C reaches the remote program (raw mode here, the remote pty's SIGINT).
        child.sendline("sleep 120; echo AFTER-SLEEP")
        time.sleep(1)
        child.sendcontrol("c")
        child.expect_exact(PROMPT, timeout=20)
        assert b"\nAFTER-SLEEP" not in child.before  # the echo of the line, not its output
        # A full-screen program: the alternate screen and cursor moves arrive as sent.
        child.sendline("tput smcup; tput cup 10 20; printf HELLO; tput rmcup; echo DONE")
        child.expect_exact("\x1b[11;21H")
        child.expect_exact("HELLO")
        child.expect_exact("DONE")
        child.sendline("exit 7")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 7
    assert_no_traceback_in_server_log(lab.server)


def test_sdk_shell_runs_a_command_with_a_terminal_and_resizes(lab):
    with lab.client.shell(
        "lab", "dev", argv=["sh", "-c", "stty size; read x; stty size; exit 3"], cols=100, rows=30
    ) as s:
        s.expect("30 100")
        s.resize(120, 50)
        s.send("go\r")
        s.expect("50 120")
        assert s.wait(60) == 3
    # The default: the machine's login shell, with TERM passed on.
    with lab.client.shell("lab", "dev", term="vt100") as s:
        s.send("echo TERM=$TERM; exit\r")
        s.expect("TERM=vt100")
        assert s.wait(60) == 0


def test_terminal_sizes_out_of_range_are_refused_clearly(lab):
    for cols, rows in ((0, 24), (80, 0), (100000, 24), (80, 100000)):
        with pytest.raises(InvalidInput, match="out of range"):
            lab.client.shell("lab", "dev", cols=cols, rows=rows)
    with pinned_http(lab.server) as http:
        for size in ({"cols": 0, "rows": 24}, {"cols": 80, "rows": 100000}):
            r = http.post(
                "/v1/groups/lab/streams",
                json={"machine": "dev", "kind": "shell", **size},
                headers={"Authorization": bearer(lab.token)},
            )
            assert "out of range" in assert_error(r, 400, "invalid_input")
        r = http.post(
            "/v1/groups/lab/streams",
            json={"machine": "dev", "kind": "forward", "port": 70000},
            headers={"Authorization": bearer(lab.token)},
        )
        assert_error(r, 400, "invalid_input")
        r = http.post(
            "/v1/groups/lab/streams",
            json={"machine": "dev", "kind": "forward", "host": "a b\n1.2.3.4 x", "port": 80},
            headers={"Authorization": bearer(lab.token)},
        )
        assert "not a host name" in assert_error(r, 400, "invalid_input")
    assert_no_traceback_in_server_log(lab.server)


# -- forwards ----------------------------------------------------------------------------------


def _forward_100(proc: subprocess.Popen[str]) -> None:
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        assert "-> dev:127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() else "")
        url = line.split()[0]
        assert url.startswith("127.0.0.1:") or url.startswith("http://127.0.0.1:")
        base = url if url.startswith("http") else f"http://{url}/"
        with ThreadPoolExecutor(100) as pool:
            pages = list(pool.map(lambda i: _get(f"{base}page/{i}"), range(100)))
        assert pages == [f"hello from /page/{i}\n" for i in range(100)]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_crc_forward_prints_the_url_and_carries_100_parallel_requests(lab, site):
    with subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", "forward", "lab", "dev", f"0:{site.port}"],
        env=_cli_env(lab),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        _forward_100(proc)
    sessions = lab.client.sessions("lab", 1000)
    carried = [s for s in sessions if s["kind"] == "forward" and s["bytes_from_machine"] > 0]
    assert len(carried) >= 100
    assert all(s["by"] == "alice" and s["target"] == f"127.0.0.1:{site.port}" for s in carried)
    assert all(s["duration"] >= 0 and s["bytes_to_machine"] > 0 for s in carried)


def test_sdk_forward_closes_everything_it_opened(lab, site):
    with lab.client.forward("lab", "dev", site.port) as port:  # warm-up: imports, TLS cache
        assert _get(f"http://127.0.0.1:{port}/x") == "hello from /x\n"
    before = _fds()
    for _ in range(3):
        with lab.client.forward("lab", "dev", site.port) as port:
            with ThreadPoolExecutor(10) as pool:
                pages = list(pool.map(lambda i: _get(f"http://127.0.0.1:{port}/{i}"), range(20)))
            assert pages == [f"hello from /{i}\n" for i in range(20)]
            # A connection still open when the forward ends is closed by it.
            held = socket.create_connection(("127.0.0.1", port), timeout=30)
            held.sendall(b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while b"hello from /held\n" not in answer:
                answer += held.recv(4096)
        assert held.recv(10) == b""
        held.close()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
    assert _settled_fds(before) == set()


def _recv_all(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def test_a_forward_carries_half_closes_both_ways(lab):
    """A client that shuts down its sending side still gets the answer (a service that
    reads to EOF, then answers); a service that shuts down its side first still gets
    what the client sends afterwards. Each EOF reaches the far end as an EOF, and the
    stream ends once both sides are done."""
    got_after_its_eof: list[bytes] = []

    def answer_after_eof(conn: socket.socket) -> None:
        data = _recv_all(conn)  # ends only at the client's EOF
        conn.sendall(b"%d bytes, last %r" % (len(data), data[-4:]))

    def eof_first(conn: socket.socket) -> None:
        conn.sendall(b"bye from the service")
        conn.shutdown(socket.SHUT_WR)
        got_after_its_eof.append(_recv_all(conn))

    listeners = []
    for serve in (answer_after_eof, eof_first):
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)

        def loop(listener: socket.socket = listener, serve: Any = serve) -> None:
            with contextlib.suppress(OSError):  # closed at the end of the test
                while True:
                    conn, _ = listener.accept()
                    # The forward's probe connects and closes at once, unread data and
                    # all: a reset (ENOTCONN at shutdown, ECONNRESET) ends that
                    # connection, never this service, as with any server.
                    with conn, contextlib.suppress(OSError):
                        serve(conn)

        threading.Thread(target=loop, daemon=True).start()
    ports = [listener.getsockname()[1] for listener in listeners]
    try:
        with lab.client.forward("lab", "dev", ports[0]) as local:
            with socket.create_connection(("127.0.0.1", local), timeout=60) as c:
                c.sendall(b"x" * 300_000 + b"done")
                c.shutdown(socket.SHUT_WR)
                assert _recv_all(c) == b"300004 bytes, last b'done'"
        with lab.client.forward("lab", "dev", ports[1]) as local:
            with socket.create_connection(("127.0.0.1", local), timeout=60) as c:
                assert _recv_all(c) == b"bye from the service"  # its EOF reached us
                c.sendall(b"still talking")  # our side is still open
                c.shutdown(socket.SHUT_WR)
                assert c.recv(10) == b""
                deadline = time.monotonic() + 30  # the forward must stay open meanwhile
                while b"still talking" not in got_after_its_eof:
                    assert time.monotonic() < deadline, got_after_its_eof
                    time.sleep(0.1)
    finally:
        for listener in listeners:
            listener.close()
    deadline = time.monotonic() + 30  # a stream's record is written as it closes
    while True:
        sessions = lab.client.sessions("lab", 1000)
        carried = [
            (s["bytes_to_machine"], s["bytes_from_machine"])
            for s in sessions
            if s["target"] in {f"127.0.0.1:{p}" for p in ports} and s["bytes_to_machine"]
        ]
        if len(carried) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sorted(carried) == [(13, 20), (300_004, 26)]


def test_forward_errors_are_clear_and_leave_nothing_open(lab, site):
    with lab.client.forward("lab", "dev", site.port):  # warm-up
        pass
    before = _fds()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    # Nothing listening at the remote end is the remote end unavailable (exit 6), not a
    # conflict with the group (exit 5), said with the machine and the address.
    with pytest.raises(Unavailable, match="refused") as exc:
        with lab.client.forward("lab", "dev", dead_port):
            pass
    assert exc.value.code == "connect_failed"
    assert exc.value.message.startswith(
        f"machine dev cannot connect to 127.0.0.1:{dead_port}: Connection refused"
    ), exc.value.message
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        with pytest.raises(Conflict, match="cannot listen") as exc:
            with lab.client.forward("lab", "dev", site.port, local_port=busy.getsockname()[1]):
                pass
        assert exc.value.code == "port_in_use"
    finally:
        busy.close()
    with pytest.raises(NotFound, match="no machine 'nope'"):
        with lab.client.forward("lab", "nope", site.port):
            pass
    with pytest.raises(NotFound):
        with lab.client.forward("no-such-group", "dev", site.port):
            pass
    assert _settled_fds(before) == set()
    # The CLI: one line on stderr, a non-zero exit code, no traceback.
    r = subprocess.run(
        [sys.executable, "-m", "cloudremotecontrol", "forward", "lab", "dev", f"0:{dead_port}"],
        env=_cli_env(lab),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 6, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(
        f"crc: error: machine dev cannot connect to 127.0.0.1:{dead_port}: Connection refused"
    ), r.stderr
    for bad in ("80", "a:b", "1:2:3:4:5", "99999:80", "8080:0"):
        r = subprocess.run(
            [sys.executable, "-m", "cloudremotecontrol", "forward", "lab", "dev", bad],
            env=_cli_env(lab),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 2 and r.stderr.startswith("crc: error:"), (bad, r.stderr)
    assert_no_traceback_in_server_log(lab.server)


def test_offline_machine_is_a_clear_error(lab, site):
    lab.agents[0].stop()
    lab.wait_state("lab", ["dev"], "offline", timeout=90)
    with pytest.raises(Conflict, match="not connected") as exc:
        lab.client.shell("lab", "dev")
    assert exc.value.code == "machine_offline"
    r = subprocess.run(
        [sys.executable, "-m", "cloudremotecontrol", "forward", "lab", "dev", f"0:{site.port}"],
        env=_cli_env(lab),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0 and "offline" in r.stderr and "Traceback" not in r.stderr


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_reader_that_stops_reading_stops_the_writer_with_bounded_server_memory(lab):
    """The remote end writes as fast as it can; the local client never reads. The
    writer must block (everything between is bounded) and the server must not grow."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    written = [0]
    stalled = threading.Event()
    stop = threading.Event()

    def flood() -> None:
        conn, _ = listener.accept()  # the probe of forward(): closes at once
        conn.close()
        conn, _ = listener.accept()
        conn.settimeout(0.5)
        chunk = b"x" * (1 << 20)
        last_progress = time.monotonic()
        while not stop.is_set():
            try:
                written[0] += conn.send(chunk)
                last_progress = time.monotonic()
            except TimeoutError:
                if time.monotonic() - last_progress > 5:
                    stalled.set()
            except OSError:
                break
        conn.close()

    threading.Thread(target=flood, daemon=True).start()
    pid = lab.server.proc.pid
    rss_before = _rss(pid)
    try:
        with lab.client.forward("lab", "dev", listener.getsockname()[1]) as port:
            client = socket.create_connection(("127.0.0.1", port), timeout=30)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            assert stalled.wait(120), f"the writer never blocked ({written[0]} bytes written)"
            rss_during = _rss(pid)
            # Socket buffers on each hop plus one message per relay: tens of MiB at most,
            # never the unbounded amount a non-blocking writer would push in two minutes.
            assert written[0] < 128 << 20, written[0]
            assert rss_during - rss_before < 48 << 20, (rss_before, rss_during)
            # And it flows again once the reader reads.
            got = 0
            while got < 4 << 20:
                got += len(client.recv(1 << 20))
            client.close()
    finally:
        stop.set()
        listener.close()


# -- rules: opt-outs, recording, audit ---------------------------------------------------------


def test_group_opt_outs_are_enforced_by_the_server_and_by_the_agent(env, site):
    out = env.client.create_group("locked", ["m"], settings={"no_shell": True, "no_forward": True})
    agent = env.agent("m", out["machines"][0]["key"])
    env.wait_state("locked", ["m"], "ready")
    with pytest.raises(Forbidden, match="--no-shell") as exc:
        env.client.shell("locked", "m")
    assert exc.value.code == "shell_disabled"
    with pytest.raises(Forbidden, match="--no-forward"):
        with env.client.forward("locked", "m", site.port):
            pass
    # Were the server's check lost (its database edited behind its back), the agent
    # still refuses: it learned the group's opt-outs when it enrolled.
    db = sqlite3.connect(env.server.data_dir / "crc.db")
    with db:
        db.execute("UPDATE groups SET settings = '{}' WHERE name = 'locked'")
    db.close()
    with pytest.raises(Forbidden, match="--no-shell") as exc:
        env.client.shell("locked", "m").wait(60)
    with pytest.raises(Forbidden, match="--no-forward"):
        with env.client.forward("locked", "m", site.port):
            pass
    kept = json.loads((agent.state_dir / "credential.json").read_text())
    assert kept["streams_off"] == ["shell", "forward"]


def test_shell_sessions_are_recorded_and_replay_byte_for_byte(lab, crc):
    # Split UTF-8 characters, invalid bytes, escapes and CR/LF: replay gives them all back.
    script = (
        "printf 'caf\\303'; sleep 0.2; printf '\\251 \\377\\376 \\033[1mbold\\033[0m\\n'; "
        "head -c 3000 /dev/urandom | od -An -tx1 | head -5; exit 4"
    )
    with lab.client.shell("lab", "dev", argv=["sh", "-c", script]) as s:
        received = b""
        while chunk := s.recv(60):
            received += chunk
        assert s.exit_code == 4
    assert "caf\u00e9".encode() in received and b"\xff\xfe" in received
    sessions = [x for x in lab.client.sessions("lab") if x["kind"] == "shell"]
    assert sessions[-1]["recorded"] is True and sessions[-1]["exit_code"] == 4
    sid = sessions[-1]["stream"]
    played = subprocess.run(
        [sys.executable, "-m", "cloudremotecontrol", "sessions", "play", sid, "--speed", "0"],
        env=_cli_env(lab),
        capture_output=True,
        timeout=60,
    )
    assert played.returncode == 0, played.stderr
    assert played.stdout == received
    cast = lab.client.recording(sid)
    header = cast.splitlines()[0]
    assert '"version": 2' in header and '"width": 80' in header
    assert '"i"' not in cast  # keystrokes are not recorded unless the group asks
    r = crc("sessions", "list", "lab")
    assert r.returncode == 0 and sid in r.stdout
    # --no-record: nothing kept.
    with lab.client.shell("lab", "dev", argv=["true"], record=False) as s:
        assert s.wait(60) == 0
    last = [x for x in lab.client.sessions("lab") if x["kind"] == "shell"][-1]
    assert last["recorded"] is False
    with pytest.raises(NotFound):
        lab.client.recording(last["stream"])
    # The audit: who, when, the target, bytes and duration.
    records = [r for r in lab.client.audit("lab") if r["action"].startswith("stream.")]
    closes = [r for r in records if r["action"] == "stream.close"]
    assert records[0]["action"] == "stream.open" and records[0]["actor"] == "alice"
    assert closes[0]["detail"]["bytes_from_machine"] == len(received)
    assert closes[0]["detail"]["machine"] == "dev" and closes[0]["detail"]["duration"] > 0


def _chunks_of(db_path: Path, stream: str) -> int:
    """How many chunks of ``stream``'s recording the server's database holds."""
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        try:
            row = db.execute(
                "SELECT COUNT(*) FROM recording_chunks WHERE stream = ?", (stream,)
            ).fetchone()
        except sqlite3.OperationalError:  # no such table
            return 0
    return int(row[0])


def test_a_recording_is_written_as_the_session_goes_and_outlives_a_killed_server(lab):
    """The recording is in the database, in chunks written while the session runs (a
    quiet one too, on a timer): the server killed with kill -9 in the middle of a
    session, what was recorded is served after its restart, byte for byte. Another
    user gets the answer of an unknown session; a recording an older version left on
    disk is still served."""
    from cloudremotecontrol.master.client import Client

    script = "printf 'before \\377\\376 caf\\303\\251 \\033[1mx\\033[0m\\n'; sleep 600"
    shell = lab.client.shell("lab", "dev", argv=["sh", "-c", script])
    sid = shell.id
    received = b""
    while b"\n" not in received:
        received += shell.recv(60)
    assert b"\xff\xfe" in received and "caf\u00e9".encode() in received
    db_path = lab.server.data_dir / "crc.db"
    deadline = time.monotonic() + 60
    while _chunks_of(db_path, sid) == 0:  # the session is quiet: the timer writes it
        assert time.monotonic() < deadline, "the recording never reached the database"
        time.sleep(0.2)
    lab.server.kill(signal.SIGKILL)
    shell.close()
    lab.server.start()
    cast = lab.client.recording(sid)
    from cloudremotecontrol.server.recorder import replay_bytes

    assert json.loads(cast.splitlines()[0])["version"] == 2
    assert replay_bytes(cast) == received
    assert not (lab.server.data_dir / "recordings" / f"{sid}.cast").exists()
    # Only its owner reads it: anyone else is told what an unknown session gets.
    bob = Client(lab.server.url, lab.server.add_user("bob"), lab.server.fingerprint)
    unknown = "st_" + "x" * 22
    with pytest.raises(NotFound) as theirs:
        bob.recording(sid)
    with pytest.raises(NotFound) as none:
        bob.recording(unknown)
    assert theirs.value.message.replace(sid, "ID") == none.value.message.replace(unknown, "ID")
    assert theirs.value.to_payload().keys() == none.value.to_payload().keys()
    bob.close()
    # An older version kept recordings as files in the data directory: still served.
    lab.wait_state("lab", ["dev"], "ready")
    with lab.client.shell("lab", "dev", argv=["true"], record=False) as s:
        assert s.wait(60) == 0
    old = [x for x in lab.client.sessions("lab") if x["kind"] == "shell"][-1]
    assert old["recorded"] is False
    old_cast = '{"version": 2, "width": 80, "height": 24}\n[0.5, "o", "from disk \\udcff"]\n'
    folder = lab.server.data_dir / "recordings"
    folder.mkdir(exist_ok=True)
    (folder / f"{old['stream']}.cast").write_text(old_cast, "ascii")
    assert lab.client.recording(old["stream"]) == old_cast
    listed = {x["stream"]: x["recorded"] for x in lab.client.sessions("lab")}
    assert listed[old["stream"]] is True
    assert "Traceback" not in lab.server.log_path.read_text()


def test_a_group_that_forces_recording_refuses_no_record(env):
    out = env.client.create_group("strict", ["m"], settings={"force_record": True})
    env.agent("m", out["machines"][0]["key"])
    env.wait_state("strict", ["m"], "ready")
    with pytest.raises(Forbidden, match="records every shell session"):
        env.client.shell("strict", "m", record=False)


def test_crc_shell_with_piped_stdin_types_it_and_ends_with_ctrl_d(lab, crc):
    """Not a terminal: no raw mode to set; what stdin carries is typed, its end is a
    Ctrl-D (the remote shell ends), and the exit code is the remote one."""
    r = crc("shell", "lab", "dev", "--", "sh", input="echo piped-$((6*7))\nexit 9\n")
    assert r.returncode == 9, r.stderr
    assert "piped-42" in r.stdout and "Traceback" not in r.stderr
    r = crc("shell", "lab", "dev", "--json", "--", "sh", "-c", "exit 0", input="")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["exit_code"] == 0


def test_crc_shell_json_prints_only_json_with_the_output_inside(lab, crc):
    """stdout carries JSON lines only, as `crc run --json`: {"machine", "data"} per piece
    of output (decoded as UTF-8), then how the session ended."""
    script = "printf 'h\\303\\251llo {not json\\n'; printf '\\303'; printf '\\251\\n'; exit 3"
    r = crc("shell", "lab", "dev", "--json", "--", "sh", "-c", script, input="")
    assert r.returncode == 3, r.stderr
    docs = [json.loads(line) for line in r.stdout.splitlines()]  # each line is JSON
    *chunks, end = docs
    assert set(end) == {"group", "machine", "stream", "exit_code"}, end
    assert end["exit_code"] == 3 and end["machine"] == "dev" and end["group"] == "lab"
    assert chunks and all(set(c) == {"machine", "data"} for c in chunks), chunks
    assert all(c["machine"] == "dev" for c in chunks)
    text = "".join(c["data"] for c in chunks)
    assert "h\u00e9llo {not json" in text and "\u00e9\r\n" in text, text
    assert "\ufffd" not in text and "Traceback" not in r.stderr
