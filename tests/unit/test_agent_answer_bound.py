"""The agent's JSON calls (roster, kv, enrollment: ``agent/http.call_json``) read at
most ``MAX_ANSWER_BYTES`` of an answer, against a real HTTP server on loopback: a
larger one (a proxy or another program in the server's place) is refused as not the
server's, and is never held in memory whole, even as valid JSON."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cloudremotecontrol.agent.http import MAX_ANSWER_BYTES, call_json
from cloudremotecontrol.errors import Unavailable
from httpserve import QuietHandler, serving

FILL = MAX_ANSWER_BYTES + (16 << 20)


class Handler(QuietHandler):
    def do_GET(self) -> None:
        status = 404 if self.path.endswith("/error") else 200
        head, tail = b'{"fill": "', b'"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(head) + FILL + len(tail)))
        self.end_headers()
        try:
            self.wfile.write(head)
            block = b"x" * (1 << 20)
            for _ in range(FILL >> 20):
                self.wfile.write(block)
            self.wfile.write(tail)
        except OSError:
            pass  # the agent stopped reading: as it should


@pytest.fixture
def url() -> Iterator[str]:
    with serving(Handler) as served:
        yield served


def test_an_answer_larger_than_any_of_the_servers_is_refused(url: str) -> None:
    with pytest.raises(Unavailable, match="is not a CloudRemoteControl server"):
        call_json(url, "/v1/agent/roster", None, credential="cred")


def test_an_error_answer_larger_than_any_of_the_servers_is_not_taken_for_one(url: str) -> None:
    with pytest.raises(Unavailable, match="answered HTTP 404"):
        call_json(url, "/v1/agent/error", None, credential="cred")
