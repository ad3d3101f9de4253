"""A request field named ``body`` (a message's) is named in the API's refusal: only the
first part of pydantic's location, where FastAPI found the value, is not a field."""

from __future__ import annotations

from cloudremotecontrol.server.validation import validation_error


def test_a_field_named_body_is_named() -> None:
    err = validation_error([{"type": "dict_type", "loc": ("body", "body"), "msg": "m"}])
    assert (err.message, err.details.get("field")) == ("invalid body: must be an object", "body")
    err = validation_error([{"type": "string_type", "loc": ("body", "body", "a"), "msg": "m"}])
    assert (err.message, err.details.get("field")) == ("invalid body.a: must be a string", "body.a")


def test_the_request_body_itself_is_still_the_request() -> None:
    err = validation_error([{"type": "model_attributes_type", "loc": ("body",), "msg": "m"}])
    assert (err.message, err.details.get("field")) == ("invalid request: must be an object", "")
    err = validation_error([{"type": "missing", "loc": ("body", "value"), "msg": "m"}])
    assert (err.message, err.details.get("field")) == ("invalid value: is required", "value")
