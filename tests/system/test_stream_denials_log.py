"""A refused stream WebSocket (no token, a bad one, an unknown stream) is answered with
its HTTP error and logs no ERROR: the denial is the whole exchange, not an application
that "returned without completing handshake" (uvicorn's websockets-sansio protocol
counted only an accepted or 403-closed handshake as complete, so anyone could fill the
server's log with one line per refused dial). A real failure still logs."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from cloudremotecontrol.tlspin import client_context

STREAM = "st_" + "A" * 22


async def _refused(server: Any, path: str, auth: str | None) -> tuple[int, str]:
    ctx, _ = client_context(server.url, server.fingerprint)
    url = "wss://" + server.url.split("://", 1)[1].rstrip("/") + path
    headers = {} if auth is None else {"Authorization": auth}
    with pytest.raises(InvalidStatus) as exc:
        async with connect(url, ssl=ctx, additional_headers=headers, open_timeout=15):
            pass
    body = json.loads(exc.value.response.body or b"{}")
    return exc.value.response.status_code, body["error"]["code"]


def test_refused_stream_websockets_log_no_error(env: Any) -> None:
    dials = [
        (f"/v1/streams/{STREAM}", None),
        (f"/v1/streams/{STREAM}", "Bearer crcm_x_y"),
        (f"/v1/streams/{STREAM}", f"Bearer {env.token}"),  # no such stream: 404
        (f"/v1/agent/streams/{STREAM}", "Bearer crca_x_y"),
        (f"/v1/agent/streams/{STREAM}", None),
    ]

    async def main() -> list[tuple[int, str]]:
        return [await _refused(env.server, path, auth) for path, auth in dials * 4]

    answers = asyncio.run(main())
    assert {status for status, _ in answers} <= {401, 403, 404}, answers
    assert any(status == 404 for status, _ in answers), answers
    # The server is still well (a denial leaves nothing behind), and said nothing wrong.
    assert env.client.list_groups() == []
    log = env.server.log_path.read_text(errors="replace")
    assert "without completing handshake" not in log, log[-3000:]
    assert " ERROR " not in log and "Traceback" not in log, log[-3000:]
