"""The scenario format: validation with file:line:field, the step graph, templates."""

from __future__ import annotations

import os
import socket
import textwrap
import threading
from importlib import resources
from pathlib import Path

import pytest

from cloudremotecontrol.errors import InvalidInput
from cloudremotecontrol.master.scenario import templates
from cloudremotecontrol.master.scenario.graph import Outcome, plan, run_steps
from cloudremotecontrol.master.scenario.model import (
    PushAction,
    RunAction,
    ScenarioError,
    WaitAction,
    load_scenario,
    parse_duration,
    parse_scenario,
)

GOOD = """\
name: lab
provider: local
ttl: 2h
variables:
  db_name: shop
machines:
  mysql: {labels: {role: db}}
  web:
    labels: {role: web}
  dev:
steps:
  - name: install
    to: role=db
    run: echo {{ vars.db_name }}
    retries: 2
    retry_delay: 1s
  - name: config
    to: web
    needs: []
    push: {content: "db={{ machines.mysql.ip }}", dest: /srv/app.conf, mode: "0644"}
  - name: hosts
    needs: [install, config]
    hosts: {}
  - name: reported
    to: mysql
    wait: {message: success}
  - name: tell
    send: {type: go, body: {n: 1}}
"""


def parse(text: str, name: str = "s.yaml"):
    return parse_scenario(textwrap.dedent(text), name)


def problems(text: str) -> list[str]:
    with pytest.raises(ScenarioError) as info:
        parse(text)
    return [str(p) for p in info.value.problems]


# -- the model ---------------------------------------------------------------------------
def test_good_scenario_reads_into_a_typed_model():
    s = parse(GOOD)
    assert s.name == "lab" and s.provider == "local" and s.ttl == 7200
    assert s.machine_names == ["mysql", "web", "dev"]
    assert s.machine("web").labels == {"role": "web"} and s.machine("dev").os == "linux"
    install, config, hosts, reported, tell = s.steps
    assert install.targets == ("mysql",) and install.to == "role=db"
    assert install.retries == 2 and install.retry_delay == 1.0
    assert isinstance(install.action, RunAction) and install.action.command is not None
    assert isinstance(config.action, PushAction) and config.action.mode == "0644"
    assert hosts.needs == ("install", "config") and hosts.targets == ("mysql", "web", "dev")
    assert reported.action == WaitAction("message", type="user.success")
    assert tell.action.type == "user.go" and tell.action.body == {"n": 1}


def test_steps_without_needs_follow_the_step_before_them():
    s = parse(GOOD)
    assert s.steps[0].needs == ()  # the first step
    assert s.steps[1].needs == ()  # needs: [] -> parallel with install
    assert s.steps[3].needs == ("hosts",)
    assert s.steps[4].needs == ("reported",)


def test_every_problem_is_reported_with_file_line_column_and_field():
    got = problems("""\
        name: Lab
        provider: {name: local, colour: blue}
        machines:
          mysql: {os: windows}
          mysql: {}
        steps:
          - name: install
            to: role=nobody
            run: echo hi
            retries: -1
          - to: mysql
            run: echo
            push: {dest: /x, content: y}
          - push: {dest: relative, content: x, mode: 644}
        """)
    assert "s.yaml:1:7: name: invalid scenario name 'Lab'" in got[0]
    expected = [
        "s.yaml:2:25: provider.colour: unknown setting for the local provider",
        "s.yaml:5:3: machines.mysql: duplicate key",
        "s.yaml:4:3: machines.mysql.os: the local provider runs Linux machines only",
        "s.yaml:8:9: steps.install.to: no machine has the label role=nobody",
        "s.yaml:10:14: steps.install.retries: expected a whole number from 0 to 100",
        "s.yaml:11:5: steps[1]: a step does exactly one of",
        "s.yaml:14:18: steps.push-3.push.dest: remote path 'relative' must be absolute",
        "s.yaml:14:46: steps.push-3.push.mode: expected an octal mode in quotes",
    ]
    for want in expected:
        assert any(p.startswith(want) for p in got), (want, got)


def test_a_step_selects_machines_by_several_labels_as_a_job_does():
    # Two pairs were read as one label ("zone=a" the value of role); a key named twice
    # is refused as crc run refuses it.
    text = """\
        name: lab
        machines:
          x: {labels: {role: db, zone: a}}
          y: {labels: {role: web, zone: a}}
          z: {labels: {role: db, zone: b}}
        steps:
          - name: one
            to: role=db,zone=a
            run: echo hi
        """
    assert parse(text).steps[0].targets == ("x",)
    got = problems(text.replace("role=db,zone=a", "role=db,role=web"))
    assert any(
        p.startswith("s.yaml:8:9: steps.one.to: selector 'role=db,role=web' names label role")
        for p in got
    ), got
    got = problems(text.replace("role=db,zone=a", "role=web,zone=b"))
    assert any("steps.one.to: no machine has the labels role=web,zone=b" in p for p in got), got


def test_error_message_lists_problems_one_per_line():
    with pytest.raises(ScenarioError) as info:
        parse("name: lab\nmachines: {a: {}}\nsteps:\n  - run: [1, {x: 2}]\n")
    assert info.value.exit_code == 2
    assert info.value.message.startswith("invalid scenario:\n  s.yaml:4:")
    assert "s.yaml:4:14: steps.run-1.run[1]: expected a string" in info.value.message


def test_a_key_yaml_reads_as_another_type_is_named_with_what_it_reads_as():
    # YAML 1.1 reads on/off/yes/no as booleans: `on:` is not the key a user typed.
    with pytest.raises(ScenarioError) as info:
        parse("name: lab\nmachines: {a: {}}\nsteps:\n  - run: echo\n    on: a\n  - {1: x}\n")
    message = info.value.message
    on_key = "s.yaml:5:5: steps.run-1: key 'on' is not a string in YAML (it reads as bool True)"
    assert on_key in message
    assert "quote it if it is meant (expected one of: name, description, to," in message
    assert "s.yaml:6:6: steps[1]: key '1' is not a string in YAML (it reads as int 1)" in message


