"""What a client makes of answers that are not the API's, and of server URLs that are
not a server's address: errors.error_from_answer (CLI, SDK, agent), calls.Call's shape
checks, tlspin.check_base_url (`crc login`, `crc bootstrap`)."""

from __future__ import annotations

import pytest

from cloudremotecontrol import errors, tlspin
from cloudremotecontrol.errors import (
    Conflict,
    InvalidInput,
    KeyRejected,
    NotFound,
    TlsUntrusted,
    Unavailable,
)
from cloudremotecontrol.master import calls

URL = "https://crc.example.net:8443"


@pytest.mark.parametrize(
    ("status", "ctype", "body"),
    [
        (404, "text/html", b"<html>Not Found</html>"),
        (404, "application/json", b'{"detail": "Not Found"}'),
        (400, "application/json", b'{"error": "bad"}'),
        (409, None, b""),
        (502, "text/html", b"<html>Bad Gateway</html>"),
        (401, "text/plain", b"\xff\xfe"),
    ],
)
def test_an_error_answer_without_the_api_shape_is_not_a_crc_server(status, ctype, body):
    err = errors.error_from_answer(URL, status, ctype, body)
    assert isinstance(err, Unavailable) and err.exit_code == 6
    assert "not a CloudRemoteControl server" in err.message and URL in err.message
    assert f"HTTP {status}" in err.message
    # A proxy's 502-504 page may be a server restarting (event streams wait it out).
    assert err.code == ("unavailable" if status in (502, 503, 504) else "not_crc_server")
    with pytest.raises(Unavailable, match="not a CloudRemoteControl server"):
        calls.raise_for(URL, status, ctype, body)


@pytest.mark.parametrize(
    ("status", "code", "cls", "exit_code"),
    [
        (404, "not_found", NotFound, 4),
        (409, "conflict", Conflict, 5),
        (400, "invalid_input", InvalidInput, 2),
        (401, "key_rejected", KeyRejected, 3),
    ],
)
def test_the_apis_own_errors_are_kept(status, code, cls, exit_code):
    body = b'{"error": {"code": "%s", "message": "no such thing"}}' % code.encode()
    err = errors.error_from_answer(URL, status, "application/json", body)
    assert type(err) is cls and err.exit_code == exit_code and err.message == "no such thing"


def test_a_list_answer_of_another_shape_is_not_a_crc_server():
    call = calls.list_groups()
    assert call.result({"groups": []}) == []
    for answer in ({"groups": [{"x": 1}]}, {"groups": "x"}, {"groups": [1]}):
        with pytest.raises(Unavailable, match="CloudRemoteControl server"):
            call.result(answer)
    with pytest.raises(Unavailable, match="CloudRemoteControl server"):
        calls.group("g1").result({"name": "g1"})
    with pytest.raises(Unavailable, match="CloudRemoteControl server"):
        calls.machine_key("g1", "m1", None).result({"ok": True})


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://crc.example.net/dashboard/", "no path"),
        ("https://crc.example.net/v1", "no path"),
        ("https://crc.example.net#x", "no path"),
        ("https://crc.example.net?a=1", "no path"),
        ("https://crc.example.net?", "no path"),
        ("https://u:pw-secret@crc.example.net", "no user name or password"),
        ("https://u@crc.example.net", "no user name or password"),
        ("http://203.0.113.7", "refusing plain http://"),
        ("ftp://crc.example.net", "expected https://HOST[:PORT]"),
    ],
)
def test_a_base_url_is_a_servers_address_only(url, why):
    with pytest.raises(InvalidInput, match=why.replace("[", r"\[").replace("?", r"\?")) as caught:
        tlspin.check_base_url(url)
    assert "pw-secret" not in caught.value.message


@pytest.mark.parametrize(
    "url", ["https://crc.example.net", "https://crc.example.net:8443/", "http://127.0.0.1:8080"]
)
def test_a_servers_address_is_a_base_url(url):
    tlspin.check_base_url(url)


def test_a_cached_certificate_that_is_not_pem_is_fetched_again(monkeypatch):
    fetched: list[str] = []

    def fetch(url: str, timeout: float = 10.0) -> bytes:
        fetched.append(url)
        raise Unavailable("cannot reach it")

    monkeypatch.setattr(tlspin, "fetch_server_cert", fetch)
    with pytest.raises(Unavailable):
        tlspin.client_context(URL, "sha256:" + "0" * 64, "garbage")
    assert fetched == [URL]


def test_the_agents_untrusted_error_is_exit_7_and_still_unavailable():
    from cloudremotecontrol.agent.http import UntrustedServer

    err = UntrustedServer("not trusted")
    assert isinstance(err, TlsUntrusted) and isinstance(err, Unavailable)
    assert err.exit_code == 7 and err.code == "tls_untrusted"
