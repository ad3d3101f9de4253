"""Delivery guarantees (docs/delivery.md) proven with real processes and kill -9.

Every test runs the real `crc server run` and `crc agent run` processes over TLS on
loopback; crashes are SIGKILL, restarts reuse the same data dir and port. Waits are
bounded polls of real outcomes, never timing assertions.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from tcp_relay import TcpRelay
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from wire_helpers import assert_no_traceback_in_server_log

from cloudremotecontrol.master.client import Client
from cloudremotecontrol.master.localrun import AgentProcess
from cloudremotecontrol.protocol.delivery import MAX_PEER_ACK
from cloudremotecontrol.protocol.frames import decode_frame, encode_frame
from cloudremotecontrol.protocol.messages import Envelope
from cloudremotecontrol.tlspin import client_context

FINAL = ("succeeded", "failed", "timed_out", "cancelled", "lost")


def _wait(pred: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def _target(client: Any, job_id: str) -> dict[str, Any]:
    return dict(client.job(job_id)["targets"][0])


def _wait_final(client: Any, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    return dict(
        _wait(
            lambda: (t := _target(client, job_id))["status"] in FINAL and t,
            f"job {job_id} to end",
            timeout,
        )
    )


def _outbox_types(state_dir: Path) -> list[str]:
    """Types of the messages an agent holds unacknowledged in its on-disk outbox."""
    db = sqlite3.connect(state_dir / "agent.db")
    try:
        rows = db.execute("SELECT frame FROM outbox ORDER BY seq").fetchall()
    finally:
        db.close()
    return [json.loads(f)["msg"]["type"] for (f,) in rows]


def _agent_job_state(state_dir: Path, job_id: str) -> str | None:
    """What the agent recorded for ``job_id``: running, done (result kept), or None."""
    db = sqlite3.connect(state_dir / "agent.db")
    try:
        row = db.execute("SELECT state FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    finally:
        db.close()
    return row[0] if row else None


def _job_processes(job_id: str, cmdline: bytes | None = None) -> list[int]:
    """Processes on this machine started by the agent for ``job_id`` (found by the
    CRC_JOB_ID the agent puts in every job's environment)."""
    needle = f"CRC_JOB_ID={job_id}".encode()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                environ = fh.read().split(b"\0")
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read()
        except OSError:
            continue
        if needle in environ and (cmdline is None or cmd == cmdline):
            found.append(int(pid))
    return found


def _kill_job_processes(job_id: str) -> None:
    for pid in _job_processes(job_id):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _crc_run(env: Any, *args: str) -> tuple[subprocess.Popen[str], str]:
    """Start `crc run` as a process; return it and the job id it announced."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloudremotecontrol", "run", *args],
        env={**os.environ, **env.cli_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    first = proc.stderr.readline()
    assert first.startswith("job "), first + proc.stderr.read()
    return proc, first.split()[1]


def test_job_accepted_before_crash_runs_after_restart(env, crc, tmp_path):
    agents = env.group_with_agents("lab", ["a"])
    agents["a"].stop()
    env.wait_state("lab", ["a"], "offline")
    marker = tmp_path / "ran.txt"
    started = env.client.start_job(
        "lab", "a", shell="sh", command=f"echo once >> {marker}; echo hello-after-crash"
    )
    assert _target(env.client, started["job_id"])["status"] == "queued"
    env.server.kill()  # SIGKILL right after the 201: the job must already be durable
    env.server.start()
    env.agent("a", None)
    target = _wait_final(env.client, started["job_id"])
    assert target["status"] == "succeeded", target
    assert marker.read_text() == "once\n"
    r = crc("events", "lab", "--json")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    outputs = [
        e["data"]["data"]
        for e in events
        if e["type"] == "job.output" and e.get("job_id") == started["job_id"]
    ]
    assert outputs == ["hello-after-crash\n"]
    job_events = list(env.client.job_events(started["job_id"], follow=False))
    assert [e["data"]["status"] for e in job_events if e["type"] == "job.status"] == [
        "delivered",
        "running",
        "succeeded",
    ]


def test_results_produced_while_disconnected_are_delivered(env):
    agents = env.group_with_agents("lab", ["a"])
    started = env.client.start_job("lab", "a", argv=["sh", "-c", "sleep 2; echo done"])
    job_id = started["job_id"]
    _wait(lambda: _target(env.client, job_id)["status"] == "running", "the job to run")
    env.server.kill()
    # The job ends while the server is gone: its result waits in the agent's outbox.
    _wait(
        lambda: "job.result" in _outbox_types(agents["a"].state_dir),
        "the result to be kept on the machine",
    )
    env.server.start()
    target = _wait_final(env.client, job_id)
    assert (target["status"], target["exit_code"]) == ("succeeded", 0), target
    events = list(env.client.job_events(job_id, follow=False))
    assert [e["data"]["data"] for e in events if e["type"] == "job.output"] == ["done\n"]
    _wait(lambda: _outbox_types(agents["a"].state_dir) == [], "the agent's outbox to drain")


class _Proxy(TcpRelay):
    """A TCP relay in front of the server whose agent->server direction can be made a
    black hole: the agent's bytes (acks, results) vanish while the server's still arrive,
    like a half-broken link. TLS passes through untouched."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.blackhole = False
        super().__init__()
        self.url = f"https://127.0.0.1:{self.port}"

    def connect(self, client: socket.socket) -> socket.socket | None:
        return socket.create_connection(("127.0.0.1", self.upstream_port), 5)

    def forward(self, data: bytes, upstream: bool) -> bool:
        return not (upstream and self.blackhole)


def test_job_executes_at_most_once_across_reconnects(env, tmp_path):
    proxy = _Proxy(env.server.port)
    key = env.client.create_group("lab", ["a"])["machines"][0]["key"]
    state_dir = tmp_path / "agents" / "a"

    def start_agent() -> AgentProcess:
        agent = AgentProcess(state_dir, proxy.url, None, env.server.fingerprint).start()
        env.agents.append(agent)
        return agent

    try:
        agent = AgentProcess(state_dir, proxy.url, key, env.server.fingerprint).start()
        env.agents.append(agent)
        env.wait_state("lab", ["a"], "ready")
        lines = tmp_path / "lines.txt"

        # The link turns one-way: the job reaches the agent and runs, but its ack and
        # result never reach the server, which still holds job.run as unacknowledged.
        proxy.blackhole = True
        job_id = env.client.start_job(
            "lab", "a", shell="sh", command=f"echo ran >> {lines}; echo ok"
        )["job_id"]
        _wait(lambda: _agent_job_state(state_dir, job_id) == "done", "the result on disk")
        assert _target(env.client, job_id)["status"] == "queued"
        # Then both ends crash; after restarts they resume from what each kept on disk.
        env.server.kill()
        agent.kill()
        proxy.cut()
        proxy.blackhole = False
        env.server.start()
        agent = start_agent()
        target = _wait_final(env.client, job_id)
        assert (target["status"], target["exit_code"]) == ("succeeded", 0), target

        # More rounds: both sides crash and come back; replays must not run it again.
        for _ in range(2):
            env.server.kill()
            agent.kill()
            env.server.start()
            agent = start_agent()
            env.wait_state("lab", ["a"], "ready")
        # A second job round-trips, so everything the agent had to say was said.
        follow = env.client.start_job("lab", "a", argv=["true"])
        assert _wait_final(env.client, follow["job_id"])["status"] == "succeeded"
    finally:
        proxy.close()
    assert lines.read_text() == "ran\n"
    assert _target(env.client, job_id)["status"] == "succeeded"
    events = list(env.client.job_events(job_id, follow=False))
    assert [e["data"]["data"] for e in events if e["type"] == "job.output"] == ["ok\n"]
    assert [e["data"]["status"] for e in events if e["type"] == "job.status"] == [
        "delivered",
        "running",
        "succeeded",
    ]


def test_cancel_racing_an_unacknowledged_delivery_still_stops_the_job(env, tmp_path):
    """The master cancels while the server still counts the job as queued (the agent
    got job.run but its ack has not arrived): the job must not go on running."""
    proxy = _Proxy(env.server.port)
    key = env.client.create_group("lab", ["a"])["machines"][0]["key"]
    state_dir = tmp_path / "agents" / "a"
    env.agents.append(AgentProcess(state_dir, proxy.url, key, env.server.fingerprint).start())
    marker = tmp_path / "ran.txt"
    try:
        env.wait_state("lab", ["a"], "ready")
        proxy.blackhole = True
        job_id = env.client.start_job(
            "lab", "a", shell="sh", command=f"sleep 3; echo ran >> {marker}"
        )["job_id"]
        _wait(lambda: _job_processes(job_id), "the job to start on the machine")
        assert _target(env.client, job_id)["status"] == "queued"
        env.client.cancel_job(job_id)
        assert _target(env.client, job_id)["status"] == "cancelled"
        proxy.cut()  # the agent reconnects and resumes
        proxy.blackhole = False
        _wait(lambda: _agent_job_state(state_dir, job_id) == "done", "the job to end")
    finally:
        proxy.close()
        _kill_job_processes(job_id)
    assert not marker.exists(), "a cancelled job ran to completion"
    assert _target(env.client, job_id)["status"] == "cancelled"


def test_agent_crash_mid_job_ends_lost_with_reason(env):
    agents = env.group_with_agents("lab", ["a"])
    proc, job_id = _crc_run(env, "lab", "--to", "a", "--", "sleep", "30")
    try:
        _wait(lambda: _target(env.client, job_id)["status"] == "running", "the job to run")
        agents["a"].kill()
        env.agent("a", None)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        # kill -9 of the agent orphans the job's process (a systemd unit's cgroup would
        # take it down too); do not leave it behind.
        _kill_job_processes(job_id)
    assert proc.returncode == 125, err
    target = _target(env.client, job_id)
    assert target["status"] == "lost", target
    assert "not re-run" in target["reason"]
    assert "[a] lost" in err and "not re-run" in err


def test_ctrl_c_cancels_and_kills_the_process_tree(env):
    env.group_with_agents("lab", ["a"])
    proc, job_id = _crc_run(
        env, "lab", "--to", "a", "--shell", "sh", "--", "sleep 300 & sleep 300; wait"
    )
    sleeps = lambda: _job_processes(job_id, b"sleep\x00300\x00")  # noqa: E731
    try:
        _wait(lambda: len(sleeps()) == 2, "both sleeps to start")
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "[a] cancelled" in err
    assert _target(env.client, job_id)["status"] == "cancelled"
    try:
        _wait(lambda: not sleeps(), "the job's process tree to end", timeout=15)
    finally:
        _kill_job_processes(job_id)


class _RawAgent:
    """A hand-driven agent connection: enroll over HTTPS, then speak frames directly."""

    def __init__(self, server: Any, group: str, machine: str, key: str) -> None:
        self.server = server
        self.group, self.machine = group, machine
        self.ctx, _ = client_context(server.url, server.fingerprint)
        # websockets' sync client reads the socket in a thread while it writes the
        # upgrade request; with TLS 1.3 the server's session tickets arrive then, and
        # two threads in one OpenSSL connection can lose the request (no answer,
        # "timed out while waiting for handshake response"). TLS 1.2 sends nothing
        # unasked. (The agent uses the asyncio client: one thread, no such race.)
        self.ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        r = httpx.post(server.url + "/v1/agent/enroll", json={"key": key}, verify=self.ctx)
        assert r.status_code == 200, r.text
        self.credential = r.json()["credential"]
        assert self.credential.startswith("crca_")

    def connect(self, ack: int = 0, **hello: Any) -> tuple[ClientConnection, dict[str, Any]]:
        ws = connect(
            self.server.url.replace("https://", "wss://") + "/v1/agent/connect",
            ssl=self.ctx,
            compression=None,
            additional_headers={"Authorization": f"Bearer {self.credential}"},
        )
        ws.send(
            encode_frame(
                {"type": "hello", "ack": ack, "agent_version": "test", "ready": True, **hello}
            )
        )
        welcome = decode_frame(ws.recv(timeout=10))
        assert welcome["type"] == "welcome", welcome
        return ws, welcome

    def msg(self, seq: int, type: str, body: dict[str, Any]) -> str:
        env = Envelope.make(self.group, self.machine, "master", type, body)
        return encode_frame({"type": "msg", "seq": seq, "msg": env.to_dict()})


def _next_ack(ws: ClientConnection) -> int:
    while True:
        frame = decode_frame(ws.recv(timeout=10))
        if frame["type"] == "ack":
            return int(frame["seq"])
        assert frame["type"] != "error", frame


def test_duplicate_deliveries_are_acked_again_and_applied_once(env):
    key = env.client.create_group("lab", ["raw"])["machines"][0]["key"]
    raw = _RawAgent(env.server, "lab", "raw", key)
    ws, welcome = raw.connect()
    assert welcome["ack"] == 0
    frame = raw.msg(1, "progress", {"text": "step one", "percent": 10})
    ws.send(frame)
    assert _next_ack(ws) == 1
    ws.send(frame)  # the same seq again, as after a lost ack
    assert _next_ack(ws) == 1
    ws.close()

    # After a reconnect the server says it processed seq 1; a replay is acked, not applied.
    ws, welcome = raw.connect(ack=0)
    assert welcome["ack"] == 1
    ws.send(frame)
    assert _next_ack(ws) == 1
    progress = [e for e in env.client.events("lab") if e["type"] == "progress"]
    assert [e["data"]["text"] for e in progress] == ["step one"]

    # A gap (seq 3 after 1) is a protocol error: the server closes with 4400, stores nothing.
    ws.send(raw.msg(3, "progress", {"text": "step three"}))
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400
    ws, welcome = raw.connect()
    assert welcome["ack"] == 1
    ws.close()
    progress = [e for e in env.client.events("lab") if e["type"] == "progress"]
    assert [e["data"]["text"] for e in progress] == ["step one"]


def test_offline_detected_on_agent_kill_and_ready_again_after_restart(env):
    agents = env.group_with_agents("lab", ["a"])
    agents["a"].kill()  # no goodbye: the server only sees the TCP connection close
    offline = env.wait_state("lab", ["a"], "offline")["machines"][0]
    env.agent("a", None)
    ready = env.wait_state("lab", ["a"], "ready")["machines"][0]
    assert ready["last_seen"] > offline["last_seen"]
    states = [e["data"]["state"] for e in env.client.events("lab") if e["type"] == "machine.state"]
    assert states[-2:] == ["offline", "ready"]


def test_a_machine_is_ready_again_when_its_agent_stopped_before_the_ready_was_acked(env):
    """The server applied the agent's system.ready, but the agent stopped before the ack
    reached its state: its next hello says "not ready" (the ready is still in its
    outbox), and the welcome acknowledges it, so it is not sent again. The machine is
    ready on that connection all the same, not at some later one."""
    agents = env.group_with_agents("lab", ["a"])
    agents["a"].stop()
    env.wait_state("lab", ["a"], "offline")
    db = sqlite3.connect(agents["a"].state_dir / "agent.db")
    with db:
        ready_seq = int(db.execute("SELECT value FROM kv WHERE key = 'ready_seq'").fetchone()[0])
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
        # As if the ack had not been written: the message is kept, waiting for it.
        db.execute("INSERT INTO outbox (seq, frame) VALUES (?, ?)", (ready_seq, "{}"))
    db.close()
    agents["a"].start()
    env.wait_state("lab", ["a"], "ready")
    # One connection did it: the agent did not drop it and connect again.
    assert agents["a"].log().count("connected to") == 2


def test_an_agent_that_processed_more_than_the_server_knows_gets_new_numbers(env):
    """After the server's database was restored from an older backup, an agent's hello
    acknowledges messages the server no longer knows: the server numbers its next
    messages after that ack (else the agent would drop them as duplicates) and says so."""
    key = env.client.create_group("lab", ["raw"])["machines"][0]["key"]
    raw = _RawAgent(env.server, "lab", "raw", key)
    ws, welcome = raw.connect(ack=7)  # this server never sent anything to it
    assert welcome["type"] == "welcome"
    env.client.send_message("lab", "raw", "user.hi", {"n": 1})
    while True:
        frame = decode_frame(ws.recv(timeout=10))
        if frame["type"] == "msg":
            break
    assert frame["seq"] == 8 and frame["msg"]["type"] == "user.hi", frame
    ws.close()
    resync = [e for e in env.client.events("lab") if e["type"] == "machine.resync"]
    assert [(e["machine"], e["data"]["agent_ack"], e["data"]["server_sent"]) for e in resync] == [
        ("raw", 7, 0)
    ]
    # A hello whose ack or resume_from is not a sequence number is a protocol error.
    for bad in (
        {"ack": -1},
        {"ack": "x"},
        {"ack": 0, "resume_from": -3},
        {"ack": 0, "resume_from": "1"},
    ):
        ws = connect(
            env.server.url.replace("https://", "wss://") + "/v1/agent/connect",
            ssl=raw.ctx,
            compression=None,
            additional_headers={"Authorization": f"Bearer {raw.credential}"},
        )
        ws.send(encode_frame({"type": "hello", "agent_version": "test", **bad}))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400, bad


def test_a_hello_acking_beyond_any_numbering_is_refused_and_its_peers_carry_on(env):
    """A machine whose hello acknowledges a number near the top of the range (hostile:
    no restored database is that far behind) is refused with 4400 and nothing changes:
    the server still numbers its messages, and commands to the group and messages from
    its peers to it are stored and delivered as before."""
    keys = {m["name"]: m["key"] for m in env.client.create_group("far", ["p", "q"])["machines"]}
    p = _RawAgent(env.server, "far", "p", keys["p"])
    q = _RawAgent(env.server, "far", "q", keys["q"])
    for ack in (2**63 - 1, 2**63 - 2, MAX_PEER_ACK + 1):
        ws = connect(
            env.server.url.replace("https://", "wss://") + "/v1/agent/connect",
            ssl=p.ctx,
            compression=None,
            additional_headers={"Authorization": f"Bearer {p.credential}"},
        )
        ws.send(encode_frame({"type": "hello", "ack": ack, "agent_version": "test"}))
        frames = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                frames.append(decode_frame(ws.recv(timeout=10)))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400, ack
        assert [f["type"] for f in frames] == ["error"], frames
        assert "beyond any message sent" in frames[0]["error"]["message"], frames
    assert not [e for e in env.client.events("far") if e["type"] == "machine.resync"]
    # The highest ack still renumbered after: its machine gets the next number.
    ws_p, _ = p.connect(ack=MAX_PEER_ACK)
    ws_q, _ = q.connect()
    job = env.client.start_job("far", "all", argv=["true"])
    for ws, seq in ((ws_p, MAX_PEER_ACK + 1), (ws_q, 1)):
        frame = decode_frame(ws.recv(timeout=10))
        assert (frame["type"], frame["seq"], frame["msg"]["type"]) == ("msg", seq, "job.run")
        ws.send(encode_frame({"type": "ack", "seq": seq}))
    _wait(
        lambda: {t["status"] for t in env.client.job(job["job_id"])["targets"]} == {"delivered"},
        "both targets delivered",
    )
    to_p = Envelope.make("far", "q", "p", "user.hello", {"n": 1}).to_dict()
    ws_q.send(encode_frame({"type": "msg", "seq": 1, "msg": to_p}))
    assert _next_ack(ws_q) == 1
    frame = decode_frame(ws_p.recv(timeout=10))
    assert (frame["type"], frame["seq"]) == ("msg", MAX_PEER_ACK + 2), frame
    assert (frame["msg"]["from"], frame["msg"]["body"]) == ("q", {"n": 1}), frame
    ws_p.close()
    ws_q.close()
    assert_no_traceback_in_server_log(env.server)


def test_an_agent_resumes_after_messages_a_rolled_back_database_lost(env):
    """The other direction: the server acknowledged messages 2 and 3, then its database
    was rolled back to before them. The agent (which dropped them once acknowledged)
    resumes at 4; the server continues from there, records what was lost, and does not
    refuse every later message as a sequence gap."""
    import sqlite3

    key = env.client.create_group("lab", ["raw"])["machines"][0]["key"]
    raw = _RawAgent(env.server, "lab", "raw", key)
    ws, _ = raw.connect()
    for seq in (1, 2, 3):
        ws.send(raw.msg(seq, "progress", {"text": f"step {seq}"}))
        assert _next_ack(ws) == seq
    ws.close()
    env.server.stop()
    with sqlite3.connect(env.server.data_dir / "crc.db") as db:  # the rollback
        db.execute("UPDATE machines SET in_done = 1 WHERE name = 'raw'")
    env.server.start()
    ws, welcome = raw.connect(resume_from=4)
    assert welcome["ack"] == 3
    ws.send(raw.msg(4, "progress", {"text": "step 4"}))
    assert _next_ack(ws) == 4
    ws.close()
    env.client.close()
    env.client = Client(env.server.url, env.token, env.server.fingerprint)
    events = list(env.client.events("lab"))
    resync = [e["data"] for e in events if e["type"] == "machine.resync"]
    assert [
        (r["direction"], r["server_had"], r["agent_resumes_at"], r["lost"]) for r in resync
    ] == [("from agent", 1, 4, 2)]
    assert [e["data"]["text"] for e in events if e["type"] == "progress"] == [
        "step 1",
        "step 2",
        "step 3",
        "step 4",
    ]  # 2 and 3 still there: only in_done rolled back
