"""Log redaction (logsafe.py): no formatted log line shows a secret."""

from __future__ import annotations

import io
import logging

from hypothesis import assume, given
from hypothesis import strategies as st

from cloudremotecontrol.logsafe import REDACTED, RedactingFormatter, configure, redact
from cloudremotecontrol.protocol.tokens import new_secret

SECRET_CHARS = st.text(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", min_size=8, max_size=40
)


@given(kind=st.sampled_from("maks"), secret=SECRET_CHARS, before=st.text(max_size=20))
def test_a_token_keeps_its_id_and_loses_its_secret(kind: str, secret: str, before: str) -> None:
    token = f"crc{kind}_0123456789abcdef_{secret}"
    out = redact(f"{before} {token} after")
    assert secret not in out.split(f"crc{kind}_0123456789abcdef_")[-1]
    assert f"crc{kind}_0123456789abcdef_{REDACTED}" in out


SHAPES = [  # @@: where the secret goes
    "> Authorization: Bearer @@",
    "< authorization: Bearer @@",
    "(b'authorization', b'Bearer @@')",
    "{'Authorization': 'Bearer @@'}",
    '{"authorization": "Bearer @@"}',
    "Proxy-Authorization: Basic @@",
    "headers=[('authorization', 'Token @@')]",
    "Bearer @@",
    '{"provider": "vultr", "api_key": "@@"}',
    "VULTR_API_KEY=@@",
    "password: @@",
    "< cookie: __Host-crc_session=@@",
    "(b'cookie', b'__Host-crc_login=x; __Host-crc_session=@@')",
    "Set-Cookie: __Host-crc_session=@@; HttpOnly; Secure",
]


@given(value=SECRET_CHARS)
def test_authorization_headers_are_redacted_however_they_are_printed(value: str) -> None:
    # A value that is a piece of the line itself ("VULTR_AP" of "VULTR_API_KEY=") would
    # be found in any redacted line: such values prove nothing here.
    assume(all(value not in shape.replace("@@", "\n") for shape in SHAPES))
    for template in SHAPES:
        shape = template.replace("@@", value)
        out = redact(shape)
        assert value not in out, (shape, out)
        assert REDACTED in out, (shape, out)


def test_ordinary_lines_are_left_alone() -> None:
    for line in [
        "enrollment refused from 127.0.0.1, key id 0123abcd: enrollment key rejected",
        "connected to https://127.0.0.1:8443 as lab/a",
        "job 7c544380 on 3 machine(s)",
        "kv key db/ready set",
    ]:
        assert redact(line) == line


def test_the_formatter_redacts_arguments_and_tracebacks() -> None:
    cred = str(new_secret("a"))
    stream = io.StringIO()
    logger = logging.getLogger("crc.test.logsafe")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("header %s", f"Authorization: Bearer {cred}")
        try:
            raise ValueError(f"refused {cred}")
        except ValueError:
            logger.exception("failed with %r", {"token": cred})
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert cred.split("_", 2)[2] not in text, text
    assert "Traceback" in text and "ValueError: refused crca_" in text


def test_configure_routes_uvicorn_loggers_through_the_redacting_handler() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    uv = logging.getLogger("uvicorn.error")
    uv.addHandler(logging.StreamHandler(io.StringIO()))  # as uvicorn's own config would
    try:
        configure("debug", "%(name)s %(message)s", stream)
        uv.debug("< authorization: Bearer crca_00ff_%s", "S3CRETS3CRET")
        assert "S3CRETS3CRET" not in stream.getvalue()
        assert "uvicorn.error < authorization: <redacted>" in stream.getvalue()
        assert uv.handlers == []
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
