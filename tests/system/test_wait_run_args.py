"""`crc wait`, `crc run` and the SDK's waits refuse what can never be waited for at
once, with one line and the exit code of docs/reference.md, instead of waiting in vain
(or printing a traceback)."""

from __future__ import annotations

import pytest

from cloudremotecontrol.errors import InvalidInput, NotFound, Unavailable

SAFETY = 30.0  # each command here answers at once; a wait in vain runs into this


def _one_line(r, code: int) -> str:
    assert r.returncode == code, r.stdout + r.stderr
    assert r.stderr.startswith("crc: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == "", r.stdout
    return str(r.stderr)


@pytest.fixture
def quiet(env) -> str:
    """A group whose one machine never enrolls."""
    env.client.create_group("quiet", ["a"])
    return "quiet"


@pytest.mark.parametrize("value", ["nan", "inf", "NaNs", "infm"])
def test_a_duration_that_is_no_number_of_seconds_is_refused(crc, quiet, value):
    r = crc("run", quiet, "--to", "a", "--timeout", value, "--", "true", timeout=SAFETY)
    assert f"invalid duration '{value}'" in _one_line(r, 2)
    r = crc("wait", quiet, "--timeout", value, timeout=SAFETY)
    assert f"invalid duration '{value}'" in _one_line(r, 2)


@pytest.mark.parametrize("value", ["1e30", "100000000000000000000", "1e30m", "8d", "169h"])
def test_crc_wait_longer_than_a_week_is_refused_like_crc_run(crc, quiet, value):
    """Past 7d, the most `crc run --timeout` takes, a wait is a typo: refused at once
    (exit 2), not waited for till the end of time."""
    for extra in ([], ["--message", "done"]):
        r = crc("wait", quiet, *extra, "--timeout", value, timeout=SAFETY)
        line = _one_line(r, 2)
        assert line == f"crc: error: invalid duration '{value}': --timeout is at most 7d (a week)\n"
    r = crc("run", quiet, "--to", "a", "--timeout", value, "--", "true", timeout=SAFETY)
    assert _one_line(r, 2) == line  # the same words, before anything is sent


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e30, 604801.0])
def test_the_sdk_waits_refuse_what_crc_wait_refuses(env, quiet, value):
    """`Client.wait_ready` / `wait_message` with nan (waited for ever), inf or 1e30 (a
    typo): InvalidInput naming `timeout`, at once, as `crc wait`."""
    with pytest.raises(InvalidInput, match=r"^invalid duration .*: timeout "):
        env.client.wait_ready(quiet, timeout=value)
    with pytest.raises(InvalidInput, match=r"^invalid duration .*: timeout "):
        env.client.wait_message(quiet, "done", timeout=value)
    assert env.client.group(quiet)["machines"][0]["state"] == "pending"


def test_an_sdk_wait_past_its_deadline_looks_once(env, quiet):
    """A negative timeout (a script's ``deadline - time.time()``, already past) looks
    once, as 0 does: the wait ends with its timeout error, not InvalidInput."""
    for wait in (
        lambda: env.client.wait_ready(quiet, timeout=-1.5),
        lambda: env.client.wait_message(quiet, "done", timeout=-1.5),
    ):
        with pytest.raises(Unavailable) as err:
            wait()
        assert err.value.code == "timeout", err.value


def test_a_scenario_duration_that_no_wait_can_last_is_refused_with_its_line(env, crc):
    """YAML reads `.inf`, `.nan`, `1.0e+30` and 400 digits as numbers: each is refused
    with the file's line (exit 2), not waited for, nor a traceback when a thread is asked
    to wait that long or the number does not fit a float."""
    path = env.tmp / "long.yaml"
    path.write_text(
        "name: long\n"
        "provider: local\n"
        "timeouts: {ready: .inf, step: .nan}\n"
        "machines: {a: }\n"
        "steps:\n"
        f"  - {{name: one, run: 'true', retries: 1, retry_delay: {'9' * 400}}}\n"
        "  - {name: two, wait: {kv: k}, timeout: 1.0e+30}\n"
        "  - {name: three, wait: {kv: k}, timeout: 366d}\n"
    )
    r = crc("up", str(path), extra_env={"CRC_LOCAL_DIR": str(env.tmp / "machines")})
    line = _one_line(r, 2)
    assert line.startswith("crc: error: invalid scenario: long.yaml:3:19: timeouts.ready: "), line
    for problem in (
        "long.yaml:3:19: timeouts.ready: a duration must be at most 365d",
        "long.yaml:3:31: timeouts.step: expected a duration such as 90s, 15m or 8h",
        "long.yaml:6:55: steps.one.retry_delay: a duration must be at most 365d",
        "long.yaml:7:41: steps.two.timeout: a duration must be at most 365d",
        "long.yaml:8:43: steps.three.timeout: a duration must be at most 365d",
    ):
        assert problem in line, line
    with pytest.raises(NotFound):
        env.client.group("long")


