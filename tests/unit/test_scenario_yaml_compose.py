"""Composing scenario YAML: libyaml's tree where it is PyYAML's, the pure loader elsewhere.

The promise (yamlcompose.py): whatever the text, ``compose`` gives what PyYAML's pure
loader gives (the same node kinds, tags, values, start marks and shared nodes) or
raises what it raises. The speed is shown by bench/scenario_parse.py, not here.
"""

from __future__ import annotations

import gc
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudremotecontrol.master.scenario import yamlcompose
from cloudremotecontrol.master.scenario.model import ScenarioError, parse_scenario
from cloudremotecontrol.master.scenario.yamlnodes import expanded_nodes

needs_libyaml = pytest.mark.skipif(
    yamlcompose.libyaml_loader() is None, reason="PyYAML built without libyaml"
)


def _flat(root: yaml.Node | None) -> list[tuple[Any, ...]]:
    """The tree in document order: what the scenario reader uses of each node."""
    out: list[tuple[Any, ...]] = []
    ids: dict[int, int] = {}
    stack = [root]
    while stack:
        node = stack.pop()
        if node is None:
            out.append(("none",))
            continue
        if id(node) in ids:
            out.append(("alias", ids[id(node)]))
            continue
        ids[id(node)] = len(ids)
        m = node.start_mark
        size = len(node.value) if not isinstance(node, yaml.ScalarNode) else node.value
        out.append((type(node).__name__, node.tag, m.line, m.column, m.index, size))
        if isinstance(node, yaml.SequenceNode):
            stack.extend(reversed(node.value))
        elif isinstance(node, yaml.MappingNode):
            stack.extend(n for pair in reversed(node.value) for n in reversed(pair))
    return out


def _outcome(compose: Any, text: str) -> tuple[Any, ...]:
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:
        return ("refused", str(exc))
    try:
        return ("tree", _flat(compose(text, loader)))
    except yaml.YAMLError as exc:
        return ("error", str(exc))
    except RecursionError:
        return ("recursion",)
    finally:
        loader.dispose()


def pure(text: str, loader: yaml.SafeLoader) -> yaml.Node | None:
    return loader.get_single_node()


def assert_same_as_pure(text: str) -> None:
    assert _outcome(yamlcompose.compose, text) == _outcome(pure, text), text


# Where libyaml and PyYAML part (the yaml-test-suite and our fuzzing found these): each
# must come out as the pure loader has it.
APART = [
    "a: b\t\nseq:\t\n - a\t\nc: d\t#X\n",  # tabs PyYAML refuses
    "block:\t|\n  x\n",
    "x:\n  \ufeffa: 1\n",  # a byte order mark inside the text moves libyaml's columns
    "- [a?string]\n- {key?: value }\n",  # ? inside a flow plain scalar
    "x: [b, c ?]\n",
    "block: ># comment\n  scalar\n",  # a comment glued to a block scalar header
    "- |#c\n  x\n",
    "!\n",  # the non-specific tag
    "{\n  foo : !!str,\n  !!str : bar,\n}\n",  # tags on empty flow values
    '{\n"adjacent":value,\n"readable": value,\n"empty":\n}\n',  # empty flow value's place
    "{\n? explicit: entry,\nimplicit: entry,\n?\n}\n",
    "machines: {a: }\n",
    "--- ",  # the end of a text without a line break
    "a: 1\n  ",
    "%YAML 1.1#...\n---\n",  # directives
    '%FOO  bar baz # ignored\n---\n"foo"\n',
    "a: 1\n%x\n",
    "[" * 600 + "]" * 600 + "\n",  # libyaml nests to 1000, PyYAML's composer to ~500
    "a: &x 1\nb: *x\nc: *y\n",  # an alias of nothing
    "a: 1\n---\nb: 2\n",  # two documents
    "",
    "# nothing\n",
]


