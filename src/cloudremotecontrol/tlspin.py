"""TLS for clients (CLI, SDK, agent): pin the server's certificate by its SHA-256.

``crc server init`` makes a self-signed certificate and prints its fingerprint. A client
that is given the fingerprint first fetches the certificate the server presents (one
handshake that verifies nothing and sends nothing), checks its SHA-256 against the pin,
and from then on trusts exactly that certificate as the only trust anchor, with normal
verification. A man in the middle fails the pin before any token or key is sent, and
fails the handshake afterwards. Without a pin the system's CA store is used, so a real
certificate (or a reverse proxy such as Caddy) works as is.

Stdlib only: the agent imports this.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import socket
import ssl
from urllib.parse import urlsplit

from .errors import InvalidInput, TlsPinMismatch, TlsUntrusted, Unavailable

__all__ = [
    "check_base_url",
    "check_pin_applies",
    "check_server_url",
    "client_context",
    "fetch_server_cert",
    "fingerprint_of",
    "is_untrusted",
    "normalize_fingerprint",
    "pinned_context",
    "untrusted_error",
]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def fingerprint_of(der: bytes) -> str:
    return "sha256:" + hashlib.sha256(der).hexdigest()


def normalize_fingerprint(text: str) -> str:
    """Accept ``sha256:<hex>``, bare hex, or colon-separated hex (as openssl prints it)."""
    value = text.strip().lower()
    if value.startswith("sha256:"):
        value = value[len("sha256:") :]
    value = value.replace(":", "")
    if not _HEX64.match(value):
        raise InvalidInput(f"invalid fingerprint {text!r}: expected sha256:<64 hex digits>")
    return "sha256:" + value


def check_server_url(url: str) -> None:
    """Refuse a URL no crc server serves before anything is sent to it: another scheme
    than https (wss), no host, a bad port, and plain http (ws) to anything but this
    computer. A server serves plain HTTP only with ``--insecure``, on a loopback address;
    a token or key sent to plain HTTP elsewhere would cross the network unencrypted."""
    if any(c.isspace() or not c.isprintable() for c in url):  # an escape pasted along
        raise InvalidInput(
            f"invalid server URL {_shown(url)}: it holds a space or a control character"
        )
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError if not a number from 0 to 65535
    except ValueError as exc:
        raise InvalidInput(f"invalid server URL {url!r}: {exc}") from None
    if parts.scheme not in ("https", "wss", "http", "ws") or not parts.hostname or port == 0:
        raise InvalidInput(f"invalid server URL {url!r}: expected https://HOST[:PORT]")
    if parts.scheme in ("http", "ws") and not _is_loopback(parts.hostname):
        raise InvalidInput(
            f"refusing plain {parts.scheme}:// to {parts.hostname}: the token or key would "
            "cross the network unencrypted; use https:// (a server serves plain HTTP only "
            "with --insecure, on a loopback address)"
        )


def _shown(url: str) -> str:
    """``url`` as an error may show it: a user name or password in it left out."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return repr(url)
    if "@" not in parts.netloc:
        return repr(url)
    return repr(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl())


