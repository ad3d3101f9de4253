"""The Range header check of downloads (server/api_files.py): what is malformed (400),
what the file cannot serve (416), and what goes on to be served."""

from __future__ import annotations

import pytest

from cloudremotecontrol.errors import InvalidInput
from cloudremotecontrol.server.api_files import _Unsatisfiable, check_range


@pytest.mark.parametrize(
    "header",
    [
        "bytes=0-0",
        "bytes=10-19",
        "bytes=1000-",
        "bytes=-4",
        "bytes=-5000",
        "BYTES=0-1",
        "bytes=0-1, 5-6",
        "bytes=0-99999999999999999999",
    ],
)
def test_a_range_within_the_file_passes(header: str) -> None:
    check_range(header, 1024)


@pytest.mark.parametrize(
    "header",
    [
        "bytes",
        "bytes=",
        "items=0-1",
        "bytes=abc",
        "bytes=9-3",
        "bytes=--1",
        "bytes=-",
        "bytes=0-1,",
        "bytes=1-2-3",
        "bytes=\x1b[2J0-1",
        "bytes=٣-٤",
        "bytes=" + "9" * 5000 + "-",
    ],
)
def test_a_malformed_range_is_invalid_input(header: str) -> None:
    with pytest.raises(InvalidInput) as err:
        check_range(header, 1024)
    assert err.value.details["field"] == "range" and "\x1b" not in err.value.message


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=1024-", 1024),
        ("bytes=5000-6000", 1024),
        ("bytes=-0", 1024),
        ("bytes=-1", 0),
        ("bytes=0-1,2000-", 1024),
        ("bytes=99999999999999999999-", 1024),
    ],
)
def test_a_range_past_the_end_is_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(_Unsatisfiable):
        check_range(header, size)
