"""What a forward or a shell says when it cannot start: a listen failure told by its
cause (port in use, an address not this computer's, a port not allowed); an older
agent's ``stream.error`` with control characters in it passed on escaped, not taken
for a broken machine; the machine not connected is exit 6 for forward as for shell;
the EXIT column of `crc sessions list` where no exit code came."""

from __future__ import annotations

import asyncio
import errno
import json
import socket
from typing import Any

import pytest

from cloudremotecontrol.errors import Conflict, InvalidInput, Unavailable
from cloudremotecontrol.protocol.streams import ForwardSpec, StreamError, parse_forward_spec


def _oserror(code: int) -> OSError:
    import os

    return OSError(code, os.strerror(code))


def test_listen_failures_are_told_by_their_cause() -> None:
    from cloudremotecontrol.master.streams import listen_error

    used = listen_error("127.0.0.1", 8080, _oserror(errno.EADDRINUSE))
    assert isinstance(used, Conflict) and used.code == "port_in_use"
    assert "another program uses the port" in used.message
    foreign = listen_error("10.9.9.9", 8080, _oserror(errno.EADDRNOTAVAIL))
    assert isinstance(foreign, InvalidInput) and foreign.exit_code == 2
    assert "10.9.9.9 is not an address of this computer" in foreign.message
    denied = listen_error("127.0.0.1", 80, _oserror(errno.EACCES))
    assert isinstance(denied, InvalidInput) and denied.code == "listen_denied"
    assert "ports below 1024" in denied.message and "another program" not in denied.message
    unknown = listen_error("nowhere.invalid", 8080, socket.gaierror(-2, "Name not known"))
    assert isinstance(unknown, InvalidInput) and "does not resolve" in unknown.message


def test_an_older_agents_error_with_control_characters_is_passed_on_escaped() -> None:
    from cloudremotecontrol.server.streams import _escaped_error

    raw = json.dumps(
        {
            "type": "stream.error",
            "code": "start_failed",
            "message": "cannot run /tmp/\x1b[31mred: No such file or directory",
        }
    )
    error = _escaped_error(raw)
    assert isinstance(error, StreamError) and error.code == "start_failed"
    assert error.message == "cannot run /tmp/\\x1b[31mred: No such file or directory"
    # Anything else unusable stays refused.
    assert _escaped_error('{"type": "stream.exit", "code": "x"}') is None
    assert _escaped_error("not json") is None
    assert _escaped_error(json.dumps({"type": "stream.error", "code": "BAD CODE"})) is None
    # Nested deeper than json parses, within a control message's size: refused, not a
    # RecursionError out of the session's relay.
    assert _escaped_error("[" * 4000) is None
    assert _escaped_error('{"type": "stream.error", "m": ' + "[" * 4000) is None


class _Client:
    """A client whose group has the machine ready, and whose server then answers the
    stream's POST that the machine is not connected (it went away meanwhile)."""

    async def __aenter__(self) -> _Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def group(self, name: str) -> dict[str, Any]:
        return {"machines": [{"name": "dev", "state": "ready"}]}

    async def _stream_opener(self) -> Any:
        from cloudremotecontrol.master.streams import Opener

        async def do(call: Any) -> Any:
            raise Conflict("machine 'dev' is not connected", code="machine_offline")

        return Opener(do=do, url="https://127.0.0.1:1", token="t", ssl=None)


def test_forward_to_a_machine_not_connected_is_unavailable(monkeypatch: Any) -> None:
    from cloudremotecontrol.cli import stream_cmds

    monkeypatch.setattr(stream_cmds, "_async_client", _Client)
    spec: ForwardSpec = parse_forward_spec("0:80")
    with pytest.raises(Unavailable) as exc:
        asyncio.run(stream_cmds._forward("lab", [("dev", spec)], False))
    assert exc.value.code == "machine_offline" and exc.value.exit_code == 6


_MISSING = "cannot run 'x': No such file or directory"
_LOST = "machine dev closed the session before its program ended (its agent stopped)"


@pytest.mark.parametrize(
    ("row", "shown"),
    [
        ({"kind": "shell", "exit_code": 3}, "3"),
        ({"kind": "shell", "error_code": "start_failed", "error": _MISSING}, "127"),
        ({"kind": "shell", "error_code": "start_failed", "error": "cannot run 'x': nope"}, "126"),
        ({"kind": "shell", "error": _MISSING}, "127"),
        ({"kind": "shell", "error_code": "machine_disconnected", "error": "gone"}, "lost"),
        ({"kind": "shell", "error": _LOST}, "lost"),
        ({"kind": "shell", "error_code": "unauthorized", "error": "revoked"}, "ended"),
        ({"kind": "shell", "cut": True}, "cut"),
        ({"kind": "forward"}, ""),
    ],
)
def test_the_exit_column_says_how_a_session_ended(row: dict[str, Any], shown: str) -> None:
    from cloudremotecontrol.cli.stream_cmds import _ended_as

    assert _ended_as(row) == shown
