"""Against a real server and the real `crc` CLI:

* a group or machine name that would poison every peer's hosts file (``localhost``,
  ``ip6-allnodes``, ``1234``), and a machine named ``master`` or ``all``, are refused, by
  the CLI before the server is asked and by the server itself;
* ``PUT …/kv/KEY`` needs its ``value``; a message ``body`` that is no object is refused
  naming ``body``;
* `crc kv set` and `crc agent kv set` refuse a VALUE that starts as JSON and is not.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from wire_helpers import assert_error, assert_no_traceback_in_server_log, bearer, pinned_http


@pytest.fixture
def http(server: Any) -> Iterator[httpx.Client]:
    with pinned_http(server) as c:
        yield c


@pytest.mark.parametrize(
    ("body", "part"),
    [
        (
            {"name": "evil", "machines": [{"name": "web"}, {"name": "localhost"}]},
            "invalid machine 'localhost': it would shadow a system name",
        ),
        (
            {"name": "evil", "machines": [{"name": "ip6-allnodes"}]},
            "invalid machine 'ip6-allnodes': it would shadow a system name",
        ),
        (
            {"name": "evil", "machines": [{"name": "1234"}]},
            "invalid machine '1234': all digits",
        ),
        (
            {"name": "evil", "machines": [{"name": "web"}, {"name": "master"}]},
            "invalid machine 'master': it names the operator",
        ),
        (
            {"name": "evil", "machines": [{"name": "all"}]},
            "invalid machine 'all': `--to all` means every machine",
        ),
        (
            {"name": "localhost", "machines": [{"name": "web"}]},
            "invalid group 'localhost': it would shadow a system name",
        ),
    ],
)
def test_the_server_refuses_names_that_would_poison_hosts_files(env, http, body, part):
    alice = {"Authorization": bearer(env.token)}
    r = http.post("/v1/groups", json=body, headers=alice)
    assert_error(r, 400, "invalid_input", part)
    assert env.client.list_groups() == []
    assert_no_traceback_in_server_log(env.server)


def test_crc_group_create_refuses_them_before_asking_the_server(env, crc):
    r = crc("group", "create", "evil", "--machines", "localhost,all,master,1234,n")
    assert r.returncode == 2, r.stderr
    assert "'localhost': it would shadow a system name" in r.stderr
    assert "Traceback" not in r.stderr
    r = crc("group", "create", "localhost", "--machines", "web")
    assert r.returncode == 2 and "would shadow a system name" in r.stderr, r.stderr
    assert env.client.list_groups() == []
    # A machine named master got none of its peers' messages and passed for the operator
    # in its own; one named all could never be named alone.
    r = crc("group", "create", "evil", "--machines", "n,master")
    assert r.returncode == 2 and "'master': it names the operator" in r.stderr, r.stderr
    r = crc("group", "create", "evil", "--machines", "all")
    assert r.returncode == 2 and "`--to all` means every machine" in r.stderr, r.stderr
    assert env.client.list_groups() == []
    # Groups may be named so; one-letter names stay valid machine names.
    r = crc("group", "create", "master", "--machines", "n", "--json")
    assert r.returncode == 0, r.stderr
    assert [m["name"] for m in json.loads(r.stdout)["machines"]] == ["n"]


def test_a_kv_put_needs_its_value(env, http):
    env.client.create_group("lab", ["a"])
    alice = {"Authorization": bearer(env.token)}
    r = http.put("/v1/groups/lab/kv/k", json={}, headers=alice)
    assert_error(r, 400, "invalid_input", "invalid value: is required")
    assert r.json()["error"]["details"]["field"] == "value"
    assert http.get("/v1/groups/lab/kv/k", headers=alice).status_code == 404  # nothing stored
    r = http.put("/v1/groups/lab/kv/k", json={"value": None}, headers=alice)
    assert r.status_code == 200, r.text  # null said so is a value
    assert http.get("/v1/groups/lab/kv/k", headers=alice).json()["value"] is None
    assert_no_traceback_in_server_log(env.server)


@pytest.mark.parametrize("body", [[1, 2], "text", 5])
def test_a_message_body_that_is_no_object_is_refused_naming_body(env, http, body):
    env.client.create_group("lab", ["a"])
    alice = {"Authorization": bearer(env.token)}
    r = http.post(
        "/v1/groups/lab/messages",
        json={"to": "a", "type": "user.x", "body": body},
        headers=alice,
    )
    assert_error(r, 400, "invalid_input", "invalid body: must be an object")
    assert r.json()["error"]["details"]["field"] == "body"


def test_crc_kv_set_refuses_broken_json_and_keeps_plain_words(env, crc):
    env.client.create_group("lab", ["a"])
    for value, where in [('{"a":', "line 1 column 6"), ("[1, 2", "line 1 column 6"), ('"ab', "")]:
        r = crc("kv", "set", "lab", "k", value)
        assert r.returncode == 2, (value, r.stderr)
        assert "VALUE is not valid JSON at " + where in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = crc("kv", "get", "lab", "k")
    assert r.returncode == 4, r.stderr  # nothing was stored
    for value, stored in [("ready", "ready"), ('{"a": 1}', {"a": 1}), ('"{a"', "{a"), ("5", 5)]:
        r = crc("kv", "set", "lab", "k", value)
        assert r.returncode == 0, r.stderr
        assert env.client.kv_get("lab", "k")["value"] == stored


def test_crc_agent_kv_set_refuses_broken_json_too(env):
    env.group_with_agents("lab", ["a"])
    r = env.agent_cli("a", "kv", "set", "k", '{"a":')
    assert r.returncode == 2, r.stderr
    assert "VALUE is not valid JSON at line 1 column 6" in r.stderr, r.stderr
    r = env.agent_cli("a", "kv", "set", "k", "ready")
    assert r.returncode == 0, r.stderr
    assert env.client.kv_get("lab", "k")["value"] == "ready"
