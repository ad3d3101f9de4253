"""`crc job show` and `crc job list` say which file a push writes and a pull reads (the
path the job's spec holds), escaped as every other text from the server is."""

from __future__ import annotations

import contextlib
import json
import sqlite3

import pytest

from cloudremotecontrol.errors import InvalidInput

HOSTILE = "/tmp/app\x1b[2J.conf"
SHOWN = "/tmp/app\\x1b[2J.conf"


def test_job_show_and_list_name_the_file_of_a_push_and_a_pull(env, crc, tmp_path):
    env.client.create_group("lab", ["b"])  # never connects: the jobs stay queued
    src = tmp_path / "f.txt"
    src.write_text("hi\n")
    # Neither a push nor a pull takes a path with a control character (refused before
    # anything is sent); a job stored before that rule still holds one: shown escaped.
    with pytest.raises(InvalidInput, match="contains a control character"):
        env.client.push("lab", "b", str(src), HOSTILE)
    with pytest.raises(InvalidInput, match="contains a control character"):
        env.client.start_pull("lab", "b", HOSTILE)
    push_id = env.client.push("lab", "b", str(src), "/etc/app.conf")["job_id"]
    pull_id = env.client.start_pull("lab", "b", "/tmp/app.conf")["job_id"]
    with contextlib.closing(sqlite3.connect(env.server.data_dir / "crc.db")) as db, db:
        (stored,) = db.execute("SELECT spec FROM jobs WHERE id = ?", (pull_id,)).fetchone()
        spec = json.loads(stored) | {"path": HOSTILE}
        db.execute("UPDATE jobs SET spec = ? WHERE id = ?", (json.dumps(spec), pull_id))
    spec = json.loads(crc("job", "show", pull_id, "--json").stdout)["spec"]
    assert (spec["type"], spec["path"]) == ("file.get", HOSTILE)

    r = crc("job", "show", push_id)
    assert r.returncode == 0, r.stderr
    assert "\nfile.put: /etc/app.conf\n" in r.stdout, r.stdout
    r = crc("job", "show", pull_id)
    assert r.returncode == 0, r.stderr
    assert f"\nfile.get: {SHOWN}\n" in r.stdout, r.stdout
    assert "\x1b" not in r.stdout

    r = crc("job", "list", "lab")
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
    assert rows[push_id].endswith("file.put /etc/app.conf"), r.stdout
    assert rows[pull_id].endswith(f"file.get {SHOWN}"), r.stdout
    assert "\x1b" not in r.stdout
    jobs = {j["job_id"]: j for j in json.loads(crc("job", "list", "lab", "--json").stdout)["jobs"]}
    assert (jobs[push_id]["path"], jobs[pull_id]["path"]) == ("/etc/app.conf", HOSTILE)


def test_a_command_given_as_argv_is_shown_quoted_as_a_shell_would_need_it(env, crc):
    """`crc run -- printf '%s\\n' 'a b'` was listed as `printf %s\\n a b`: three
    arguments where there were two, and a line that does not run the same pasted back."""
    env.client.create_group("lab", ["b"])  # never connects: the job stays queued
    job = env.client.start_job("lab", "b", argv=["printf", "%s\n", "a b", "it's"])["job_id"]
    r = crc("job", "show", job)
    assert r.returncode == 0, r.stderr
    assert "printf '%s\\n' 'a b' 'it'\"'\"'s'" in r.stdout, r.stdout
    r = crc("job", "list", "lab")
    assert r.returncode == 0, r.stderr
    assert "printf '%s\\n' 'a b'" in r.stdout, r.stdout
    # A shell command is shown as written.
    job = env.client.start_job("lab", "b", command="echo $HOME 'x'")["job_id"]
    assert "echo $HOME 'x'" in crc("job", "show", job).stdout