def test_needs_must_name_steps_and_must_not_cycle():
    got = problems("""\
        name: lab
        machines: {a: }
        steps:
          - {name: one, needs: [two], run: "true"}
          - {name: two, needs: one, run: "true"}
          - {name: three, needs: [nope], run: "true"}
        """)
    assert any(p.startswith("s.yaml:6:5: steps.three.needs: no step named 'nope'") for p in got)
    assert any("steps need each other in a cycle: one -> two -> one" in p for p in got), got


def test_a_needs_typo_is_reported_with_every_other_problem():
    got = problems("""\
        name: lab
        machines: {a: }
        steps:
          - {name: one, to: nosuch, needs: [tow], run: "true"}
          - {name: two, needs: [one], run: 5, bogus: 1}
          - {name: three, needs: [two, too], wait: ready}
        """)
    # The typo in a step with another problem, and in a valid step; and no false "no
    # step named" for steps that exist but have problems of their own.
    assert any("steps.one.needs: no step named 'tow'" in p for p in got), got
    assert any("steps.one.to: no machine nosuch" in p for p in got), got
    assert any("steps.three.needs: no step named 'too'" in p for p in got), got
    assert any("steps.two.bogus: unknown field" in p for p in got), got
    assert not any("no step named 'one'" in p or "no step named 'two'" in p for p in got), got


@pytest.mark.parametrize("mode", ["auto", "netns", "isolated", "plain", "host"])
def test_local_network_setting_takes_the_mode_names_of_the_docs(mode):
    s = parse_scenario(
        f"name: lab\nprovider: {{name: local, network: {mode}}}\nmachines: {{a: }}\n",
        Path("s.yaml"),
    )
    assert s.provider_settings == {"network": mode}


def test_local_network_settings_are_the_ones_the_provider_declares():
    from cloudremotecontrol.providers.local import NETWORK_SETTINGS, LocalProvider

    # What the parser accepts is what the provider declares (capabilities), and that is
    # the list of modes the docs give (the test above).
    assert LocalProvider.capabilities.settings["network"] == NETWORK_SETTINGS
    assert set(NETWORK_SETTINGS) == {"auto", "netns", "isolated", "plain", "host"}


def test_step_names_are_unique():
    got = problems("""\
        name: lab
        machines: {a: }
        steps:
          - {name: x, run: "true"}
          - {name: x, run: "false"}
        """)
    assert got == ["s.yaml:5:5: steps[1].name: another step is named 'x'"]


def test_template_references_are_checked_when_loading():
    got = problems("""\
        name: lab
        variables: {port: 80}
        machines: {a: }
        steps:
          - run: echo {{ vars.nope }} {{ machines.b.ip }} {{ machines.a.colour }} {{ x }}
          - send: {type: hi, body: {at: "{{ vars.port | upper }}"}}
        """)
    text = "\n".join(got)
    assert "s.yaml:5:10: steps.run-1.run: {{ vars.nope }}: no variable 'nope'" in text
    assert "{{ machines.b.ip }}: no machine 'b'" in text
    assert "{{ machines.a.colour }}: machines have no field 'colour'" in text
    assert "{{ x }}: unknown name 'x'" in text
    assert "unknown filter 'upper'" in text


def test_the_machine_names_are_not_copied_for_every_text_checked(monkeypatch):
    """Templates are checked in every command, env value and message string: with 1000
    machines and 100,000 of those, a copy of the names for each was 10^8 inserts (seconds
    of a large file). They are looked up in one container instead."""
    given = []
    real = templates.check

    def check(text, variables, machines, dialect=None):
        given.append(machines)  # kept: no id is reused
        return real(text, variables, machines, dialect)

    monkeypatch.setattr(templates, "check", check)
    env = "\n".join(f"      K{i}: '{{{{ machines.m{i % 50}.ip }}}}'" for i in range(200))
    machines = "\n".join(f"  m{i}:" for i in range(50))
    parse(
        f"name: lab\nmachines:\n{machines}\nsteps:\n"
        f"  - run: echo hi\n    env:\n{env}\n"
        "  - send: {type: go, body: {a: x, b: [y, z]}}\n"
    )
    assert len(given) > 200
    assert len({id(m) for m in given}) == 1 and "m49" in given[0]


def test_yaml_syntax_errors_name_their_line():
    got = problems("name: lab\nmachines:\n  a: [unclosed\n")
    assert got[0].startswith("s.yaml:4:1: not valid YAML")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: a\nmachines: {a: }\nvariables: &x [*x]\n", "s.yaml:3:12: not valid YAML: found"),
        ("name: a\nmachines: {a: }\nvariables: {d: 2024-13-45}\n", "s.yaml:3:12: not valid YAML"),
        ("name: !!python/name:os.system a\nmachines: {a: }\n", "s.yaml:1:7: not valid YAML"),
        ("name: a\nmachines: {a: }\nvariables: {x: " + "[" * 2000 + "]" * 2000 + "}\n", ""),
    ],
)
def test_yaml_that_has_no_value_is_a_problem_not_a_crash(text, expected):
    """A self-referencing alias, a date that does not exist, a tag PyYAML's safe loader
    does not know, nesting deeper than its recursive composer goes: one problem each."""
    got = problems(text)
    assert got[0].startswith(expected or "s.yaml:1:1: nested too deeply"), got


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "name: 2024-02-30\nmachines: {a: }\n",
            "s.yaml:1:7: not valid YAML: day is out of range for month",
        ),
        (
            "name: a\nmachines: {a: }\ntimeouts: {ready: " + "9" * 5000 + "}\n",
            "s.yaml:3:19: timeouts.ready: number too large (5000 digits)",
        ),
        (
            "name: a\nmachines: {a: }\nsteps:\n  - {run: x, timeout: " + "9" * 5000 + "}\n",
            "s.yaml:4:23: steps.run-1.timeout: number too large (5000 digits)",
        ),
        (
            "name: a\nmachines: {a: }\nvariables: {n: [1, -" + "9" * 5000 + "]}\n",
            "s.yaml:3:20: variables: number too large (5000 digits)",
        ),
    ],
)
def test_a_value_yaml_cannot_read_is_one_problem(text, expected):
    """Not also "expected a string" or "None is not a duration" for the same value."""
    got = problems(text)
    assert len(got) == 1 and got[0].startswith(expected), got


