"""Every replica down: one wording per failure, whichever way the client found it."""

from __future__ import annotations

import asyncio

import pytest

from cloudremotecontrol.errors import Unavailable
from cloudremotecontrol.master import calls
from cloudremotecontrol.master.aclient import AsyncClient
from cloudremotecontrol.master.client import Client
from cloudremotecontrol.master.localrun import free_port

TOKEN = "crcm_" + "a" * 40
PIN = "sha256:" + "ab" * 32  # pinned: the certificate is fetched when connecting


class _Wrapped(Exception):
    """An HTTP library's error around the operating system's (as httpx's are)."""


def _raised_from(outer: str, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise _Wrapped(outer) from exc
    except _Wrapped as wrapped:
        return wrapped


def test_why_unreachable_says_each_failure_one_way() -> None:
    url = "https://127.0.0.1:1"
    # An Unavailable (a certificate fetch): its reason, without "cannot reach URL:".
    refused = Unavailable(f"cannot reach {url}: [Errno 111] Connection refused")
    assert calls.why_unreachable(url, refused) == "[Errno 111] Connection refused"
    assert calls.why_unreachable(url, "cannot reach https://other:1: x") == (
        "cannot reach https://other:1: x"
    )
    # An HTTP library's error: the operating system's reason under it, worded as above
    # (asyncio says "Connect call failed", httpx "All connection attempts failed").
    inner = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 1)")
    wrapped = _raised_from("All connection attempts failed", inner)
    assert calls.why_unreachable(url, wrapped) == "[Errno 111] Connection refused"
    # No operating system reason: its text, else its kind (a timeout says nothing).
    assert calls.why_unreachable(url, _Wrapped("handshake timed out")) == "handshake timed out"
    assert calls.why_unreachable(url, _Wrapped("")) == "_Wrapped"


def test_unreached_names_every_url_or_gives_the_one_error() -> None:
    one = calls.Unreached()
    one.add("https://a:1", "cannot reach https://a:1: refused")
    last = Unavailable("cannot reach https://a:1: refused")
    assert one.error(last) is last

    shared = calls.Unreached()
    refused = "cannot reach https://a:1: [Errno 111] Connection refused"
    shared.add("https://a:1", Unavailable(refused))
    shared.add("https://b:2", _raised_from("x", ConnectionRefusedError(111, "Connect call failed")))
    err = shared.error(last)
    assert isinstance(err, Unavailable)
    assert err.message == (
        "cannot reach any of https://a:1, https://b:2: [Errno 111] Connection refused"
    )

    mixed = calls.Unreached()
    mixed.add("https://a:1", "cannot reach https://a:1: refused")
    mixed.add("https://b:2", "cannot reach https://b:2: timed out")
    assert mixed.error(last).args[0] == (
        "cannot reach any of https://a:1, https://b:2: https://a:1: refused; https://b:2: timed out"
    )


def _message(url: str, pin: str | None, sync: bool) -> str:
    if sync:
        with pytest.raises(Unavailable) as caught:
            with Client(url, TOKEN, pin) as c:
                c.whoami()
        return caught.value.message

    async def go() -> None:
        async with AsyncClient(url, TOKEN, pin) as c:
            await c.whoami()

    with pytest.raises(Unavailable) as caught:
        asyncio.run(go())
    return caught.value.message


@pytest.mark.parametrize("sync", [True, False], ids=["Client", "AsyncClient"])
def test_a_request_words_every_url_down_as_connecting_does(sync: bool) -> None:
    """Unpinned, the failures are met by the request (nothing is fetched to connect);
    pinned, by the certificate fetch: the same failure reads the same."""
    first, second = (f"https://127.0.0.1:{free_port()}" for _ in range(2))
    urls = f"{first},{second}"
    connecting = _message(urls, PIN, sync)
    requesting = _message(urls, None, sync)
    assert connecting == f"cannot reach any of {first}, {second}: [Errno 111] Connection refused"
    assert requesting == connecting


def test_a_failover_never_goes_back_to_the_url_it_leaves_nor_to_one_tried() -> None:
    """From B of A,B,C: C then A. The clients' old loop went round every URL, so a
    request whose next replica failed to open was sent again to the dead one it left."""
    urls = ["https://a", "https://b", "https://c"]
    assert calls.next_urls(urls, 1) == [2, 0]
    assert calls.next_urls(urls, 1, ["https://a"]) == [2]
    assert calls.next_urls(urls, 2, ["https://a", "https://b"]) == []
    assert calls.next_urls(["https://a"], 0) == []