@pytest.mark.parametrize("text", [*APART, "a: &x [*x]\n"])  # an alias inside itself too
def test_where_libyaml_parts_from_pyyaml_the_result_is_pyyaml_s(text: str) -> None:
    assert_same_as_pure(text)


@needs_libyaml
@pytest.mark.parametrize("text", APART)
def test_where_libyaml_parts_from_pyyaml_its_tree_is_not_used(text: str) -> None:
    loader = yaml.SafeLoader(text)
    assert yamlcompose._libyaml_tree(text, loader) is None


@needs_libyaml
@pytest.mark.parametrize(
    "text",
    [
        "name: lab\nmachines:\n  a:\n  b: {labels: {role: db}}\nsteps:\n- run: echo hi\n",
        "a: &x {k: [1, 2.5, true, null, ~, 0o17, 2024-01-02]}\nb: *x\nc: {<<: *x, d: 'q'}\n",
        's: |\n  #!/bin/sh\n  [ ! -f x ] && echo "{{ vars.v }}"\nt: >-\n  folded\n  text\n',
        "é: 😀\r\nk: \"a\\u00e9\\n\"\r\nl: 'it''s'\n",
        "u: !!str abc\nv: &a !!int 3\n",
    ],
)
def test_the_usual_yaml_of_a_scenario_is_composed_by_libyaml(text: str) -> None:
    """Block and flow mappings, aliases and merge keys, block scalars, quoting, CRLF,
    redundant tags: libyaml's tree is used, and it is PyYAML's."""
    assert yamlcompose._libyaml_tree(text, yaml.SafeLoader(text)) is not None
    assert_same_as_pure(text)


FRAGMENTS = [
    *("\n", "\n", " ", "  ", "    ", "- ", "-", ": ", ":", "? ", "?", ",", ", "),
    *("[", "]", "{", "}", "#", " # c", "&a ", "*a", "!", "!!str ", "!!int ", "! "),
    *("|", "|-", "|+", ">", ">-", "|2", "|0", "'", "''", '"', '\\"', "\\n", "\\"),
    *("---", "...", "--- ", "%YAML 1.1", "a", "b c", "key", "1", "0x1f", "1.5"),
    *("true", "~", "null", "<<", "=", "é", "😀", "\t", "\r", "\r\n", "\x85"),
    *("\u2028", "\ufeff", "%", "x" * 30, "k: v\n", "- x\n", "  - y\n", "\n  ", "\nk: "),
    *("{a: b}", "[x, y]", "{a: }", "[a, , b]", "|\n  lit\n", ">\n  fold\n", "a?b"),
    *("? x\n: y\n", "'a\n b'", '"a\n  b"', "2001-12-14", "-a", "- - x", "k:\n"),
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=40), st.booleans())
def test_any_text_composes_as_the_pure_loader_composes_it(parts: list[str], nl: bool) -> None:
    """Differential: bits of YAML syntax in any order (most are no YAML at all)."""
    assert_same_as_pure("".join(parts) + ("\n" if nl else ""))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.recursive(
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(allow_nan=False),
            st.text(max_size=12),
        ),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=20,
    ),
    st.sampled_from([None, True, False]),
    st.sampled_from([None, "'", '"', "|", ">"]),
)
def test_any_data_dumped_composes_as_the_pure_loader_composes_it(
    data: Any, flow: bool | None, style: str | None
) -> None:
    assert_same_as_pure(yaml.safe_dump(data, default_flow_style=flow, default_style=style))


def test_without_libyaml_the_pure_loader_reads_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yamlcompose, "libyaml_loader", lambda: None)
    scenario = parse_scenario("name: lab\nmachines:\n  a:\nsteps:\n  - run: echo hi\n")
    assert [m.name for m in scenario.machines] == ["a"]
    assert_same_as_pure("a: [1, {b: c}]\n")