def test_a_problem_quoting_a_huge_value_is_shortened_in_the_message():
    with pytest.raises(ScenarioError) as info:
        parse("name: " + "x" * 100_000 + "\nmachines: {a: }\n")
    (line,) = info.value.message.splitlines()[1:]
    assert line.startswith("  s.yaml:1:7: name: invalid scenario name 'xxx") and len(line) < 500


def test_a_push_of_a_directory_or_a_device_says_what_it_is(tmp_path):
    got = problems(f"""\
        name: lab
        machines: {{a: }}
        steps:
          - {{name: d, push: {{src: {tmp_path}, dest: /tmp/x}}}}
          - {{name: z, push: {{src: /dev/zero, dest: /tmp/x}}}}
          - {{name: n, push: {{src: {tmp_path}/none, dest: /tmp/x}}}}
        """)
    assert [p.split(": ", 2)[1:] for p in got] == [
        [
            "steps.d.push.src",
            f"{tmp_path} is not a regular file but a directory: push sends one file",
        ],
        [
            "steps.z.push.src",
            "/dev/zero is not a regular file but a device: push sends one file",
        ],
        ["steps.n.push.src", f"no such file: {tmp_path}/none"],
    ]


def test_what_the_server_would_refuse_is_refused_before_any_machine_is_made():
    """A job longer than a week, a group TTL over a year: the server refuses them, and
    `crc up` found out only after it made the group and paid for the machines."""
    got = problems("""\
        name: lab
        ttl: 400d
        timeouts: {step: 8d}
        machines: {a: }
        steps:
          - {name: long, run: "true", timeout: 169h}
          - {name: default, run: "true"}
          - {name: week, run: "true", timeout: 7d}
          - {name: wait, wait: {kv: k}}
        """)
    assert got == [
        "s.yaml:2:6: ttl: at most 365d (the server's limit for a group)",
        "s.yaml:6:40: steps.long.timeout: 608400s is longer than a job may run (7d)",
        "s.yaml:7:5: steps.default.timeout: 691200s is longer than a job may run (7d): "
        "it is timeouts.step",
    ]


def test_more_machines_or_steps_than_the_server_takes_are_refused_when_the_file_is_read():
    """1001 machines: the server refuses the group only once `crc up` runs (logged in);
    501 steps: the dashboard would not show the run. Both are file errors (exit 2), told
    once, without reading every machine or step."""
    machines = "".join(f"  m{i}: {{}}\n" for i in range(1001))
    got = problems(f"name: big\nmachines:\n{machines}")
    assert got == [
        "s.yaml:3:3: machines: 1001 machines: at most 1000 (the server's limit for a group)"
    ]
    steps = "".join(f"  - {{name: s{i}, run: 'true'}}\n" for i in range(501))
    got = problems(f"name: big\nmachines: {{a: }}\nsteps:\n{steps}")
    assert got == ["s.yaml:4:3: steps: 501 steps: at most 500"]
    assert (
        len(parse(f"name: big\nmachines: {{a: }}\nsteps:\n{steps[: steps.rindex('  -')]}").steps)
        == 500
    )


def test_vultr_machines_need_region_plan_and_image():
    got = problems("""\
        name: lab
        provider: vultr
        defaults: {region: ewr, image: {linux: "2284"}}
        machines:
          a: {}
          w: {os: windows}
        steps: []
        """)
    assert got == [
        "s.yaml:5:3: machines.a.plan: the vultr provider needs a plan (here or in defaults)",
        "s.yaml:6:3: machines.w.plan: the vultr provider needs a plan (here or in defaults)",
        "s.yaml:6:3: machines.w.image: the vultr provider needs an image (here or in defaults)",
    ]
    ok = parse("""\
        name: lab
        provider: vultr
        defaults: {region: ewr, plan: vc2-1c-1gb, image: {linux: "2284", windows: "124"}}
        machines:
          a: {provider: {enable_ipv6: true}}
          w: {os: windows}
        """)
    assert ok.machine("a").image == "2284" and ok.machine("w").image == "124"
    assert ok.machine("a").extra == {"enable_ipv6": True}
    # A field the provider does not take is refused here, before any machine exists.
    with pytest.raises(ScenarioError) as info:
        parse("""\
            name: lab
            provider: vultr
            defaults: {region: ewr, plan: vc2-1c-1gb, image: "2284"}
            machines:
              a: {}
              b: {provider: {bogus: 1, user_data: x, enable_ipv6: true}}
            """)
    [problem] = [str(p) for p in info.value.problems]
    assert "machines.b.provider: not a vultr option: bogus, user_data (allowed: " in problem
    assert "enable_ipv6" in problem.split("allowed:")[1]


