"""What a scenario file gets wrong is refused when it is loaded, with its place in the
file, before any machine is made (and, on a cloud, billed): a template path into the
variables that leads nowhere or to null, a `{{` no `}}` closes, a machine whose own
`image:` and a provider option both say what it boots from, and a provider option of
the wrong type at its own line and column, spelled as the file writes it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from cloudremotecontrol.master.scenario import templates
from cloudremotecontrol.master.scenario.model import ScenarioError, load_scenario


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ScenarioError) as info:
        load_scenario(_write(tmp_path, text))
    return [str(p) for p in info.value.problems]


def test_a_path_into_the_variables_that_leads_nowhere_is_refused_at_load(tmp_path):
    got = _problems(
        tmp_path,
        """\
        name: lab
        variables: {base: {role: x}, lst: [1], name: web}
        machines: {a: {labels: {role: db}}}
        steps:
          - {name: s1, run: "echo {{ vars.base.nope }}"}
          - {name: s2, run: "echo {{ vars.lst.5 }}"}
          - {name: s3, run: "echo hi", env: {X: "{{ vars.name.first }}"}}
          - {name: s4, push: {dest: /x, content: "{{ vars.lst.1 | json }}"}}
        """,
    )
    assert got == [
        "s.yaml:5:21: steps.s1.run: {{ vars.base.nope }}: vars.base has no 'nope' (its keys: role)",
        "s.yaml:6:21: steps.s2.run: {{ vars.lst.5 }}: vars.lst has no '5' (a list of 1: index 0)",
        "s.yaml:7:21: steps.s3.run: {{ vars.name.first }}: vars.name has no 'first' "
        "(a single value, not a mapping or a list)",
        "s.yaml:8:22: steps.s4.push: {{ vars.lst.1 | json }}: vars.lst has no '1' "
        "(a list of 1: index 0)",
    ]


def test_a_null_variable_is_refused_at_load_unless_written_as_json(tmp_path):
    got = _problems(
        tmp_path,
        """\
        name: lab
        variables: {nul: null, deep: {x: ~}}
        machines: {a: {}}
        steps:
          - {name: s1, run: "echo {{ vars.nul }}"}
          - {name: s2, run: "echo {{ vars.deep.x | quote }}"}
          - {name: s3, run: "echo {{ vars.nul | json }} {{ vars.deep | json }}"}
        """,
    )
    assert len(got) == 2, got
    assert got[0].startswith(
        "s.yaml:5:21: steps.s1.run: {{ vars.nul }}: vars.nul is null in `variables:`"
    ), got
    assert got[1].startswith("s.yaml:6:21: steps.s2.run: {{ vars.deep.x | quote }}: "), got
    for problem in got:
        assert "give it a value" in problem and "no value yet" not in problem, problem
    # With | json, null is a value: rendered as JSON writes it.
    ctx = {"vars": {"nul": None, "deep": {"x": None}}}
    assert (
        templates.render("echo {{ vars.nul | json }} {{ vars.deep | json }}", ctx, "sh")
        == """echo null '{"x": null}'"""
    )


def test_a_number_written_as_a_key_in_the_variables_is_reached_by_its_digits(tmp_path):
    s = load_scenario(
        _write(
            tmp_path,
            """\
            name: lab
            variables: {ports: {80: web}}
            machines: {a: {}}
            steps:
              - {name: s1, run: "echo {{ vars.ports.80 }}"}
            """,
        )
    )
    assert templates.render("{{ vars.ports.80 }}", {"vars": s.variables}) == "web"


def test_an_unclosed_tag_is_refused_at_load_with_its_line_a_literal_one_is_a_variable(
    tmp_path,
):
    got = _problems(
        tmp_path,
        """\
        name: lab
        variables: {base: {role: x}}
        machines: {a: {}}
        steps:
          - name: s1
            run: echo "{{ vars.base.role }"
          - name: s2
            run: |
              echo {{ vars.base.role }}
              echo {{ vars.base.role
        """,
    )
    assert got == [
        's.yaml:6:10: steps.s1.run: {{ vars.base.role }": `{{` with no matching `}}` '
        '(a tag is {{ NAME }}; a literal {{ is a variable\'s value: open: "{{" in '
        "`variables:`, then {{ vars.open }})",
        "s.yaml:8:10: steps.s2.run: {{ vars.base.role: `{{` with no matching `}}` "
        '(a tag is {{ NAME }}; a literal {{ is a variable\'s value: open: "{{" in '
        "`variables:`, then {{ vars.open }})",
    ]
    # As the message says: a literal {{ is a variable's value, quoted as any value.
    s = load_scenario(
        _write(
            tmp_path,
            """\
            name: lab
            variables: {open: "{{"}
            machines: {a: {}}
            steps:
              - {name: s1, run: "docker inspect -f '{{ vars.open }}.State}}' web"}
            """,
        )
    )
    command = s.steps[0].action.command
    rendered = templates.render(command, {"vars": s.variables}, "sh")
    assert rendered == "docker inspect -f '{{.State}}' web"


def test_a_machines_own_image_beside_an_image_option_is_two_image_sources(tmp_path):
    got = _problems(
        tmp_path,
        """\
        name: lab
        provider: vultr
        defaults: {region: ewr, plan: vc2-1c-1gb, image: "2284"}
        machines:
          c: {provider: {snapshot_id: 0b1c-5e7a}, image: "387"}
        """,
    )
    assert got == [
        "s.yaml:5:50: machines.c.image: give one image source, not 2: image, snapshot_id "
        "(provider: snapshot_id stands in for image)"
    ]
    # The image of `defaults` gives way to the option: the snapshot is what it boots.
    s = load_scenario(
        _write(
            tmp_path,
            """\
            name: lab
            provider: vultr
            defaults: {region: ewr, plan: vc2-1c-1gb, image: "2284"}
            machines:
              c: {provider: {snapshot_id: 0b1c-5e7a}}
            """,
        )
    )
    assert s.machine("c").extra == {"snapshot_id": "0b1c-5e7a"}


def test_a_provider_option_of_the_wrong_type_is_told_at_its_place_as_written(tmp_path):
    got = _problems(
        tmp_path,
        """\
        name: lab
        provider: vultr
        defaults: {region: ewr, plan: vc2-1c-1gb, image: "2284"}
        machines:
          a:
            provider:
              backups: true
              enable_ipv6: 1
              attach_vpc: [v1, 2]
        """,
    )
    assert got == [
        "s.yaml:7:16: machines.a.provider.backups: backups must be enabled or disabled, not true",
        "s.yaml:8:20: machines.a.provider.enable_ipv6: enable_ipv6 must be true or false, not 1",
        "s.yaml:9:19: machines.a.provider.attach_vpc: attach_vpc must be a list of texts, "
        'not ["v1", 2]',
    ]


def test_a_file_that_is_not_utf8_says_where_its_first_bad_byte_is(tmp_path):
    from cloudremotecontrol.errors import InvalidInput

    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: lab\nmachines: {a: }\n# caf\u00e9\n".encode("latin-1"))
    with pytest.raises(InvalidInput) as info:
        load_scenario(path)
    assert info.value.message == (
        f"cannot read {path}: not UTF-8 text (line 3, column 6: byte 0xe9); save it as UTF-8"
    )
