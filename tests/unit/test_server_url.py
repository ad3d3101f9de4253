"""Which server URLs clients accept: https anywhere, plain http only to this computer.

The CLI, the SDK and the agent check a URL before any token or key is sent
(``tlspin.check_server_url``, on every connection); the bootstrap's ``fetch_agent.py``
before it fetches the agent's code."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from cloudremotecontrol import tlspin
from cloudremotecontrol.errors import InvalidInput

TEMPLATE = Path(tlspin.__file__).parent / "bootstrap" / "templates" / "fetch_agent.py"

ACCEPTED = [
    "https://203.0.113.7:8443",
    "https://crc.example.net",
    "wss://crc.example.net/v1/agent/streams/x",
    "http://127.0.0.1:8080",
    "http://127.1.2.3:8080",
    "http://[::1]:8080",
    "http://localhost:8080",
    "ws://127.0.0.1:8080/v1/agent",
]
REFUSED = {
    "http://203.0.113.7:8443": "refusing plain http:// to 203.0.113.7",
    "http://crc.example.net": "refusing plain http:// to crc.example.net",
    "ws://10.0.0.1:8443": "refusing plain ws:// to 10.0.0.1",
    "http://localhost.example.net": "refusing plain http://",
    "ftp://crc.example.net": "expected https://HOST[:PORT]",
    "https://": "expected https://HOST[:PORT]",
    "crc.example.net:8443": "expected https://HOST[:PORT]",
    "https://crc.example.net:99999": "Port out of range",
    "https://crc.example.net:0": "expected https://HOST[:PORT]",
}


def _fetch_agent() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fetch_agent_urls", TEMPLATE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("url", ACCEPTED)
def test_https_anywhere_and_plain_http_to_this_computer_are_accepted(url: str) -> None:
    tlspin.check_server_url(url)
    if url.startswith("http"):
        _fetch_agent().check_url(url)


@pytest.mark.parametrize(("url", "why"), REFUSED.items())
def test_other_urls_are_refused_before_anything_is_sent(url: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(why)):
        tlspin.client_context(url, None)  # what every client calls first
    if url.startswith("ws"):
        return  # the bootstrap fetches over http(s) only
    fetch_agent = _fetch_agent()
    with pytest.raises(fetch_agent.Fatal) as info:
        fetch_agent.check_url(url)
    assert why in str(info.value)
    assert info.value.code == fetch_agent.USAGE


@pytest.mark.parametrize(
    "url", ["https://\x1b[31m127.0.0.1", "https://crc.example.net\n", "https://a b:8443"], ids=repr
)
def test_a_url_with_a_control_character_or_a_space_says_so(url: str) -> None:
    # An escape pasted along with the URL was "Invalid IPv6 URL" (its "[").
    with pytest.raises(InvalidInput, match="it holds a space or a control character") as info:
        tlspin.check_server_url(url)
    assert "\x1b" not in str(info.value) and "\n" not in str(info.value)