def test_script_steps_read_the_file_next_to_the_scenario(tmp_path):
    (tmp_path / "setup.sh").write_text("echo {{ vars.x }}\n")
    (tmp_path / "conf.txt").write_text("hello\n")
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: lab\nvariables: {x: 1}\nmachines: {a: }\nsteps:\n"
        "  - script: setup.sh\n  - push: {src: conf.txt, dest: /srv/c}\n"
        "  - script: missing.sh\n"
    )
    with pytest.raises(ScenarioError) as info:
        parse_scenario(path.read_text(), path)
    assert [str(p) for p in info.value.problems] == [
        f"s.yaml:7:13: steps.script-3.script: cannot read {tmp_path}/missing.sh: "
        "No such file or directory"
    ]
    path.write_text(path.read_text().replace("  - script: missing.sh\n", ""))
    s = parse_scenario(path.read_text(), path)
    assert s.steps[0].action.command == "echo {{ vars.x }}\n"
    (tmp_path / "setup.sh").write_bytes(b"echo one\r\necho two\r\n")  # saved on Windows
    assert parse_scenario(path.read_text(), path).steps[0].action.command == (
        "echo one\necho two\n"
    )
    assert s.steps[0].action.shell == "sh"
    assert s.steps[1].action.src == tmp_path / "conf.txt"


def test_durations():
    assert parse_duration(90) == 90 and parse_duration("15m") == 900
    assert parse_duration("1.5h") == 5400
    for bad in ("soon", 0, "-1s", True):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert parse_duration("365d") == 365 * 86400


@pytest.mark.parametrize(
    ("value", "said"),
    [
        (float("nan"), "expected a duration such as 90s, 15m or 8h"),
        (float("-inf"), "a duration must be positive"),
        (-(10**400), "a duration must be positive"),
        (float("inf"), "a duration must be at most 365d"),
        (1e30, "a duration must be at most 365d"),
        (10**400, "a duration must be at most 365d"),
        ("9" * 400, "a duration must be at most 365d"),
        ("366d", "a duration must be at most 365d"),
    ],
)
def test_a_duration_no_wait_can_last_is_a_value_error(value, said):
    """YAML reads `.nan`, `.inf`, `1.0e+30` and 400 digits as numbers: each is a
    problem of the file (a ValueError), never an OverflowError or a wait without end."""
    with pytest.raises(ValueError, match=f"^{said}$"):
        parse_duration(value)


def test_the_embedded_demo_scenario_is_valid():
    text = resources.files("cloudremotecontrol.master.scenarios").joinpath("demo.yaml").read_text()
    s = parse_scenario(text, "demo.yaml")
    assert s.machine_names == ["mysql", "web", "dev"]
    assert plan(s.steps)[0] == ["install-mysql", "prepare-web"]


# -- templates ---------------------------------------------------------------------------
CTX = {
    "vars": {"name": "it's", "port": 80, "on": True},
    "scenario": {"name": "lab"},
    "machines": {
        "db": {
            "ip": "10.0.0.5",
            "ips": ["10.0.0.5", "fd00::5"],
            "labels": {"role": "db"},
            "private_ip": None,
        }
    },
}


def test_templates_render_paths_indexes_and_filters():
    r = templates.render
    assert r("{{machines.db.ip}}:{{ vars.port }}", CTX) == "10.0.0.5:80"
    assert r("{{ machines.db.ips.1 }} {{ machines.db.labels.role }}", CTX) == "fd00::5 db"
    assert r("echo {{ vars.name | quote }}", CTX) == "echo 'it'\"'\"'s'"
    assert r("{{ machines.db.labels | json }} {{ vars.on }}", CTX) == '{"role": "db"} true'
    assert r("no tags {here}", CTX) == "no tags {here}"
    assert templates.render_value({"k": ["{{ scenario.name }}", 1]}, CTX) == {"k": ["lab", 1]}


def test_templates_refuse_unknown_and_missing_values():
    with pytest.raises(templates.TemplateError, match="has no 'nope'"):
        templates.render("{{ machines.nope.ip }}", CTX)
    with pytest.raises(templates.TemplateError, match="no value yet"):
        templates.render("{{ machines.db.private_ip }}", CTX)
    with pytest.raises(templates.TemplateError, match="expected a dotted name"):
        templates.render("{{ __import__('os') }}", CTX)


def test_templates_refuse_values_with_no_json_form():
    ctx = {**CTX, "vars": {"nan": float("nan"), "inf": [float("inf")], "raw": b"hi"}}
    for tag in ("{{ vars.nan | json }}", "{{ vars.inf }}", "{{ vars.raw | json }}"):
        with pytest.raises(templates.TemplateError, match="JSON form"):
            templates.render(tag, ctx)


@pytest.mark.parametrize("value", [b"hi", {"a", "b"}])
def test_templates_refuse_binary_and_set_values_as_text(value):
    # str() would have written b'hi' or {'a', 'b'} into the command.
    ctx = {**CTX, "vars": {"v": value}}
    for dialect in (None, "sh", "powershell"):
        with pytest.raises(templates.TemplateError, match="no text form"):
            templates.render("echo {{ vars.v }}", ctx, dialect)


def test_a_step_whose_template_cannot_be_rendered_fails_with_that_not_an_internal_error():
    s = parse(
        "name: lab\nmachines: {a: }\nsteps:\n  - {name: tell, run: 'echo {{ machines.a.ips.5 }}'}\n"
    )

    def execute(step, attempt):
        return Outcome(bool(templates.render(step.action.command, CTX)))

    results = run_steps(s.steps, execute)
    assert results["tell"].status == "failed"
    assert results["tell"].message.startswith("{{ machines.a.ips.5 }}: "), results["tell"]
    assert "internal error" not in results["tell"].message


