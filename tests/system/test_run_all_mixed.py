"""`all` names every machine and stands alone in `--to`: `all,a` is refused before any
job is started (a usage error, exit 2), not read as a machine named `all`."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("to", ["all,a", "a,all", "a, all", "*,a", "all,role=db"])
@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["run", "lab", "--to", "{to}", "--", "true"], id="run"),
        pytest.param(["push", "lab", "--to", "{to}", "{f}", "/tmp/x"], id="push"),
        pytest.param(["hosts", "sync", "lab", "--to", "{to}"], id="hosts-sync"),
        # It said "no machine 'all' in group 'lab'" (exit 4).
        pytest.param(["send", "lab", "--to", "{to}", "user.x", "{{}}"], id="send"),
    ],
)
def test_all_mixed_with_names_is_a_usage_error(env, crc, tmp_path, to, argv):
    env.client.create_group("lab", ["a", "b"])
    f = tmp_path / "f.txt"
    f.write_text("hi\n")
    r = crc(*(a.format(to=to, f=f) for a in argv), timeout=60)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "crc: error: " in r.stderr and "all" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert env.client.list_jobs("lab") == []  # nothing was started


def test_all_alone_still_means_every_machine(env, crc):
    env.group_with_agents("lab", ["a", "b"])
    r = crc("run", "lab", "--to", "all", "--", "true", timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("job ") and r.stderr.splitlines()[0].endswith(" on a, b"), r.stderr
    r = crc("run", "lab", "--to", "a,b", "--", "true", timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("to", ["all,a", "a, all"])
def test_the_server_and_sdk_refuse_all_mixed_with_names_too(env, to):
    """Not only the CLI: the SDK (and the server, for any client) say `all` stands alone,
    where they said there was no machine `all` (404)."""
    from wire_helpers import bearer, pinned_http

    from cloudremotecontrol.errors import InvalidInput

    env.client.create_group("lab", ["a", "b"])
    with pytest.raises(InvalidInput, match="`all` means every machine and stands alone"):
        env.client.send_message("lab", to, "user.x", {})
    with pinned_http(env.server) as http:
        r = http.post(
            "/v1/groups/lab/messages",
            json={"to": to, "type": "user.x", "body": {}},
            headers={"Authorization": bearer(env.token)},
        )
    assert r.status_code == 400, r.text
    assert "stands alone" in r.json()["error"]["message"]
