"""A request the API's declared shapes refuse, said in the API's own words.

FastAPI checks parameters and bodies with pydantic, whose messages speak of its own
types ("List should have at most 1000 items after validation, not 1001"). The API's
other refusals say what is allowed; so do these, from the error's kind and its limits.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidInput

__all__ = ["validation_error"]

# pydantic's error type -> what the value must be; {name} from the error's context.
_WORDS = {
    "missing": "is required",
    "extra_forbidden": "is not a field of this request",
    "too_long": "takes at most {max_length} items, not {actual_length}",
    "too_short": "takes at least {min_length} items, not {actual_length}",
    "string_too_long": "must be at most {max_length} characters",
    "string_too_short": "must be at least {min_length} characters",
    "less_than_equal": "must be at most {le}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be below {lt}",
    "greater_than": "must be above {gt}",
    "finite_number": "must be a finite number",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
}


def validation_error(errors: list[Any]) -> InvalidInput:
    """The first of a refused request's ``errors`` (pydantic's list) as InvalidInput:
    ``invalid machines: takes at most 1000 items, not 1001``; ``field`` names where
    (``machines``, ``query.since``)."""
    first: dict[str, Any] = errors[0] if errors and isinstance(errors[0], dict) else {}
    if first.get("type") == "json_invalid":
        return InvalidInput("request body is not valid JSON", code="malformed_json")
    loc = tuple(first.get("loc", ()))
    if loc[:1] == ("body",):  # where FastAPI found it, not a field: a field may be "body"
        loc = loc[1:]
    where = ".".join(str(p) for p in loc)
    return InvalidInput(f"invalid {where or 'request'}: {_words(first)}", field=where)


def _words(error: dict[str, Any]) -> str:
    kind = str(error.get("type"))
    ctx = error.get("ctx")
    if kind in ("too_short", "string_too_short") and isinstance(ctx, dict):
        if ctx.get("min_length") == 1:
            return "must not be empty"
    template = _WORDS.get(kind)
    if template is not None:
        try:
            return template.format(**(ctx if isinstance(ctx, dict) else {}))
        except (KeyError, IndexError, ValueError):  # a limit not in this error's context
            pass
    return str(error.get("msg") or "invalid")