def test_crc_wait_for_machines_not_in_the_group_says_so_like_crc_run(crc, quiet):
    r = crc("run", quiet, "--to", "b", "--", "true", timeout=SAFETY)
    assert _one_line(r, 4) == "crc: error: no machine 'b' in group 'quiet'\n"
    r = crc("wait", quiet, "--machines", "b", "--timeout", "1m", timeout=SAFETY)
    assert _one_line(r, 4) == "crc: error: no machine 'b' in group 'quiet'\n"
    r = crc("wait", quiet, "--machines", "a,b,c", "--timeout", "1m", timeout=SAFETY)
    assert _one_line(r, 4) == "crc: error: no machine 'b', 'c' in group 'quiet'\n"


@pytest.mark.parametrize("value", [",", "", " , "])
def test_crc_wait_for_no_machine_at_all_is_a_usage_error(crc, quiet, value):
    r = crc("wait", quiet, "--machines", value, "--timeout", "1m", timeout=SAFETY)
    assert "names no machine" in _one_line(r, 2)


@pytest.mark.parametrize(
    ("value", "what"),
    [
        ("a b", "'a b' is not a machine name: separate the names with commas"),
        ("a,b c", "'b c' is not a machine name: separate the names with commas"),
        ("a;b", "invalid machine 'a;b'"),
        ("A", "invalid machine 'A'"),
        ("-a", "invalid machine '-a'"),
        ("é", "invalid machine 'é'"),
    ],
)
def test_crc_wait_for_a_malformed_machine_list_is_a_usage_error(crc, quiet, value, what):
    """`--machines` takes a comma list of names: anything else is the user's mistake
    (exit 2, said as such), not a machine the group lacks (exit 4)."""
    r = crc("wait", quiet, "--machines", value, "--timeout", "1m", timeout=SAFETY)
    line = _one_line(r, 2)
    assert what in line and "--machines" in line and "usage: crc wait" in line, line


@pytest.mark.parametrize(
    ("value", "what"),
    [
        ("a b", "'a b' is not a machine name: give one name"),
        ("", "names no machine"),
        (" ", "names no machine"),
        ("a,b", "names more than one machine"),
        ("A", "invalid machine 'A'"),
    ],
)
def test_crc_wait_for_a_message_from_a_malformed_machine_is_a_usage_error(crc, quiet, value, what):
    """`--from ''` waited for a message from any machine, `--from 'a b'` said the group
    has no such machine (exit 4): both are the user's mistake, a usage error (exit 2)."""
    args = ("wait", quiet, "--message", "done", "--from", value, "--timeout", "10m")
    line = _one_line(crc(*args, timeout=SAFETY), 2)
    assert what in line and "--from" in line and "usage: crc wait" in line, line


def test_crc_wait_for_a_message_from_a_machine_not_in_the_group_fails_at_once(env, crc, quiet):
    r = crc("wait", quiet, "--message", "done", "--from", "b", "--timeout", "10m", timeout=SAFETY)
    assert _one_line(r, 4) == "crc: error: no machine 'b' in group 'quiet'\n"
    with pytest.raises(NotFound):
        env.client.wait_message(quiet, "done", "b", timeout=600)
    with pytest.raises(NotFound):
        env.client.wait_messages(quiet, "done", ["a", "zz"], timeout=600)


@pytest.mark.parametrize("type_", ["", "bad type!", "user.", "x" * 65])
def test_crc_wait_for_a_message_type_no_machine_can_send_is_refused(env, crc, quiet, type_):
    r = crc("wait", quiet, "--message", type_, "--timeout", "10m", timeout=SAFETY)
    assert "invalid message type" in _one_line(r, 2)
    with pytest.raises(InvalidInput):
        env.client.wait_message(quiet, type_, timeout=600)


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_crc_run_says_which_targets_are_not_connected(env, crc, json_flag):
    """A job to machines that are offline (or never enrolled) waits for them: crc run
    says so on stderr instead of sitting there silently."""
    agents = env.group_with_agents("mixed", ["a", "b"])
    env.client.create_group("later", ["p"])
    agents["b"].stop()
    env.wait_state("mixed", ["b"], "offline")
    args = ["--deliver-within", "2s", *json_flag, "--", "echo", "hi"]
    r = crc("run", "mixed", "--to", "all", *args, timeout=SAFETY)
    assert r.returncode == 125, r.stdout + r.stderr  # b: expired
    note = (
        "crc: not connected: b (offline); the job waits until they connect "
        "(--deliver-within sets a limit, Ctrl-C cancels it)\n"
    )
    assert note in r.stderr, r.stderr
    r = crc("run", "later", "--to", "all", *args, timeout=SAFETY)
    assert r.returncode == 125, r.stdout + r.stderr
    assert "crc: not connected: p (pending);" in r.stderr, r.stderr
    r = crc("run", "mixed", "--to", "a", *args, timeout=SAFETY)
    assert r.returncode == 0 and "not connected" not in r.stderr, r.stderr


def test_crc_wait_for_a_message_refuses_machines_it_would_ignore(crc, quiet):
    r = crc(
        "wait", quiet, "--message", "done", "--machines", "a", "--timeout", "10m", timeout=SAFETY
    )
    assert "--machines does not go with --message: use --from MACHINE" in _one_line(r, 2)
