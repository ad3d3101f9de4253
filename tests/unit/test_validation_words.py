"""A request the API's declared shapes refuse is said in the API's words, from the
errors pydantic itself makes (server/validation.py)."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cloudremotecontrol.errors import InvalidInput
from cloudremotecontrol.server.validation import validation_error


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    machines: Annotated[list[str], Field(min_length=1, max_length=3)]
    name: Annotated[str, Field(max_length=5)] = "x"
    since: Annotated[int, Field(ge=0, le=9)] = 0
    ratio: float = 0.5
    flag: bool = False


def refused(data: Any) -> InvalidInput:
    with pytest.raises(ValidationError) as exc:
        Body.model_validate(data)
    return validation_error(list(exc.value.errors()))


@pytest.mark.parametrize(
    ("data", "message", "field"),
    [
        ({"machines": ["a"] * 4}, "invalid machines: takes at most 3 items, not 4", "machines"),
        ({"machines": []}, "invalid machines: must not be empty", "machines"),
        ({}, "invalid machines: is required", "machines"),
        (
            {"machines": ["a"], "name": "abcdef"},
            "invalid name: must be at most 5 characters",
            "name",
        ),
        ({"machines": ["a"], "since": 10}, "invalid since: must be at most 9", "since"),
        ({"machines": ["a"], "since": -1}, "invalid since: must be at least 0", "since"),
        ({"machines": ["a"], "since": "ten"}, "invalid since: must be an integer", "since"),
        ({"machines": ["a"], "since": 1.5}, "invalid since: must be an integer", "since"),
        ({"machines": ["a"], "ratio": "half"}, "invalid ratio: must be a number", "ratio"),
        ({"machines": ["a"], "flag": "perhaps"}, "invalid flag: must be true or false", "flag"),
        ({"machines": "a"}, "invalid machines: must be a list", "machines"),
        ({"machines": [1]}, "invalid machines.0: must be a string", "machines.0"),
        ({"machines": ["a"], "extra": 1}, "invalid extra: is not a field of this request", "extra"),
        ([], "invalid request: must be an object", ""),
    ],
)
def test_each_refusal_says_what_is_allowed(data: Any, message: str, field: str) -> None:
    err = refused(data)
    assert (err.code, err.message, err.details.get("field")) == ("invalid_input", message, field)


def test_a_kind_of_refusal_without_words_of_its_own_keeps_pydantics() -> None:
    err = validation_error([{"type": "uuid_parsing", "loc": ("query", "id"), "msg": "Bad id"}])
    assert err.message == "invalid query.id: Bad id"
    err = validation_error([{"type": "too_long", "loc": ("body", "machines"), "msg": "Too long"}])
    assert err.message == "invalid machines: Too long"  # no limits given: its own words
    ctx = {"min_length": 2, "actual_length": 1}
    err = validation_error([{"type": "too_short", "loc": ("body", "x"), "msg": "m", "ctx": ctx}])
    assert err.message == "invalid x: takes at least 2 items, not 1"


def test_a_body_that_is_no_json_is_malformed() -> None:
    err = validation_error([{"type": "json_invalid", "loc": ("body", 0), "msg": "JSON"}])
    assert (err.code, err.message) == ("malformed_json", "request body is not valid JSON")
    assert validation_error([]).message == "invalid request: invalid"
