"""Group and machine names end up in every peer's hosts file (``IP name name.GROUP``): a
name the system already gives a meaning (``localhost``) would shadow it on every peer,
and one the resolver reads as an address (``1234``) could never be looked up. Both are
refused where a group or machine is made (protocol/names.py ``check_new_name``: all
digits for a machine only, as a group is only looked up as ``machine.GROUP``), not where
one already made is named (an older server's stays manageable), and the agent's hosts
writer never writes a system name, whatever its server sends (agent/hosts_file.py)."""

from __future__ import annotations

import pytest

from cloudremotecontrol.agent.hosts_file import merge, render_block, sync_hosts
from cloudremotecontrol.errors import InvalidInput
from cloudremotecontrol.protocol.names import check_name, check_new_name, parse_target

SYSTEM = [
    "localhost",
    "localhost4",
    "localhost6",
    "ip6-localhost",
    "ip6-loopback",
    "ip6-localnet",
    "ip6-mcastprefix",
    "ip6-allnodes",
    "ip6-allrouters",
    "ip6-allhosts",
    "broadcasthost",
]
NUMERIC = ["1234", "0", "00", "4294967295", "0x1f", "0xc0a80001"]
FINE = [
    "n",
    "web",
    "db1",
    "1a",
    "a1",
    "1-2",
    "x1234",
    "0x",
    "0xg1",
    "my-localhost",
]


@pytest.mark.parametrize("what", ["group", "machine"])
@pytest.mark.parametrize("name", SYSTEM)
def test_a_system_name_is_refused_as_a_group_or_machine(name: str, what: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        check_new_name(name, what)
    assert exc.value.message.startswith(f"invalid {what} {name!r}: it would shadow a system name")
    assert exc.value.details.get("field") == what


@pytest.mark.parametrize("what", ["machine", "machine name"])
@pytest.mark.parametrize("name", NUMERIC)
def test_a_name_read_as_an_address_is_refused_as_a_machine(name: str, what: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        check_new_name(name, what)
    assert "is read as an IPv4 address" in exc.value.message
    assert exc.value.message.startswith(f"invalid {what} {name!r}: ")


@pytest.mark.parametrize("name", NUMERIC)
def test_a_group_may_be_all_digits(name: str) -> None:
    # Its machines are looked up as web.1234, never as a bare 1234.
    assert check_new_name(name, "group") == name


@pytest.mark.parametrize("what", ["group", "machine"])
@pytest.mark.parametrize("name", ["localhost", "1234"])
def test_a_name_already_made_is_still_named_as_before(name: str, what: str) -> None:
    # A group or machine an older server made: looked up, deleted, targeted as before.
    assert check_name(name, what) == name


@pytest.mark.parametrize("what", ["group", "machine"])
@pytest.mark.parametrize("name", FINE)
def test_other_names_stay_valid(name: str, what: str) -> None:
    from cloudremotecontrol.protocol.names import reserved_name

    assert reserved_name(name) is None
    assert check_new_name(name, what) == name


@pytest.mark.parametrize("name", ["all", "master"])
def test_a_group_may_be_named_all_or_master(name: str) -> None:
    assert check_new_name(name, "group") == name


@pytest.mark.parametrize("what", ["machine", "machine name"])
def test_a_machine_may_not_be_named_master_the_operator_s_name_in_messages(what: str) -> None:
    """A machine named master got none of its peers' messages (``--to master`` goes to
    the operator), and its own reached peers ``from: master``, as the operator's do."""
    with pytest.raises(InvalidInput) as exc:
        check_new_name("master", what)
    assert exc.value.message.startswith(f"invalid {what} 'master': it names the operator")
    assert exc.value.details.get("field") == what


def test_a_machine_may_not_be_named_all_which_names_every_machine() -> None:
    with pytest.raises(InvalidInput, match=r"^invalid machine 'all': `--to all` means every"):
        check_new_name("all", "machine")


@pytest.mark.parametrize("what", ["scenario", "scenario name", "machine name"])
def test_a_scenario_and_its_machines_follow_the_same_rule(what: str) -> None:
    # A scenario's name is its group's name; its machines are the group's machines.
    with pytest.raises(InvalidInput, match="would shadow a system name"):
        check_new_name("localhost", what)


@pytest.mark.parametrize("what", ["user", "token name", "step name"])
def test_names_that_never_reach_a_hosts_file_are_not_restricted(what: str) -> None:
    assert check_name("localhost", what) == "localhost"
    assert check_name("1234", what) == "1234"


def test_all_keeps_its_meaning_in_a_target() -> None:
    assert parse_target("all").all
    assert parse_target("web,localhost").names == ("web", "localhost")  # made earlier


LAB = [("10.0.0.1", ["db", "db.lab"])]


@pytest.mark.parametrize(
    "names",
    [
        ["localhost", "localhost.evil"],
        ["ip6-allnodes"],
        ["web", "web.localhost"],  # a group named localhost (an older server made it)
        ["broadcasthost"],
        ["LOCALHOST"],  # a resolver compares names without case
    ],
)
def test_the_hosts_writer_never_writes_a_reserved_name(tmp_path, names) -> None:
    entries = [*LAB, ("127.0.0.1", names)]
    with pytest.raises(ValueError, match=r"refusing host name .* for a hosts file: "):
        render_block(entries, "evil")
    with pytest.raises(ValueError, match="refusing host name"):
        merge(b"127.0.0.1 localhost\n", entries, "evil")
    hosts = tmp_path / "hosts"
    hosts.write_bytes(b"127.0.0.1 localhost\n")
    with pytest.raises(ValueError, match="refusing host name"):
        sync_hosts(str(hosts), entries, "evil")
    assert hosts.read_bytes() == b"127.0.0.1 localhost\n"  # untouched


def test_a_block_of_a_group_with_a_reserved_name_can_still_be_removed(tmp_path) -> None:
    # An agent leaving a group an older server let be named so cleans up after it.
    block = (
        b"# BEGIN cloudremotecontrol group=localhost (managed; do not edit)\n"
        b"10.0.0.1 db db.localhost\n"
        b"# END cloudremotecontrol group=localhost\n"
    )
    hosts = tmp_path / "hosts"
    hosts.write_bytes(b"127.0.0.1 localhost\n" + block)
    assert sync_hosts(str(hosts), [], "localhost")
    assert hosts.read_bytes() == b"127.0.0.1 localhost\n"


def test_the_hosts_writer_writes_an_all_digit_machine_an_older_server_made(tmp_path) -> None:
    # Looked up as 1234.lab (a bare 1234 is read as an address, harmlessly).
    entries = [*LAB, ("10.0.0.2", ["1234", "1234.lab"])]
    assert "10.0.0.2 1234 1234.lab" in render_block(entries, "lab")
