"""A real headless Chromium for the dashboard's tests: Debian's ``chromium`` package
(``/usr/bin/chromium``, installed by .ci/run), driven by Playwright's Python package
through ``executable_path`` - no browser download, no network.

Each test gets a fresh browser profile (``--user-data-dir``) and trusts exactly the test
server's certificate (``--ignore-certificate-errors-spki-list`` with the key's SHA-256:
the pinning the CLI does, not a blanket "ignore TLS errors").

When a test fails, every page it opened is saved - a PNG screenshot, its HTML and its
console - under ``.crc-test-artifacts/browser/`` (``CRC_TEST_ARTIFACTS`` moves it).

``CHROMIUM`` overrides the binary. When it is missing the tests skip with the reason,
unless ``CRC_REQUIRE_BROWSER=1`` (CI), where they fail.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",  # as root, as in CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("CRC_TEST_ARTIFACTS", ".crc-test-artifacts")) / "browser"


def spki_pin(cert_pem: bytes) -> str:
    """The base64 SHA-256 of a certificate's public key, as Chromium's pin flag takes it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def _missing() -> str | None:
    if not (shutil.which(CHROMIUM) or Path(CHROMIUM).is_file()):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium chromium-driver)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"Playwright is not installed ({exc})"
    return None


class Browser:
    """One Chromium with a fresh profile; pages remember their console messages."""

    def __init__(self, playwright: Any, profile: Path, pins: list[str]) -> None:
        args = [*ARGS]
        if pins:
            args.append("--ignore-certificate-errors-spki-list=" + ",".join(pins))
        self.context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=args,
            viewport={"width": 1280, "height": 900},
        )
        self.context.set_default_timeout(20_000)
        self.pages: list[Any] = []
        self.console: dict[int, list[str]] = {}

    def page(self) -> Any:
        page = self.context.new_page()
        self.watch(page)
        return page

    def watch(self, page: Any) -> None:
        log: list[str] = []
        self.console[id(page)] = log
        page.on("console", lambda m: log.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: log.append(f"pageerror: {e}"))
        self.pages.append(page)

    def messages(self, page: Any) -> list[str]:
        return list(self.console.get(id(page), []))

    def save(self, name: str) -> list[Path]:
        """Screenshot, HTML and console of every open page (on failure)."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        saved = []
        for i, page in enumerate(self.pages):
            if page.is_closed():
                continue
            base = ARTIFACTS / f"{name}-{i}"
            try:
                page.screenshot(path=str(base.with_suffix(".png")), full_page=True)
                base.with_suffix(".html").write_text(page.content())
            except Exception as exc:  # noqa: BLE001 -- best effort, the test failed already
                base.with_suffix(".error.txt").write_text(repr(exc))
            base.with_suffix(".console.txt").write_text("\n".join(self.messages(page)))
            saved.append(base.with_suffix(".png"))
        return saved

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def chromium_present() -> str:
    """The Chromium binary; skip (or, under CRC_REQUIRE_BROWSER=1, fail) without one."""
    reason = _missing()
    if reason is not None:
        if os.environ.get("CRC_REQUIRE_BROWSER") == "1":
            pytest.fail(f"Chromium is required (CRC_REQUIRE_BROWSER=1) but {reason}")
        pytest.skip(f"browser tests skipped: {reason}")
    return CHROMIUM


@pytest.fixture
def playwright_driver(chromium_present: str) -> Iterator[Any]:
    """Playwright for one test. Not shared across tests: its sync API keeps an asyncio
    loop running in this thread while it lives, which later async tests cannot share."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture
def browser(
    playwright_driver: Any, server: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Browser]:
    """A fresh Chromium trusting the test server's certificate; pages saved on failure."""
    pin = spki_pin((Path(server.data_dir) / "cert.pem").read_bytes())
    b = Browser(playwright_driver, tmp_path / "chromium-profile", [pin])
    yield b
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        name = re.sub(r"[^A-Za-z0-9_-]+", "_", request.node.nodeid)[-120:]
        for path in b.save(name):
            print(f"browser artefact: {path}")
    b.close()
