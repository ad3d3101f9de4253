"""A machine label that is refused says what is wrong with it (protocol/names.py)."""

from __future__ import annotations

import pytest

from cloudremotecontrol.errors import InvalidInput
from cloudremotecontrol.protocol.names import check_label


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("", "db", "the key is empty"),
        ("ROLE", "db", "the key must be 1-63 lowercase letters, digits, _ . -"),
        ("_x", "db", "the key must start with a letter or digit"),
        ("role", "Db é", "the value must be 0-63 letters, digits, _ . -"),
    ],
)
def test_a_bad_label_says_what_is_wrong_with_it(key: str, value: str, why: str) -> None:
    """`--to '=db'` said only `invalid label ='db'`."""
    with pytest.raises(InvalidInput) as exc:
        check_label(key, value)
    assert exc.value.message == f"invalid label {key}={value!r}: {why}"