def test_a_command_the_agent_would_refuse_is_refused_at_load():
    got = problems("""\
        name: lab
        machines: {a: }
        steps:
          - {name: one, run: "echo \\0", env: {"A=B": c}}
          - {name: two, run: ["echo", "a\\0b"]}
          - {name: three, run: "true", env: {OK: "x\\0"}}
        """)
    assert got == [
        "s.yaml:4:22: steps.one.run: command must be a non-empty string without NUL characters",
        "s.yaml:4:38: steps.one.env: invalid variable name 'A=B' in env: a name must be "
        "non-empty, without '=' or NUL characters",
        "s.yaml:5:22: steps.two.run: argv must be a non-empty list of strings without NUL "
        "characters",
        "s.yaml:6:37: steps.three.env: env must map variable names to strings without NUL "
        "characters: the value of 'OK' is not one",
    ], got


def test_files_are_read_only_up_to_their_bound(tmp_path):
    """A scenario or a script step naming a huge file is refused at load, after reading
    one byte more than the bound."""
    huge = tmp_path / "huge"
    with huge.open("wb") as fh:
        fh.truncate((4 << 20) + 1)  # sparse: nothing written
    with pytest.raises(InvalidInput, match="over 4096 KiB, the most a scenario may be"):
        load_scenario(huge)
    path = tmp_path / "s.yaml"
    path.write_text(f"name: lab\nmachines: {{a: }}\nsteps:\n  - script: {huge}\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    [problem] = info.value.problems
    assert f"steps.script-1.script: {huge} is over 128 KiB" in str(problem), problem


def test_a_device_a_socket_or_a_directory_is_refused_and_a_fifo_never_waited_for(tmp_path):
    """A regular file, or a pipe, is read: a device such as /dev/zero never ends, and is
    refused by name and kind, as a socket or a directory is, as the scenario file, a
    step's script or a push's src. A FIFO no program writes to used to be opened and
    waited on for ever: it reads as empty at once (a scenario) and a push refuses it."""
    fifo = tmp_path / "ff.yaml"
    os.mkfifo(fifo)
    sock_path = tmp_path / "s.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    try:
        with pytest.raises(ScenarioError) as info:
            load_scenario(fifo)
        assert "empty file" in str(info.value.problems[0]), info.value.problems
        for path, kind in [
            (Path("/dev/zero"), "a device"),
            (sock_path, "a socket"),
            (tmp_path, "a directory"),
        ]:
            with pytest.raises(InvalidInput) as err:
                load_scenario(path)
            assert err.value.message == (
                f"{path} is not a regular file but {kind}: a scenario is read from a "
                "regular file only"
            )
        path = tmp_path / "s.yaml"
        path.write_text(
            "name: lab\nmachines: {a: }\nsteps:\n  - script: /dev/zero\n"
            "  - push: {src: s.sock, dest: /tmp/x}\n  - push: {src: ff.yaml, dest: /tmp/y}\n"
        )
        with pytest.raises(ScenarioError) as info:
            load_scenario(path)
        assert [f"{p.field}: {p.message}" for p in info.value.problems] == [
            "steps.script-1.script: /dev/zero is not a regular file but a device: a script "
            "(a job's command) is read from a regular file only",
            f"steps.push-2.push.src: {sock_path} is not a regular file but a socket: push "
            "sends one file",
            f"steps.push-3.push.src: {fifo} is not a regular file but a FIFO: push sends one file",
        ]
    finally:
        sock.close()


def test_a_scenario_is_read_from_a_pipe_as_a_shell_gives_one(tmp_path):
    # crc up <(envsubst < lab.yaml): a pipe with its writer, read to its end.
    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "w") as w:
        w.write("name: lab\nmachines: {a: }\nsteps:\n  - run: echo hi\n")
    try:
        s = load_scenario(Path(f"/dev/fd/{read_fd}"))
    finally:
        os.close(read_fd)
    assert s.name == "lab" and [m.name for m in s.machines] == ["a"]


def test_a_few_lines_of_aliases_standing_for_billions_of_values_are_refused():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    bomb = "\n".join(["name: lab", "machines: {a: }", "variables:"] + [f"  {x}" for x in lines])
    bomb += "\nsteps:\n  - {run: 'echo {{ vars.a9 | json }}'}\n"
    with pytest.raises(ScenarioError) as info:
        parse_scenario(bomb)
    [problem] = info.value.problems
    assert "once its aliases (*name) are expanded" in str(problem)
    # A few aliases of a modest anchor are what anchors are for.
    fine = bomb.split("  a2:")[0] + "\nsteps:\n  - {run: 'true'}\n"
    assert parse_scenario(fine).name == "lab"


# -- the graph ---------------------------------------------------------------------------
GRAPH = """\
name: lab
machines: {a: }
steps:
  - {name: left, needs: [], run: "true"}
  - {name: right, needs: [], run: "true"}
  - {name: join, needs: [left, right], run: "true"}
  - {name: after, run: "true"}
  - {name: alone, needs: [], run: "true"}
"""


def test_plan_puts_independent_steps_in_the_same_wave():
    s = parse(GRAPH)
    assert plan(s.steps) == [["left", "right", "alone"], ["join"], ["after"]]


def test_independent_steps_really_run_at_the_same_time():
    s = parse(GRAPH)
    # left and right can only both pass the barrier if they run concurrently.
    barrier = threading.Barrier(2, timeout=10)
    order: list[str] = []
    lock = threading.Lock()

    def execute(step, attempt):
        if step.name in ("left", "right"):
            barrier.wait()
        with lock:
            order.append(step.name)
        return Outcome(True)

    results = run_steps(s.steps, execute, max_parallel=4)
    assert all(r.status == "succeeded" for r in results.values())
    assert order.index("join") > max(order.index("left"), order.index("right"))
    assert order.index("after") > order.index("join")


