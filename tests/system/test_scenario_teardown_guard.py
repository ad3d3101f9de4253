"""Tearing a scenario down must not depend on the rest of its file, `crc group delete`
must not quietly orphan the machines `crc up` made, and a `crc up` refused before it
started shows no table of machines it never looked up. Real server, real `crc`, local
provider (plain processes)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cloudremotecontrol.providers.local import LocalProvider

SMALL = """\
name: {name}
provider: local
timeouts: {{ready: 60s, step: 60s}}
machines: {{a: , b: }}
steps:
  - name: nap
    run: sleep 0.1
  - name: setup
    script: setup.sh
"""


@contextlib.contextmanager
def _machines(env: Any, group: str) -> Iterator[LocalProvider]:
    env.cli_env["CRC_LOCAL_DIR"] = str(env.tmp / "machines")
    provider = LocalProvider(env.tmp / "machines")
    try:
        yield provider
    finally:
        for inst in provider.list(group):
            provider.destroy(inst.id)


def _up(env: Any, crc: Any, group: str) -> Path:
    (env.tmp / "setup.sh").write_text("echo set up\n")
    path = env.tmp / f"{group}.yaml"
    path.write_text(SMALL.format(name=group))
    r = crc("up", str(path), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return path


def test_down_of_a_file_broken_since_up_still_destroys_its_machines(env, crc):
    """A typo in a step and a script deleted since `crc up`: `crc down FILE` reads the
    name and provider, tears down, and says in one line what it ignored."""
    with _machines(env, "small") as provider:
        path = _up(env, crc, "small")
        assert len(provider.list("small")) == 2
        path.write_text(path.read_text().replace("run: sleep 0.1", "runn: sleep 0.1"))
        (env.tmp / "setup.sh").unlink()
        r = crc("down", str(path), timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        assert provider.list("small") == []
        assert "small" not in crc("group", "list").stdout
        warned = [line for line in r.stderr.splitlines() if "ignores" in line]
        assert len(warned) == 1, r.stderr
        assert warned[0].startswith(f"warning: {path} has 3 problem(s) that `crc down` ignores")
        assert "small.yaml:6:5: steps" in warned[0], warned
        assert "a step does exactly one of: run, script" in warned[0], warned
        assert warned[0].endswith(" and 2 more"), warned
        assert "gone" not in r.stderr and "Traceback" not in r.stderr


def test_down_of_a_file_whose_name_or_provider_is_unreadable_points_to_down_group(env, crc):
    bad = env.tmp / "bad.yaml"
    bad.write_text("name: [small\nprovider: local\n")
    r = crc("down", str(bad))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "`crc down --group NAME` tears the scenario down without its file" in r.stderr
    bad.write_text("name: small\nprovider: {name: local, netwrk: plain}\nmachines: {a: }\n")
    r = crc("down", str(bad))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "`crc down --group small` tears the scenario down" in r.stderr, r.stderr
    assert "provider.netwrk: unknown setting" in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr


def test_group_delete_refuses_a_group_crc_up_made_unless_forced(env, crc):
    with _machines(env, "kept") as provider:
        _up(env, crc, "kept")
        r = crc("group", "delete", "kept")
        assert r.returncode == 5, r.stdout + r.stderr
        assert "group kept was made by `crc up` (scenario kept)" in r.stderr, r.stderr
        assert "`crc down --group kept` destroys them" in r.stderr, r.stderr
        assert env.client.group("kept")["machines"]  # still there
        assert len(provider.list("kept")) == 2

        r = crc("group", "delete", "kept", "--force")
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.strip() == "deleted group kept (2 machines revoked)", r.stdout
        assert "`crc down --group kept --provider local` destroys them" in r.stderr, r.stderr
        assert len(provider.list("kept")) == 2  # only the group went
        r = crc("down", "--group", "kept", "--provider", "local", timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        assert provider.list("kept") == []


def test_group_delete_of_one_machine_says_machine(env, crc):
    r = crc("group", "create", "solo", "--machines", "m1")
    assert r.returncode == 0, r.stdout + r.stderr
    r = crc("group", "delete", "solo")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "deleted group solo (1 machine revoked)", r.stdout
    assert r.stderr == ""


def test_up_refused_before_it_starts_prints_no_table_of_unknown_addresses(env, crc):
    with _machines(env, "grown") as provider:
        path = _up(env, crc, "grown")
        path.write_text(path.read_text().replace("{a: , b: }", "{a: , b: , c: }"))
        r = crc("up", str(path))
        assert r.returncode == 5, r.stdout + r.stderr
        assert "machine(s) c were added to the scenario" in r.stderr, r.stderr
        assert "ADDRESS" not in r.stdout and "INSTANCE" not in r.stdout, r.stdout
        assert "FAILED" not in r.stdout, r.stdout
        r = crc("up", str(path), "--json")
        assert r.returncode == 5, r.stdout + r.stderr
        (summary,) = [d for d in map(json.loads, r.stdout.splitlines()) if d["event"] == "summary"]
        assert summary["refused"] is True and summary["ok"] is False, summary
        path.write_text(SMALL.format(name="grown"))
        r = crc("down", str(path), timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        assert provider.list("grown") == []
