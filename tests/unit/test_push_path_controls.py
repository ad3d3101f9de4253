"""A push's REMOTE holds no control character (C0, DEL, C1): refused by the check the
server, the SDK and the CLI share (``check_push``), naming the field; a pull's path by
the same rule (``FileGet``); other non-ASCII text is as before."""

from __future__ import annotations

import pytest

from cloudremotecontrol.errors import InvalidInput
from cloudremotecontrol.master.calls import check_push
from cloudremotecontrol.protocol.messages import FileGet, FilePut


@pytest.mark.parametrize(
    "path",
    [
        "/tmp/x/esc\x1b[31mRED\rX\nline2.txt",
        "/tmp/a\tb",
        "/tmp/a\x7fb",
        "/tmp/a\x85b",
        "/tmp/a\x9bb",
        "C:\\app\\a\x01.conf",
    ],
)
def test_a_push_path_with_a_control_character_is_refused(path) -> None:
    with pytest.raises(InvalidInput, match="contains a control character") as caught:
        check_push("a", path, None, None)
    assert caught.value.details == {"field": "path"}
    for raw in "\x1b\r\n\t\x7f\x85\x9b\x01":
        assert raw not in caught.value.message
    body = {"job_id": "j", "sha256": "0" * 64, "size": 0, "path": path}
    with pytest.raises(InvalidInput, match="control character"):
        FilePut.from_body(body)


@pytest.mark.parametrize("path", ["/etc/app.conf", "/tmp/café ünï €.txt", "C:\\app\\a.conf"])
def test_a_push_path_without_one_goes(path) -> None:
    check_push("a", path, "0640", "1000:1000")


@pytest.mark.parametrize("path", ["/tmp/a\tb", "/tmp/x/esc\x1b[31mRED\rX\nl2", "/tmp/a\x9bb"])
def test_a_pull_path_with_a_control_character_is_refused_as_a_push_path(path) -> None:
    with pytest.raises(InvalidInput, match="contains a control character") as caught:
        FileGet.from_body({"job_id": "j", "path": path})
    assert caught.value.details == {"field": "path"}
    assert FileGet.from_body({"job_id": "j", "path": "/tmp/café.txt"}).path == "/tmp/café.txt"