def test_a_failure_skips_what_needs_it_and_the_rest_goes_on():
    s = parse(GRAPH)
    events = []

    def execute(step, attempt):
        return Outcome(step.name != "right", "boom" if step.name == "right" else "")

    results = run_steps(s.steps, execute, notify=lambda e, st, d: events.append((e, st.name)))
    assert {n: r.status for n, r in results.items()} == {
        "left": "succeeded",
        "right": "failed",
        "join": "skipped",
        "after": "skipped",
        "alone": "succeeded",
    }
    assert results["join"].message == "needs right, which failed"
    assert ("skipped", "after") in events and list(results) == [st.name for st in s.steps]


def test_retries_until_success_and_errors_count_as_failures():
    s = parse("""\
        name: lab
        machines: {a: }
        steps:
          - {name: flaky, run: "true", retries: 3, retry_delay: 0.01}
          - {name: broken, needs: [], run: "true", retries: 1, retry_delay: 0.01}
        """)
    calls: dict[str, int] = {}

    def execute(step, attempt):
        calls[step.name] = attempt
        if step.name == "broken":
            raise RuntimeError("bug")
        return Outcome(attempt == 3)

    results = run_steps(s.steps, execute)
    assert results["flaky"].status == "succeeded" and results["flaky"].attempts == 3
    assert results["broken"].status == "failed" and calls["broken"] == 2
    assert "internal error: RuntimeError: bug" in results["broken"].message


def test_steps_done_before_are_not_run_again():
    s = parse(GRAPH)
    ran = []
    results = run_steps(
        s.steps, lambda st, a: (ran.append(st.name), Outcome(True))[1], done={"left", "right"}
    )
    assert results["left"].status == "done" and "left" not in ran
    assert sorted(ran) == ["after", "alone", "join"]


@pytest.mark.parametrize("when", ["cancelling", "awaiting"])
def test_a_second_ctrl_c_still_reports_every_step(monkeypatch, when):
    """Ctrl-C while a step runs, then another while its job is being cancelled or while
    the step is awaited: the step is reported failed ("interrupted") all the same, the
    steps after it skipped; none is left out of the results (the summary). The moments
    are forced: each Ctrl-C is a KeyboardInterrupt raised where the signal would land."""
    from concurrent.futures import Future

    from cloudremotecontrol.master.scenario import graph

    s = parse("""\
        name: lab
        machines: {a: }
        steps:
          - {name: hello, run: "true"}
          - {name: slow, run: "true"}
          - {name: after, run: "true"}
        """)
    slow_runs, released, stop = threading.Event(), threading.Event(), threading.Event()
    events: list[tuple[str, str, str | None]] = []

    def execute(step, attempt):
        if step.name == "slow":
            slow_runs.set()
            released.wait(20)  # until reported (before the fix: never)
            return Outcome(False, "cancelled")
        return Outcome(True)

    def notify(event, step, data):
        events.append((event, step.name, data.get("message")))
        if (event, step.name) == ("failed", "slow"):
            released.set()

    waits = [graph.wait, None]  # the first wait (for hello) is a real one

    def ctrl_c_once_slow_runs(fs, return_when):
        real = waits.pop(0)
        if real is not None:
            return real(fs, return_when=return_when)
        assert slow_runs.wait(20)
        raise KeyboardInterrupt

    def second_ctrl_c() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(graph, "wait", ctrl_c_once_slow_runs)
    if when == "awaiting":
        result = Future.result

        def awaited(self, timeout=None):
            if stop.is_set():
                raise KeyboardInterrupt
            return result(self, timeout)

        monkeypatch.setattr(Future, "result", awaited)
    results: dict = {}
    with pytest.raises(KeyboardInterrupt):
        run_steps(
            s.steps,
            execute,
            notify=notify,
            stop=stop,
            on_interrupt=second_ctrl_c if when == "cancelling" else None,
            results=results,
        )
    got = {n: (r.status, r.attempts, r.message) for n, r in results.items()}
    assert got == {
        "hello": ("succeeded", 1, ""),
        "slow": ("failed", 1, "interrupted"),
        "after": ("skipped", 0, "interrupted"),
    }
    assert ("failed", "slow", "interrupted") in events
    assert ("skipped", "after", "interrupted") in events


def test_the_vultr_example_is_valid():
    path = Path(__file__).resolve().parents[2] / "examples" / "vultr-seed.yaml"
    s = load_scenario(path)
    assert s.provider == "vultr"
    assert {m.name: m.os for m in s.machines}["build"] == "windows"
    assert all(m.region and m.plan and m.image for m in s.machines)


def test_the_example_in_the_docs_is_valid():
    import re

    docs = Path(__file__).resolve().parents[2] / "docs" / "scenarios.md"
    m = re.search(r"## A complete example.*?```yaml\n(.*?)```", docs.read_text(), re.S)
    assert m is not None
    s = parse_scenario(m.group(1), "lab.yaml")
    assert s.name == "lab" and len(s.steps) == 9
    assert plan(s.steps)[0] == ["install-mysql", "prepare-web"]


def test_on_ttl_destroy_needs_a_ttl_and_the_vultr_provider():
    base = """\
        name: shop
        {extra}
        machines:
          web: {{os: linux}}
        """
    vultr = "provider: vultr\n        defaults: {region: ewr, plan: vc2-1c-1gb, image: '2284'}"
    assert parse(base.format(extra="ttl: 8h")).on_ttl == "revoke"
    s = parse(base.format(extra=vultr + "\n        ttl: 8h\n        on_ttl: destroy"))
    assert s.on_ttl == "destroy" and s.ttl == 8 * 3600
    assert problems(base.format(extra=vultr + "\n        on_ttl: destroy")) == [
        "s.yaml:4:9: on_ttl: destroy needs a ttl (when to destroy the machines)"
    ]
    got = problems(base.format(extra="ttl: 1h\n        on_ttl: destroy"))
    assert len(got) == 1 and "the server cannot destroy local machines" in got[0], got
    got = problems(base.format(extra="ttl: 1h\n        on_ttl: nuke"))
    assert len(got) == 1 and "'nuke' is not one of: revoke, destroy" in got[0], got


