r"""Values printed as JSON for people and pipes (`crc kv get`, `crc agent kv get`, a
message's body from `crc wait --message` and in `crc events`) show their text as it is,
UTF-8, not as ``\u00e9`` escapes; what a terminal would obey (controls, bidirectional
overrides) stays escaped, the line stays JSON of the same value, and an output encoding
that cannot hold a character (PYTHONIOENCODING=ascii) gets its escape, not a
UnicodeEncodeError. Real server, real agent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

VALUE = {"text": "héllo ✓ 日本 😀", "evil": "a\x1b]0;pwn\x07b\u202ec\x85d\u2028"}
# As shown: the text as it is, the controls and overrides as JSON escapes.
SHOWN = '{"text": "héllo ✓ 日本 😀", "evil": "a\\u001b]0;pwn\\u0007b\\u202ec\\u0085d\\u2028"}'
ASCII = (
    '{"text": "h\\u00e9llo \\u2713 \\u65e5\\u672c \\ud83d\\ude00", '
    '"evil": "a\\u001b]0;pwn\\u0007b\\u202ec\\u0085d\\u2028"}'
)
UTF8 = {"PYTHONIOENCODING": "utf-8"}
NOT_UTF8 = {"PYTHONIOENCODING": "ascii"}


def _ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    return r.stdout


def test_values_are_shown_as_utf8_text_escaping_what_a_terminal_obeys(env: Any, crc: Any) -> None:
    env.group_with_agents("uni", ["a"])
    env.client.kv_set("uni", "v", VALUE)
    for extra, shown in ((UTF8, SHOWN), (NOT_UTF8, ASCII)):
        out = _ok(crc("kv", "get", "uni", "v", extra_env=extra))
        assert json.loads(out) == VALUE and out == shown + "\n"
    # Latin-1 holds "é", not the rest.
    r = subprocess.run(
        [sys.executable, "-m", "cloudremotecontrol", "kv", "get", "uni", "v"],
        capture_output=True,
        env={**os.environ, **env.cli_env, "PYTHONIOENCODING": "latin-1"},
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert (
        r.stdout.startswith(b'{"text": "h\xe9llo \\u2713 ')
        and json.loads(r.stdout.decode("latin-1")) == VALUE
    )
    # --json is the same document as before: JSON, ASCII.
    doc = _ok(crc("kv", "get", "uni", "v", "--json", extra_env=UTF8))
    assert doc.isascii() and json.loads(doc)["value"] == VALUE

    # A script on the machine reads it the same way.
    r = env.agent_cli("a", "kv", "get", "v")
    assert (r.returncode, r.stdout) == (0, SHOWN + "\n"), r.stderr

    # A machine's message: its body from `crc wait --message`, and in `crc events`.
    emitted = env.agent_cli("a", "emit", "hi", json.dumps(VALUE))
    assert emitted.returncode == 0, emitted.stderr
    for extra, shown in ((UTF8, SHOWN), (NOT_UTF8, ASCII)):
        out = _ok(crc("wait", "uni", "--message", "hi", "--since", "0", extra_env=extra))
        assert out == shown + "\n"
        lines = _ok(crc("events", "uni", extra_env=extra)).splitlines()
        (line,) = [ln for ln in lines if "user.hi from a" in ln]
        body = line.split("user.hi from a: ", 1)[1]
        assert json.loads(body) == VALUE
        assert body == shown.replace(", ", ",").replace(": ", ":")


def test_machine_text_outside_json_prints_under_an_output_encoding_that_cannot_hold_it(
    env: Any, crc: Any
) -> None:
    """A progress line in `crc events` and `crc status`: printed with the characters the
    output's encoding lacks as escapes, not a UnicodeEncodeError."""
    env.group_with_agents("uni", ["a"])
    said = env.agent_cli("a", "progress", "installé ✓ 日本")
    assert said.returncode == 0, said.stderr
    for encoding, shown in (
        ("utf-8", "installé ✓ 日本"),
        ("latin-1", "installé \\u2713 \\u65e5\\u672c"),
    ):
        for command in (["events", "uni"], ["status", "uni"]):
            r = subprocess.run(
                [sys.executable, "-m", "cloudremotecontrol", *command],
                capture_output=True,
                env={**os.environ, **env.cli_env, "PYTHONIOENCODING": encoding},
                timeout=60,
            )
            out = r.stdout.decode(encoding)
            assert r.returncode == 0 and not r.stderr, (command, r.stderr)
            assert [ln for ln in out.splitlines() if f"  {shown}" in ln], (command, out)
