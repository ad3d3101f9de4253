"""A scenario's problems name what the file says: the key written (`run`, not the job's
`command`), the step by its name, `all` as a target that stands alone; and an `env`
value written as a number or a boolean is taken as written, both alike."""

from __future__ import annotations

import textwrap

import pytest

from cloudremotecontrol.master.scenario.model import ScenarioError, parse_scenario


def _parse(text: str):
    return parse_scenario(textwrap.dedent(text), "s.yaml")


def _problems(text: str) -> list[str]:
    with pytest.raises(ScenarioError) as info:
        _parse(text)
    return [str(p) for p in info.value.problems]


def test_a_nul_in_a_command_or_an_argv_is_named_by_its_run_key():
    got = _problems("""\
        name: lab
        machines: {a: }
        steps:
          - {name: x1, run: "true"}
          - {name: x3, run: "echo \\x00"}
          - {name: x4, run: [echo, "a\\x00"]}
        """)
    assert got == [
        "s.yaml:5:21: steps.x3.run: command must be a non-empty string without NUL characters",
        "s.yaml:6:21: steps.x4.run: argv must be a non-empty list of strings without NUL "
        "characters",
    ], got


def test_a_nul_in_a_script_file_is_named_by_its_script_key(tmp_path):
    (tmp_path / "go.sh").write_text("echo \0\n")
    text = "name: lab\nmachines: {a: }\nsteps:\n  - {name: x1, script: go.sh}\n"
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, tmp_path / "s.yaml")
    got = [p.field for p in info.value.problems]
    assert got == ["steps.x1.script"], info.value.problems


def test_an_unknown_key_of_a_named_step_is_named_by_the_step_s_name():
    got = _problems("""\
        name: lab
        machines: {a: }
        steps:
          - {name: s1, run: "true"}
          - {name: s2, run: "true"}
          - {name: s3, run: "true"}
          - name: s4
            runn: "true"
            retries: many
        """)
    assert "s.yaml:8:5: steps.s4.runn: unknown field" in "\n".join(got), got
    assert not any("steps[" in p for p in got), got
    # Its other problems go under the same name.
    assert any(p.startswith("s.yaml:7:5: steps.s4: a step does exactly one of") for p in got)


def test_an_unnamed_step_goes_by_its_default_name_and_one_without_any_by_position():
    got = _problems("""\
        name: lab
        machines: {a: }
        steps:
          - {run: "true", colour: blue}
          - {colour: red}
          - {name: "Bad Name", colour: green}
        """)
    joined = "\n".join(got)
    assert "s.yaml:4:19: steps.run-1.colour: unknown field" in joined, got
    assert "s.yaml:5:6: steps[1].colour: unknown field" in joined, got
    # An invalid name is not a name to go by: that step is named by its position.
    assert "s.yaml:6:24: steps[2].colour: unknown field" in joined, got
    assert "steps[2].name: invalid step name 'Bad Name'" in joined, got


@pytest.mark.parametrize("to", ["all,a", "a,all", "a, all", "*,a"])
def test_all_with_other_targets_is_said_to_stand_alone(to):
    got = _problems(f"""\
        name: lab
        machines: {{a: , b: }}
        steps:
          - {{name: s1, to: "{to}", run: "true"}}
        """)
    assert len(got) == 1, got
    assert f"steps.s1.to: {to!r}: `all` means every machine and stands alone" in got[0], got
    assert "no machine" not in got[0], got


def test_all_alone_and_names_are_still_taken():
    s = _parse("""\
        name: lab
        machines: {a: , b: }
        steps:
          - {name: s1, to: all, run: "true"}
          - {name: s2, to: "b, a", run: "true"}
        """)
    assert s.steps[0].targets == ("a", "b") and s.steps[1].targets == ("b", "a")


def test_env_numbers_booleans_and_dates_are_taken_as_written():
    s = _parse("""\
        name: lab
        machines: {a: }
        steps:
          - name: s1
            run: env
            env: {A: 1, B: true, C: 010, D: 1.50, E: yes, F: 2024-01-31, G: "x", H: off}
        """)
    assert s.steps[0].action.env == {
        "A": "1",
        "B": "true",
        "C": "010",
        "D": "1.50",
        "E": "yes",
        "F": "2024-01-31",
        "G": "x",
        "H": "off",
    }


@pytest.mark.parametrize("value", ["", "~", "null", "[1]", "{k: v}"])
def test_an_env_value_that_is_no_text_is_still_refused(value):
    got = _problems(f"""\
        name: lab
        machines: {{a: }}
        steps:
          - {{name: s1, run: env, env: {{A: {value}}}}}
        """)
    assert len(got) == 1 and "steps.s1.env.A: expected a string" in got[0], got


@pytest.mark.parametrize(("written", "seconds"), [("30", 30.0), ("1.5", 1.5), ("90s", 90.0)])
def test_a_bare_number_is_seconds_as_the_docs_say(written, seconds):
    s = _parse(f"name: lab\nttl: {written}\nmachines: {{a: }}\n")
    assert s.ttl == seconds