def test_run_steps_take_rate_control_checked_like_the_api() -> None:
    from cloudremotecontrol.protocol.rollout import Limit, Rollout

    s = parse("""\
        name: lab
        machines: {a: {}, b: {}}
        steps:
          - name: roll
            run: echo hi
            max_concurrency: 25%
            max_errors: 1
            canary: 1
            batch_wait: 2s
            deliver_within: 5m
        """)
    assert s.steps[0].rollout == Rollout(Limit(25, True), Limit(1), 2.0, 1, 300.0)
    got = problems("""\
        name: lab
        machines: {a: {}}
        steps:
          - name: roll
            run: echo hi
            max_concurrency: 0
          - name: other
            run: echo hi
            max_errors: 150%
          - name: copy
            push: {dest: /x, content: y}
            canary: 1
        """)
    expected = [
        "s.yaml:6:22: steps.roll.max_concurrency: max_concurrency must be at least 1",
        "s.yaml:9:17: steps.other.max_errors: max_errors must be at most 100%",
        "s.yaml:12:5: steps.copy.canary: only run and script steps take canary",
    ]
    for want in expected:
        assert any(p.startswith(want) for p in got), (want, got)


@pytest.mark.parametrize("char", ["\x01", "\x00", "\x07", "\x1b"])
def test_a_control_character_in_the_file_is_an_invalid_scenario_with_its_place(char):
    """PyYAML refuses the text before reading it (ReaderError, not a parse error): it is
    one problem with its line and column, not a traceback."""
    with pytest.raises(ScenarioError) as info:
        parse_scenario(f"name: lab\nmachines: {{a: {{}}}}\n# pasted {char} junk\n", "s.yaml")
    [problem] = [str(p) for p in info.value.problems]
    assert problem.startswith("s.yaml:3:10"), problem
    assert f"character U+{ord(char):04X} is not allowed" in problem, problem


def test_vultr_options_are_checked_when_the_file_loads():
    """A wrong type or two image sources are found before any machine exists (Vultr
    would refuse them with a 400 after the machines before were created and billed)."""
    got = problems("""\
        name: lab
        provider: vultr
        defaults: {region: ewr, plan: vc2-1c-1gb, image: "2284"}
        machines:
          a: {}
          b: {provider: {firewall_group_id: 123, enable_vpc: "yes", os_id: "abc", backups: on}}
          c: {provider: {snapshot_id: s1, image_id: x}}
        """)
    assert got == [
        "s.yaml:6:37: machines.b.provider.firewall_group_id: firewall_group_id must be a "
        "text, not 123",
        "s.yaml:6:54: machines.b.provider.enable_vpc: enable_vpc must be true or false, not 'yes'",
        "s.yaml:6:68: machines.b.provider.os_id: os_id must be a whole number, not 'abc'",
        "s.yaml:6:84: machines.b.provider.backups: backups must be enabled or disabled, not true",
        "s.yaml:7:17: machines.c.provider: give one image source, not 2: image_id, snapshot_id",
    ]
    # A snapshot (or another image source) stands in for the machine's image.
    ok = parse("""\
        name: lab
        provider: vultr
        defaults: {region: ewr, plan: vc2-1c-1gb}
        machines:
          a: {provider: {snapshot_id: "9a1f"}}
        """)
    assert ok.machine("a").image is None
    assert ok.machine("a").extra == {"snapshot_id": "9a1f"}


def test_a_wrong_to_is_reported_and_the_steps_templates_are_checked_all_the_same():
    """A `to:` naming no machine is its own problem: not a claim that the step's machines
    run Linux and Windows, and the step's other problems are reported at once."""
    assert problems("""\
        name: d3
        machines: {a: {}}
        steps:
          - name: s1
            to: zz
            run: "echo {{ vars.missing }}"
        """) == [
        "s.yaml:5:9: steps.s1.to: no machine zz in machines: (use a name, a,b, KEY=VALUE or all)",
        "s.yaml:6:10: steps.s1.run: {{ vars.missing }}: no variable 'missing' in `variables:`",
    ]
    # Linux and Windows machines, and a `to:` that names neither: no guess about the shell.
    got = problems("""\
        name: d3
        provider: vultr
        defaults: {region: ewr, plan: vc2-1c-1gb, image: {linux: "2284", windows: "124"}}
        machines: {a: {}, w: {os: windows}}
        steps:
          - {name: s1, to: role=x, run: "echo {{ vars.missing }}"}
        """)
    assert [p.split(": ", 2)[1:] for p in got] == [
        ["steps.s1.to", "no machine has the label role=x"],
        ["steps.s1.run", "{{ vars.missing }}: no variable 'missing' in `variables:`"],
    ]


def test_a_run_to_linux_and_windows_machines_names_the_shell_and_its_other_problems():
    got = problems("""\
        name: mixed
        provider: vultr
        defaults: {region: ewr, plan: vc2-1c-1gb, image: {linux: "2284", windows: "124"}}
        machines: {a: {}, w: {os: windows}}
        steps:
          - {name: s1, run: "echo {{ vars.missing }}", env: {X: "{{ vars.gone }}"}}
        """)
    assert [p.split(": ", 2)[1:] for p in got] == [
        [
            "steps.s1.run",
            "its machines run Linux and Windows: name the shell (shell: sh, bash, cmd or "
            "powershell) so that template values can be quoted for it",
        ],
        ["steps.s1.run", "{{ vars.missing }}: no variable 'missing' in `variables:`"],
        ["steps.s1.run", "{{ vars.gone }}: no variable 'gone' in `variables:`"],
    ]


