"""A JSON value over its size limit is measured as it travels and is stored: compact,
each character beyond ASCII as its \\uXXXX escape. The refusal says so when that is
what made it larger than it looks (protocol/jsoncheck.py)."""

from __future__ import annotations

import pytest

from cloudremotecontrol.errors import TooLarge
from cloudremotecontrol.protocol.jsoncheck import check_json


def test_a_value_of_plain_ascii_is_measured_as_it_reads() -> None:
    assert check_json("x" * 98, max_bytes=100) == 100  # with its two quotes
    with pytest.raises(TooLarge) as exc:
        check_json("x" * 99, max_bytes=100, what="kv value")
    assert exc.value.message == "kv value is 101 bytes of JSON; the limit is 100"


def test_characters_beyond_ascii_count_as_their_escapes_and_the_refusal_says_so() -> None:
    assert check_json("é" * 16, max_bytes=100) == 98  # 16 escapes of 6 bytes, 2 quotes
    with pytest.raises(TooLarge) as exc:
        check_json({"v": "é" * 11000}, max_bytes=65536, what="kv value")
    assert exc.value.message == (
        "kv value is 66008 bytes of JSON (each character beyond ASCII counts as its "
        "\\uXXXX escape); the limit is 65536"
    )
    with pytest.raises(TooLarge, match=r"beyond ASCII counts as its \\uXXXX escape"):
        check_json(["😀" * 10], max_bytes=100)  # two escapes each (a surrogate pair)
