"""Where a scenario gives text (an env value, an argv's element, a command, cwd, a path,
a kv key), an unquoted number, boolean or date is the text written (``010`` stays
``010``, not YAML's 8), with either composer: libyaml marks a plain scalar with the style
"", PyYAML's pure composer with None, and ``crc up`` uses libyaml where it can."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from cloudremotecontrol.master.scenario import yamlcompose
from cloudremotecontrol.master.scenario.model import ScenarioError, parse_scenario

HAS_LIBYAML = yamlcompose.libyaml_loader() is not None


@pytest.fixture(
    params=[
        pytest.param(
            "libyaml",
            marks=pytest.mark.skipif(not HAS_LIBYAML, reason="PyYAML built without libyaml"),
        ),
        "pure",
    ]
)
def composer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test reads its file with libyaml's composer, then with the pure one; the
    tree each read came from is checked to be that composer's."""
    used: list[bool] = []
    fast_tree = yamlcompose._libyaml_tree

    def spy(text: str, loader: yaml.SafeLoader) -> Any:
        node = fast_tree(text, loader)
        used.append(node is not None)
        return node

    monkeypatch.setattr(yamlcompose, "_libyaml_tree", spy)
    if request.param == "pure":
        monkeypatch.setattr(yamlcompose, "libyaml_loader", lambda: None)
    yield request.param
    assert used, "the scenario was not composed"
    assert all(used) if request.param == "libyaml" else not any(used), (request.param, used)


def _parse(text: str) -> Any:
    return parse_scenario(textwrap.dedent(text), "s.yaml")


def _problems(text: str) -> list[str]:
    with pytest.raises(ScenarioError) as info:
        _parse(text)
    return [str(p) for p in info.value.problems]


def test_env_values_are_taken_as_written_in_block_style(composer):
    s = _parse("""\
        name: lab
        machines:
          a: {}
        steps:
          - name: s1
            run: echo "MODE=$MODE"
            env:
              MODE: 010
              DEBUG: true
              QUIET: no
              T: 2024-01-01
              PORT: 8080
              X: 1.0
              Y: 0x1F
              Z: .inf
              Q: "010"
              S: text
        """)
    assert s.steps[0].action.env == {
        "MODE": "010",
        "DEBUG": "true",
        "QUIET": "no",
        "T": "2024-01-01",
        "PORT": "8080",
        "X": "1.0",
        "Y": "0x1F",
        "Z": ".inf",
        "Q": "010",
        "S": "text",
    }


def test_argv_elements_and_cwd_are_taken_as_written(composer):
    s = _parse("""\
        name: lab
        machines:
          a: {}
        steps:
          - name: s1
            run: [chmod, 0755, f, true, 2024-01-01, "=", =, 1_000]
            cwd: 010
        """)
    assert s.steps[0].action.argv == ("chmod", "0755", "f", "true", "2024-01-01", "=", "=", "1_000")
    assert s.steps[0].action.cwd == "010"


def test_other_text_a_step_gives_is_taken_as_written(composer):
    s = _parse("""\
        name: lab
        machines:
          a: {}
        steps:
          - name: cmd
            run: 010
          - name: put
            push:
              dest: /tmp/010
              content: 0755
          - name: kv
            wait:
              kv: 0x10
          - name: msg
            wait:
              message: 010
          - name: say
            send:
              type: 010
        """)
    got = {step.name: step.action for step in s.steps}
    assert got["cmd"].command == "010"
    assert got["put"].content == "0755" and got["put"].dest == "/tmp/010"
    assert got["kv"].key == "0x10"
    assert got["msg"].type == "user.010"
    assert got["say"].type == "user.010"


@pytest.mark.parametrize("value", ["~", "null", "", "[1]"])
def test_a_value_that_is_no_text_is_still_refused_in_block_style(composer, value):
    got = _problems(f"""\
        name: lab
        machines:
          a: {{}}
        steps:
          - name: s1
            run: [echo, ok]
            env:
              A: {value}
            cwd: {value}
        """)
    assert len(got) == 2, got
    assert "steps.s1.env.A: expected a string" in got[0], got
    assert "steps.s1.cwd: expected a string" in got[1], got


def test_numbers_and_flags_are_still_read_as_yaml_says(composer):
    s = _parse("""\
        name: lab
        variables:
          n: 010
          f: yes
        machines:
          a: {}
        steps:
          - name: s1
            retries: 010
            timeout: 90
            run: [echo, "{{ vars.n }}"]
        """)
    assert s.variables == {"n": 8, "f": True}, s.variables
    assert s.steps[0].retries == 8 and s.steps[0].timeout == 90
