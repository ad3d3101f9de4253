"""What `crc up --help` says about how it ends, and the words for an empty file."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from cloudremotecontrol.cli.scenario_cmds import up
from cloudremotecontrol.master.scenario.model import ScenarioError, parse_scenario


def test_up_help_names_every_exit_code_the_docs_list():
    result = CliRunner().invoke(up, ["--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    codes = text[text.index("Exit code:") : text.index("Options:")]
    for code in ("0", "1", "2", "5", "6", "8", "129", "130", "143"):
        assert re.search(rf"\b{code}\b", codes), (code, codes)
    assert "docs/scenarios.md" in codes, codes


def test_an_empty_file_says_what_a_scenario_needs_and_not_that_steps_are():
    with pytest.raises(ScenarioError) as info:
        parse_scenario("", "s.yaml")
    assert [str(p) for p in info.value.problems] == [
        "s.yaml:1:1: empty file: a scenario needs a name and machines (steps are optional)"
    ]
