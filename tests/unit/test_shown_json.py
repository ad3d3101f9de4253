r"""``cli.output.shown_json``: a value as JSON for people and pipes. Any value comes out
as JSON of that same value; its text as it is (UTF-8), but nothing a terminal obeys and
nothing the output's encoding cannot hold: those as JSON's ``\uXXXX`` escapes."""

from __future__ import annotations

import io
import json
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloudremotecontrol.cli.output import shown_json
from cloudremotecontrol.terminal import safe

TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=30)  # controls, bidi, astral
VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


def _stdout(monkeypatch: pytest.MonkeyPatch, encoding: str) -> None:
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BytesIO(), encoding=encoding))


@pytest.mark.parametrize("encoding", ["utf-8", "ascii", "latin-1", "cp1252"])
@given(value=VALUE)
def test_the_same_value_safe_for_a_terminal_and_the_encoding(encoding: str, value: object) -> None:
    with pytest.MonkeyPatch.context() as mp:
        _stdout(mp, encoding)
        text = shown_json(value)
    assert json.loads(text) == value
    assert safe(text) == text  # nothing a terminal would obey
    text.encode(encoding)  # no UnicodeEncodeError when printed


def test_text_is_shown_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    _stdout(monkeypatch, "utf-8")
    assert shown_json("héllo ✓ 日本 😀") == '"héllo ✓ 日本 😀"'
    assert shown_json({"a": ["é"]}, separators=(",", ":")) == '{"a":["é"]}'
    assert shown_json("\x1b[2J\u202e\x85\u2028") == '"\\u001b[2J\\u202e\\u0085\\u2028"'
    assert shown_json("\ud800") == '"\\ud800"'  # a lone surrogate: in no encoding


def test_what_the_encoding_cannot_hold_is_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    _stdout(monkeypatch, "latin-1")
    assert shown_json("é✓😀") == '"é\\u2713\\ud83d\\ude00"'
    _stdout(monkeypatch, "ascii")
    assert shown_json("é") == '"\\u00e9"'
