"""A job's output is text on the wire: UTF-8 arrives intact even when a character is
split across writes, NUL and control bytes arrive as they are, and bytes that are not
UTF-8 arrive as U+FFFD (docs/reference.md) - never a failed job or a stuck agent."""

from __future__ import annotations

import json

from conftest import Env


def test_output_that_is_not_utf8_arrives_replaced_and_the_job_ends(env: Env, crc) -> None:
    env.group_with_agents("lab", ["a"])
    # "😀" is f0 9f 98 80: written in two halves, a flush apart.
    command = r"printf 'a\000b\377c\033[1m'; printf '\360\237'; sleep 0.3; printf '\230\200\n'"
    r = crc("run", "lab", "--to", "a", "--json", "--", "sh", "-c", command)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    data = "".join(x["data"] for x in lines if x.get("stream") == "stdout")
    assert data == "a\x00b\ufffdc\x1b[1m\U0001f600\n"
    assert [x["status"] for x in lines if "status" in x] == ["succeeded"]
