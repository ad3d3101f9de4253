"""The error code of an answer that carries none is the one the error classes map its
status to (one mapping, in ``errors.py``), used by the WebSocket refusals."""

from __future__ import annotations

import json

from cloudremotecontrol import errors
from cloudremotecontrol.server.wsprotocol import json_refusal


def test_each_status_gets_its_error_classes_code() -> None:
    assert errors.code_for_status(400) == errors.InvalidInput.code == "invalid_input"
    assert errors.code_for_status(403) == errors.Forbidden.code == "forbidden"
    assert errors.code_for_status(413) == "too_large"
    assert errors.code_for_status(426) == errors.UpgradeRequired.code == "upgrade_required"
    assert errors.code_for_status(503) == "unavailable"
    assert errors.code_for_status(418) == "invalid_input"  # another 4xx
    assert errors.code_for_status(500) == errors.CrcError.code == "internal"
    assert errors.code_for_status(502) == "internal"


def test_a_refusal_body_has_the_code_and_the_first_line_of_the_text() -> None:
    body = json.loads(json_refusal(403, "Failed to open a WebSocket connection.\nmore\n"))
    assert body == {
        "error": {"code": "forbidden", "message": "Failed to open a WebSocket connection."}
    }
    empty = json.loads(json_refusal(500, "  "))["error"]
    assert empty["code"] == "internal" and "WebSocket" in empty["message"], empty
