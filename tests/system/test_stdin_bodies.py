"""`crc send GROUP --to T TYPE -` and `crc kv set GROUP KEY -`: the body or value from
standard input, for one larger than the kernel lets a single argument be (128 KiB)."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _crc_bytes(env, *args: str, input: bytes) -> subprocess.CompletedProcess[bytes]:
    """`crc` fed bytes (not text) on standard input."""
    return subprocess.run(
        [sys.executable, "-m", "cloudremotecontrol", *args],
        capture_output=True,
        input=input,
        timeout=60,
        env={**os.environ, **env.cli_env},
    )


def _sent(env, group: str) -> int:
    return len([e for e in env.client.events(group) if e["type"] == "message.sent"])


def test_send_reads_a_body_too_large_for_one_argument_from_stdin(env, crc):
    env.group_with_agents("lab", ["a"])
    body = {"blob": "é" + "x" * 200_000}  # over 128 KiB, under the 256 KiB of a body
    r = crc("send", "lab", "--to", "a", "user.big", "-", input=json.dumps(body))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "sent user.big to a\n"
    r = env.agent_cli("a", "wait-message", "user.big", "--timeout", "20")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == body
    # Refused before anything is sent: larger than a body may be, not UTF-8, not JSON.
    refusals = [
        (
            json.dumps({"blob": "x" * (300 << 10)}).encode(),
            "BODY from standard input (-) is larger than 256 KiB, the most it may be",
        ),
        (b'{"a": "\xff"}', "BODY from standard input (-) is not UTF-8 text (byte 7)"),
        (b"{", "BODY is not valid JSON at line 1 column 2"),
    ]
    for data, said in refusals:
        r = _crc_bytes(env, "send", "lab", "--to", "a", "user.big", "-", input=data)
        err = r.stderr.decode()
        assert r.returncode == 2, err
        assert said in err and "Traceback" not in err, err
    assert _sent(env, "lab") == 1


def test_kv_set_reads_its_value_from_stdin(env, crc):
    env.client.create_group("lab", ["a"])

    def value(key: str) -> object:
        r = crc("kv", "get", "lab", key, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["value"]

    assert crc("kv", "set", "lab", "j", "-", input='{"n": 1}\n').returncode == 0
    assert value("j") == {"n": 1}
    assert crc("kv", "set", "lab", "t", "-", input="plain text\n").returncode == 0
    assert value("t") == "plain text\n"  # as it is, its newline too
    assert crc("kv", "set", "lab", "dash", '"-"').returncode == 0  # the string "-" itself
    assert value("dash") == "-"
    r = crc("kv", "set", "lab", "big", "-", input="x" * (65 << 10))
    assert r.returncode == 2, r.stderr
    assert "VALUE from standard input (-) is larger than 64 KiB, the most it may be" in r.stderr
    r = _crc_bytes(env, "kv", "set", "lab", "bad", "-", input=b"\xfe")
    assert r.returncode == 2 and b"VALUE from standard input (-) is not UTF-8 text (byte 0)" in (
        r.stderr
    ), r.stderr
    assert [k["key"] for k in env.client.kv_list("lab")] == ["dash", "j", "t"]
