"""The opt-in teardown at the provider when a group's TTL passes (``on_ttl: destroy``).

Real: the server process (its expiry loop, its encrypted key store, its calls to the
Vultr API through VultrProvider over HTTP), the SDK, `crc status`. Substituted: the
Vultr API (fakes.vultr_api.FakeVultr on loopback, every request and response checked against
Vultr's OpenAPI file); its instances do not boot here (test_scenario_vultr.py boots them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudremotecontrol.errors import Conflict, InvalidInput, NotFound
from cloudremotecontrol.master.client import Client
from cloudremotecontrol.master.localrun import ServerProcess
from cloudremotecontrol.providers.base import MachineSpec
from cloudremotecontrol.providers.vultr import VultrProvider
from fakes.vultr_api import DEFAULT_API_KEY, FakeVultr


class Cloud:
    def __init__(self, tmp: Path) -> None:
        self.fake = FakeVultr(boot=None, ready_delay=0.1).start()
        # The server calls the Vultr API its own environment names, never one from a request.
        self.server = ServerProcess(tmp / "srv", env={"CRC_VULTR_API_URL": self.fake.url})
        self.server.start()
        self.token = self.server.add_user("alice")
        self.client = Client(self.server.url, self.token, self.server.fingerprint)
        self.vultr = VultrProvider(
            api_key=DEFAULT_API_KEY, base_url=self.fake.url, poll_interval=0.1
        )
        self.tmp = tmp

    def instances(self, group: str, names: list[str]) -> list[str]:
        return [
            self.vultr.create(
                group,
                MachineSpec(name=n, os="linux", region="ewr", plan="vc2-1c-1gb", image="2284"),
                "#!/bin/sh\ntrue\n",
            ).id
            for n in names
        ]

    def teardown(self, group: str, status: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            td = self.client.group(group)["teardown"]
            if td and td["status"] == status:
                return td
            assert time.monotonic() < deadline, f"teardown of {group} not {status}: {td}"
            time.sleep(0.2)

    def crc(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "CRC_URL": self.server.url,
            "CRC_TOKEN": self.token,
            "CRC_FINGERPRINT": self.server.fingerprint,
            "CRC_CONFIG_DIR": str(self.tmp / "cfg"),
        }
        return subprocess.run(
            [sys.executable, "-m", "cloudremotecontrol", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def close(self) -> None:
        self.client.close()
        self.vultr.close()
        self.server.stop()
        self.fake.stop()


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    c = Cloud(tmp_path)
    try:
        yield c
    finally:
        c.close()


def test_the_server_destroys_the_machines_when_the_ttl_passes_if_the_owner_opted_in(cloud):
    cloud.client.create_group("shop", ["web", "db"], ttl=4)
    made_by_up = {"scenario": "keep", "provider": "vultr", "provider_settings": {}}
    # A `crc up` group without the opt-in: only revoked.
    cloud.client.create_group("keep", ["x"], ttl=4, settings={"crc_up": made_by_up})
    armed = cloud.client.arm_teardown("shop", "vultr", DEFAULT_API_KEY)["teardown"]
    assert armed["status"] == "armed" and armed["provider"] == "vultr"
    shop = cloud.instances("shop", ["web", "db"])
    keep = cloud.instances("keep", ["x"])
    other = cloud.instances("elsewhere", ["y"])  # not a group of this server at all
    # The key is in no answer, and not in the database file in clear.
    shown = cloud.client.group("shop")
    assert DEFAULT_API_KEY not in json.dumps(shown)
    assert DEFAULT_API_KEY.encode() not in (cloud.server.data_dir / "crc.db").read_bytes()
    note = cloud.crc("status", "shop")
    assert note.returncode == 0 and "the server destroys the machines at vultr" in note.stderr

    done = cloud.teardown("shop", "done")
    assert sorted(done["result"]["destroyed"]) == sorted(shop), done
    assert cloud.vultr.list("shop") == []
    assert [i.id for i in cloud.vultr.list("keep")] == keep  # no opt-in, nothing destroyed
    assert [i.id for i in cloud.vultr.list("elsewhere")] == other
    events = [e for e in cloud.client.events("shop") if e["type"].startswith("group.")]
    assert [e["type"] for e in events][-3:] == [
        "group.expired",
        "group.teardown",
        "group.teardown",
    ], events
    assert "the server now destroys the machines at vultr" in events[-3]["data"]["note"]
    assert events[-1]["data"]["status"] == "done"
    keep_events = [e for e in cloud.client.events("keep") if e["type"] == "group.expired"]
    assert keep_events[0]["data"]["note"] == (
        "its machines still exist at the provider: run `crc down`"
    )
    # Done: the encrypted key is gone from the database too.
    import sqlite3

    with sqlite3.connect(cloud.server.data_dir / "crc.db") as db:
        assert db.execute("SELECT secret FROM teardowns").fetchall() == [(None,)]
    out = cloud.crc("status", "shop")
    assert "the server destroyed 2 machine(s) at vultr" in out.stderr, out.stderr
    keep_row = [ln for ln in cloud.crc("group", "list").stdout.splitlines() if "keep" in ln]
    assert len(keep_row) == 1 and "EXPIRED: run crc down" in keep_row[0], keep_row
    out = cloud.crc("status", "keep")
    assert (
        "TTL passed: every credential is revoked; its machines still exist at the "
        "provider: run `crc down`"
    ) in out.stderr, out.stderr
    audit = cloud.client.audit("shop")
    assert [a["action"] for a in audit if a["action"].startswith("group.teardown")] == [
        "group.teardown_armed",
        "group.teardown",
    ], audit


def test_a_refused_key_is_reported_and_retried_and_the_machines_are_left(cloud):
    cloud.client.create_group("shop", ["web"], ttl=2)
    cloud.client.arm_teardown("shop", "vultr", "not-the-vultr-key")
    ids = cloud.instances("shop", ["web"])
    td = cloud.teardown("shop", "retry")
    assert td["attempts"] == 1 and td["next_try"] > time.time() + 10, td
    assert "401" in td["last_error"] or "refused" in td["last_error"].lower(), td
    assert "not-the-vultr-key" not in json.dumps(td)
    assert [i.id for i in cloud.vultr.list("shop")] == ids
    out = cloud.crc("status", "shop")
    assert "destroying the machines at vultr failed" in out.stderr, out.stderr
    assert "crc down" in out.stderr
    # The owner takes the key back (or runs `crc down`): nothing is stored any more.
    assert cloud.client.disarm_teardown("shop") == {"group": "shop", "teardown": None}
    assert cloud.client.group("shop")["teardown"] is None


def test_arming_needs_a_ttl_a_known_provider_and_the_owner(cloud):
    cloud.client.create_group("nottl", ["a"])
    with pytest.raises(InvalidInput, match="has no TTL"):
        cloud.client.arm_teardown("nottl", "vultr", "k")
    cloud.client.create_group("shop", ["a"], ttl=3600)
    with pytest.raises(InvalidInput):
        cloud.client._call(
            "PUT", "/groups/shop/teardown", json={"provider": "local", "api_key": "k"}
        )
    for bad in (
        {"provider": "vultr"},
        {"provider": "vultr", "api_key": ""},
        {"provider": "vultr", "api_key": "k", "api_url": "http://10.0.0.1/"},
        {"provider": "vultr", "api_key": "a b"},
    ):
        with pytest.raises(InvalidInput):
            cloud.client._call("PUT", "/groups/shop/teardown", json=bad)
    bob = Client(cloud.server.url, cloud.server.add_user("bob"), cloud.server.fingerprint)
    try:
        with pytest.raises(NotFound):
            bob.arm_teardown("shop", "vultr", "k")
    finally:
        bob.close()
    # Deleting the group drops the stored key with it.
    cloud.client.arm_teardown("shop", "vultr", "k")
    cloud.client.delete_group("shop")
    import sqlite3

    with sqlite3.connect(cloud.server.data_dir / "crc.db") as db:
        assert db.execute("SELECT COUNT(*) FROM teardowns").fetchone() == (0,)
    # An expired group cannot be armed any more.
    cloud.client.create_group("old", ["a"], ttl=1)
    deadline = time.monotonic() + 15
    while not cloud.client.group("old")["expired"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    with pytest.raises(Conflict, match="expired"):
        cloud.client.arm_teardown("old", "vultr", "k")


def test_a_teardown_cut_off_by_a_server_crash_is_taken_up_at_restart(cloud):
    """SQLite: one server alone on its database. Killed (-9) while it was destroying the
    machines, it leaves the teardown claimed; the restarted server takes it up at once
    rather than when the claim would run out (10 minutes)."""
    import sqlite3

    cloud.client.create_group("shop", ["web"], ttl=3600)
    cloud.client.arm_teardown("shop", "vultr", DEFAULT_API_KEY)
    ids = cloud.instances("shop", ["web"])
    cloud.server.proc.kill()  # kill -9
    cloud.server.proc.wait()
    # The state a kill in the middle of the teardown leaves: the TTL passed, the group is
    # expired and revoked, the teardown claimed by the dead process.
    now = time.time()
    with sqlite3.connect(cloud.server.data_dir / "crc.db") as db:
        db.execute(
            "UPDATE groups SET expires = ?, settings = json_set(settings, "
            "'$.expired', ?) WHERE name = 'shop'",
            (now - 5, now - 5),
        )
        db.execute(
            "UPDATE teardowns SET status = 'running', attempts = 1, claimed_until = ?", (now + 600,)
        )
    cloud.server.start()
    cloud.client.close()
    cloud.client = Client(cloud.server.url, cloud.token, cloud.server.fingerprint)
    done = cloud.teardown("shop", "done", timeout=20)
    assert done["result"]["destroyed"] == ids and done["attempts"] == 2, done
    assert cloud.vultr.list("shop") == []
