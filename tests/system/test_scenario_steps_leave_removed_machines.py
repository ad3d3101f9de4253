"""A step's `to: all` (or a label) reaches the machines the scenario file names, never a
machine the file no longer has: `crc up` leaves those running and does not command
them (a stopped one would hold the step until its timeout). The real server, `crc`
CLI and local machines."""

from __future__ import annotations

import json

from cloudremotecontrol.providers.local import LocalProvider

FIRST = """\
name: shrinkrun
provider: local
timeouts: {ready: 60s}
machines:
  a: {labels: {role: web}}
  b: {labels: {role: web}}
"""

SECOND = """\
name: shrinkrun
provider: local
timeouts: {ready: 60s, step: 120s}
machines:
  a: {labels: {role: web}}
steps:
  - name: everyone
    run: echo hi from everyone
  - name: web
    to: role=web
    run: echo hi from web
  - name: note
    send: {type: hello, body: {}}
"""


def test_steps_to_all_or_a_label_leave_out_machines_the_file_no_longer_names(env, crc):
    env.cli_env["CRC_LOCAL_DIR"] = str(env.tmp / "machines")
    path = env.tmp / "shrinkrun.yaml"
    path.write_text(FIRST)
    provider = LocalProvider(env.tmp / "machines")
    try:
        r = crc("up", str(path), timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        path.write_text(SECOND)
        r = crc("up", str(path), "--json", timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        jobs = env.client.list_jobs("shrinkrun")
        assert len(jobs) == 2, jobs
        for job in jobs:  # the run step to all and the one to role=web
            targets = env.client.job(job["job_id"])["targets"]
            assert [t["machine"] for t in targets] == ["a"], job
        (note,) = [
            o
            for o in map(json.loads, r.stdout.splitlines())
            if o.get("step") == "note" and o.get("event") == "step" and o["status"] == "succeeded"
        ]
        assert "hello to a" in json.dumps(note), note
        assert "hello to a, b" not in json.dumps(note), note
        assert sorted(i.name for i in provider.list("shrinkrun")) == ["a", "b"]
        r = crc("down", str(path), timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        for inst in provider.list("shrinkrun"):
            provider.destroy(inst.id)