def check_base_url(url: str) -> None:
    """A server's base URL as `crc login` saves it and `crc bootstrap` writes it:
    ``https://HOST[:PORT]`` (or plain http to this computer, as check_server_url), with
    no path (a page such as ``/dashboard/``), query, fragment, user name or password
    (which would be saved and sent, and is never shown back)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- ValueError if not a number from 0 to 65535
    except ValueError as exc:
        raise InvalidInput(f"invalid server URL {_shown(url)}: {exc}") from None
    if "@" in parts.netloc:
        raise InvalidInput(
            f"invalid server URL {_shown(url)}: expected https://HOST[:PORT], with no "
            "user name or password in it (crc authenticates with its token)"
        )
    if parts.path.strip("/") or "?" in url or "#" in url:
        raise InvalidInput(
            f"invalid server URL {_shown(url)}: expected https://HOST[:PORT], with no path, "
            "query or fragment (the server's address only, not a page of it)"
        )
    check_server_url(url)


def check_pin_applies(url: str, fingerprint: str | None) -> None:
    """InvalidInput for a fingerprint with a plain http:// URL: the pin the caller counts
    on would be skipped without a word (there is no certificate to compare)."""
    if fingerprint and urlsplit(url).scheme in ("http", "ws"):
        raise InvalidInput(
            f"a fingerprint pins the certificate of an https:// server, and {_shown(url)} "
            "is plain http (no certificate, nothing encrypted): use the server's https:// "
            "URL, or no fingerprint for a plain --insecure server"
        )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_port(url: str) -> tuple[str, int]:
    check_server_url(url)
    parts = urlsplit(url)
    assert parts.hostname is not None  # checked above
    default = 443 if parts.scheme in ("https", "wss") else 80
    return parts.hostname, parts.port or default


def fetch_server_cert(url: str, timeout: float = 10.0) -> bytes:
    """The DER certificate the server at ``url`` presents (not verified: compare a pin)."""
    host, port = host_port(url)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise Unavailable(f"cannot reach {url}: {exc}") from None
    if not der:
        raise Unavailable(f"{url} presented no certificate")
    return der


def is_untrusted(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a certificate the system's CAs do not vouch
    for."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


def untrusted_error(url: str, exc: BaseException) -> TlsUntrusted:
    """A certificate the system's CAs do not vouch for, and no pinned fingerprint: say
    what to do (and which certificate the server presented, to compare)."""
    try:
        seen = fingerprint_of(fetch_server_cert(url, timeout=5))
        shown = f"; it presented {seen}"
    except Unavailable:
        shown = ""
    return TlsUntrusted(
        f"the certificate of {url} is not trusted by this computer ({exc}): a server made "
        "by `crc server init` has a self-signed certificate, so pin its fingerprint: "
        "CRC_FINGERPRINT=sha256:..., or --fingerprint sha256:... where the command has "
        f"that option (`crc login`, `crc agent run`){shown} - compare it with "
        "the one `crc server init` printed before you use it"
    )


def pinned_context(cert_pem: str) -> ssl.SSLContext:
    """A client context that trusts exactly ``cert_pem`` (already checked against a pin)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # The pinned certificate is the trust anchor itself; names are not checked because
    # the pin already identifies the server (VMs reach it by whatever address works).
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.load_verify_locations(cadata=cert_pem)
    return ctx


def client_context(
    url: str, fingerprint: str | None, cached_pem: str | None = None, timeout: float = 10.0
) -> tuple[ssl.SSLContext | None, str | None]:
    """The SSL context for ``url``, and the PEM to cache for next time.

    With a fingerprint: verify ``cached_pem`` against it, else fetch the server's
    certificate and verify that (raises TlsPinMismatch before anything secret is sent).
    Without: the system CA store. ``http://`` URLs (``--insecure``) get None.
    ``timeout``: seconds the certificate's fetch may take (connecting, the handshake).
    """
    check_server_url(url)
    check_pin_applies(url, fingerprint)
    if urlsplit(url).scheme in ("http", "ws"):
        return None, None
    if not fingerprint:
        return ssl.create_default_context(), None
    pin = normalize_fingerprint(fingerprint)
    if cached_pem:
        try:
            der = ssl.PEM_cert_to_DER_cert(cached_pem)
        except ValueError:  # not PEM: fetched again below, as if none was cached
            der = b""
        if der and fingerprint_of(der) == pin:
            try:
                return pinned_context(cached_pem), cached_pem
            except ssl.SSLError:
                pass  # PEM, but no certificate: fetched again below
    der = fetch_server_cert(url, timeout)
    seen = fingerprint_of(der)
    if seen != pin:
        raise TlsPinMismatch(
            f"the server at {url} presented certificate {seen}, not the pinned {pin}: "
            "refusing to connect (wrong server, or someone in the middle)"
        )
    pem = ssl.DER_cert_to_PEM_cert(der)
    return pinned_context(pem), pem
