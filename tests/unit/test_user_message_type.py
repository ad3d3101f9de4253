"""The one rule for a data message type a master names (``crc send TYPE``, ``crc wait
--message TYPE``): ``NAME`` or ``user.NAME``, sent and waited for as ``user.NAME``."""

from __future__ import annotations

import pytest

from cloudremotecontrol.errors import InvalidInput
from cloudremotecontrol.protocol.names import check_message_type, user_message_type


@pytest.mark.parametrize(
    ("given", "full"),
    [("done", "user.done"), ("user.done", "user.done"), ("a.b-c_1", "user.a.b-c_1")],
)
def test_a_name_with_or_without_its_namespace_is_the_user_type(given, full):
    assert user_message_type(given) == full
    assert check_message_type(full) == full  # what the server takes


@pytest.mark.parametrize("given", ["", "user."])
def test_an_empty_name_is_refused_as_empty_never_as_the_user_dot_nobody_typed(given):
    with pytest.raises(InvalidInput) as exc:
        user_message_type(given)
    assert (
        exc.value.message == "invalid message type: empty; give the message's NAME (or user.NAME)"
    )
    assert exc.value.details.get("field") == "type"


@pytest.mark.parametrize("given", ["a b", "user.x/y", "x" * 65, "\x1b[2J", "done\n"])
def test_a_name_no_machine_can_send_is_refused_quoting_what_was_given(given):
    with pytest.raises(InvalidInput) as exc:
        user_message_type(given)
    assert exc.value.message.startswith(f"invalid message type {given!r}: "), exc.value.message
    assert "\x1b" not in exc.value.message and "\n" not in exc.value.message
