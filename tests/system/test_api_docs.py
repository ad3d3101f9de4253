"""`/v1/docs` in a real headless Chromium: Swagger UI renders the API with nothing
loaded from outside the server (the page works offline)."""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.request

import pytest

from cloudremotecontrol.tlspin import client_context

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _get(server, path: str) -> tuple[int, bytes]:
    ctx, _ = client_context(server.url, server.fingerprint)
    with urllib.request.urlopen(server.url + path, context=ctx, timeout=10) as r:
        return r.status, r.read()


def test_docs_page_refers_only_to_files_of_the_server(server):
    status, html = _get(server, "/v1/docs")
    assert status == 200
    urls = re.findall(rb"(?:src|href|url)\s*[:=]\s*['\"]([^'\"]+)['\"]", html)
    assert urls, html
    assert [u for u in urls if not u.startswith(b"/v1/")] == []
    for u in urls:
        status, body = _get(server, u.decode())
        assert status == 200 and body, u


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (Debian package) for the page")
def test_docs_page_renders_the_api_in_a_headless_browser_offline(server, tmp_path):
    # Every request outside the server fails: the page must not need one.
    dom = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--ignore-certificate-errors",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--proxy-server=http://127.0.0.1:9",
            "--proxy-bypass-list=127.0.0.1",
            "--virtual-time-budget=15000",
            "--dump-dom",
            server.url + "/v1/docs",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    # Swagger UI ran: the operations of the API are on the page.
    assert "opblock" in dom, dom[-2000:]
    assert "/v1/groups/{group}/jobs" in dom
    assert "CloudRemoteControl" in dom