def test_vultr_fields_vultr_would_refuse_are_found_when_the_file_loads():
    """An image of digits int() does not read ("²": str.isdigit() says yes), a region
    no Vultr id can be, an os_id of 0, and the fields crc sets itself (the label
    <scenario>-<machine>, the hostname) are refused before any machine exists."""
    got = problems("""\
        name: lab
        provider: vultr
        defaults: {region: ewr, plan: vc2-1c-1gb, image: "2284"}
        machines:
          a: {}
          b: {image: "²"}
          c: {region: "new york", image: "0"}
          d: {provider: {label: prod-db, hostname: other}}
          e: {provider: {os_id: 0, app_id: -3}}
        """)
    assert got == [
        "s.yaml:6:14: machines.b.image: expected a Vultr os_id (digits 0-9, e.g. 2284) or an "
        "image_id: printable ASCII without spaces, at most 100 characters, not '²'",
        "s.yaml:7:15: machines.c.region: expected a Vultr region id (e.g. ewr): printable "
        "ASCII without spaces, at most 100 characters, not 'new york'",
        "s.yaml:7:34: machines.c.image: an os_id is a whole number from 1 (at most 18 "
        "digits), not '0'",
        got[3],
        "s.yaml:9:17: machines.e.provider: give one image source, not 2: os_id, app_id",
        "s.yaml:9:25: machines.e.provider.os_id: os_id must be 1 or more, not 0",
        "s.yaml:9:36: machines.e.provider.app_id: app_id must be 1 or more, not -3",
    ]
    assert got[3].startswith(
        "s.yaml:8:17: machines.d.provider: not a vultr option: hostname, label"
    )
    # A bad image in defaults is reported there, once for every machine that uses it; a
    # machine that boots from a snapshot sends no image, and an image_id or a Vultr id
    # passes.
    got = problems("""\
        name: lab
        provider: vultr
        defaults: {region: ewr, plan: vc2-1c-1gb, image: "\\uFF11\\uFF12"}
        machines:
          a: {}
          b: {provider: {snapshot_id: "9a1f"}}
          c: {}
        """)
    assert [p.split(": ", 2)[:2] for p in got] == [["s.yaml:3:50", "defaults.image"]]
    # A bad region in defaults, used by six machines: said once, at defaults.
    got = problems("""\
        name: lab
        provider: vultr
        defaults: {region: "ew r", plan: vc2-1c-1gb, image: "2284"}
        machines: {a: , b: , c: , d: , e: , f: }
        """)
    assert [p.split(": ", 2)[:2] for p in got] == [["s.yaml:3:20", "defaults.region"]], got
    # Given by the machine itself: said at the machine's own field.
    got = problems("""\
        name: lab
        provider: vultr
        defaults: {region: ewr, plan: vc2-1c-1gb, image: "2284"}
        machines: {a: {region: "ew r"}}
        """)
    assert [p.split(": ", 2)[:2] for p in got] == [["s.yaml:4:24", "machines.a.region"]], got
    ok = parse("""\
        name: lab
        provider: vultr
        defaults: {region: ewr, plan: vc2-1c-1gb}
        machines:
          a: {image: 2284}
          b: {image: openlitespeed-wordpress, provider: {enable_ipv6: true}}
        """)
    assert [ok.machine(m).image for m in "ab"] == ["2284", "openlitespeed-wordpress"]


def test_what_a_step_would_send_is_checked_as_the_server_and_machine_will_check_it():
    """A message body YAML reads as NaN or Infinity or with half a character, a push to a
    path with a NUL in it, a label the machine is not given: each found when the file is
    loaded (they failed once the machines were made), all of them at once."""
    got = problems("""\
        name: lab
        machines: {a: {labels: {role: db}}}
        steps:
          - {name: nan, send: {type: x, body: {a: .nan}}}
          - {name: inf, send: {type: x, body: {a: [-.inf]}}}
          - {name: half, send: {type: x, body: {s: "\\ud800"}}}
          - {name: nul, push: {dest: "/srv/x\\0y", content: hi}}
          - {name: label, run: "echo {{ machines.a.labels.rol }} {{ machines.a.labels.role }}"}
        """)
    assert got == [
        "s.yaml:4:39: steps.nan.send.body: JSON numbers must be finite (no NaN or Infinity)",
        "s.yaml:5:39: steps.inf.send.body: JSON numbers must be finite (no NaN or Infinity)",
        "s.yaml:6:40: steps.half.send.body: JSON strings must be valid Unicode text (no lone "
        "surrogate such as \\ud800)",
        "s.yaml:7:30: steps.nul.push.dest: remote path '/srv/x\\x00y' contains a NUL character",
        "s.yaml:8:24: steps.label.run: {{ machines.a.labels.rol }}: machine 'a' has no label "
        "'rol' (its labels: role)",
    ]


def test_every_rate_control_problem_of_a_step_is_said_at_once():
    got = problems("""\
        name: lab
        machines: {a: }
        steps:
          - name: r
            run: "true"
            max_concurrency: 0
            max_errors: "150%"
            canary: -1
            deliver_within: soon
        """)
    assert [p.split(": ")[0:2] for p in got] == [
        ["s.yaml:6:22", "steps.r.max_concurrency"],
        ["s.yaml:7:17", "steps.r.max_errors"],
        ["s.yaml:8:13", "steps.r.canary"],
        ["s.yaml:9:21", "steps.r.deliver_within"],
    ], got


def test_a_step_ends_with_its_seconds_rounded_as_the_summary_gives_them():
    s = parse(GRAPH)
    ended = []
    ticks = iter(x * 0.123456789 for x in range(1000))

    results = run_steps(
        s.steps,
        lambda step, attempt: Outcome(True),
        max_parallel=1,
        clock=lambda: next(ticks),
        notify=lambda e, st, d: ended.append(d["seconds"]) if e == "succeeded" else None,
    )
    assert len(ended) == len(results) and ended
    assert all(sec == round(sec, 2) for sec in ended), ended