# -- a large file ----------------------------------------------------------------------------
def large_scenario(users: int, steps: int, lines: int) -> str:
    """A valid scenario: an inventory in variables, 200 machines, shell steps."""
    out = ["name: big", "provider: local", "variables:", "  db: shop", "  users:"]
    for u in range(users):
        out += [f"    - name: user{u}", f"      uid: {1000 + u}", f"      groups: [g{u % 7}]"]
    out += ["machines:"] + [f"  m{i}: {{labels: {{role: r{i % 5}}}}}" for i in range(200)]
    out.append("steps:")
    for s in range(steps):
        out += [f"  - name: step-{s}", f"    to: role=r{s % 5}", "    env: {A: '1'}", "    run: |"]
        out += [
            f"      echo {k} {{{{ vars.db }}}} {{{{ machines.m{k % 200}.ip }}}} >> /var/log/x"
            for k in range(lines)
        ]
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def large() -> str:
    text = large_scenario(users=6000, steps=300, lines=100)
    assert len(text) > 2 << 20  # multi-MB, below the 4 MiB bound
    return text


def _read(text: str) -> str:
    try:
        return repr(parse_scenario(text, "s.yaml"))
    except ScenarioError as exc:
        return exc.message


@needs_libyaml
def test_a_large_scenario_is_composed_by_libyaml_not_node_by_node_in_python(
    large: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, PyYAML's pure composer built the tree: one ``compose_node`` call per node
    (about 58,000 here), in Python."""
    calls = []
    real = yaml.composer.Composer.compose_node

    def counted(self: Any, parent: Any, index: Any) -> Any:
        calls.append(1)
        return real(self, parent, index)

    monkeypatch.setattr(yaml.composer.Composer, "compose_node", counted)
    assert parse_scenario(large, "s.yaml").name == "big"
    assert calls == []


@needs_libyaml
def test_a_large_scenario_reads_the_same_with_libyaml_and_with_the_pure_loader(
    large: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = _read(large)
    monkeypatch.setattr(yamlcompose, "libyaml_loader", lambda: None)
    assert _read(large) == fast
    assert "steps=(Step(name='step-0'" in fast


def test_a_large_scenario_s_problems_carry_their_exact_lines(
    large: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = large.splitlines()
    at = lines.index("  - name: step-298")
    lines.insert(at + 1, "    retries: many")
    lines.insert(at + 1, "    colour: blue")
    lines.append("    timeout: forever")
    bad = "\n".join(lines) + "\n"
    expected = [
        f"s.yaml:{at + 2}:5: steps.step-298.colour: unknown field",
        f"s.yaml:{at + 3}:14: steps.step-298.retries: expected a whole number from 0 to 100",
        f"s.yaml:{len(lines)}:14: steps.step-299.timeout: 'forever' is not a duration",
    ]
    fast = _read(bad)
    got = fast.splitlines()[1:]
    assert len(got) == 3, got
    assert all(g.strip().startswith(e) for g, e in zip(got, expected, strict=True)), got
    monkeypatch.setattr(yamlcompose, "libyaml_loader", lambda: None)
    assert _read(bad) == fast


# -- counting and the collector -----------------------------------------------------------------
def test_nodes_are_counted_with_their_aliases_expanded() -> None:
    def count(text: str) -> int:
        return expanded_nodes(yaml.compose(text), 10**6)

    assert count("a: [1, 2]\n") == 5  # the mapping, a, the list, 1, 2
    assert count("a: &x [1, 2]\nb: *x\n") == 9  # the list and its items count twice
    assert count("a: &x [1, *x]\n") == 4  # an alias inside itself counts once
    assert expanded_nodes(yaml.compose("[1, 2, 3]\n"), 3) == 3  # up to the cap


def test_reading_a_file_leaves_the_collector_as_it_found_it() -> None:
    assert gc.isenabled()
    parse_scenario("name: lab\nmachines: {a: {}}\n")
    assert gc.isenabled()
    gc.disable()
    try:
        parse_scenario("name: lab\nmachines: {a: {}}\n")
        assert not gc.isenabled()
    finally:
        gc.enable()
