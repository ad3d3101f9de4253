"""Shells and forwards into the Windows agent (the service under Wine).

What Wine shows and what it cannot is written in each test and in tests/windows/README.md.
"""

from __future__ import annotations

import http.server
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from wine_machine import WineMachine

from cloudremotecontrol.errors import CrcError


class _Site:
    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = f"linux page {self.path}\n".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def site() -> Iterator[_Site]:
    s = _Site()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_forward_through_the_windows_agent(win: WineMachine, site: _Site) -> None:
    """The Windows agent connects to the port (Wine shares this host's network) and
    carries the bytes both ways, one stream per connection, as on Linux."""
    win.wait_state("ready", timeout=120)
    with win.client.forward(win.group, win.name, site.port) as port:
        for i in range(5):
            url = f"http://127.0.0.1:{port}/{i}"
            with urllib.request.urlopen(url, timeout=60) as resp:
                assert resp.read() == f"linux page /{i}\n".encode()
    closes = [s for s in win.client.sessions(win.group) if s["kind"] == "forward"]
    assert any(s["bytes_from_machine"] > 0 for s in closes)


def test_shell_on_the_windows_agent_runs_under_a_pseudo_console(win: WineMachine) -> None:
    """ConPTY: the command's output comes back through the pseudo console and its exit
    code is crc's. Under Wine 8 the pseudo console exists (CreatePseudoConsole) and runs
    the program; Wine's console host does not render like Windows' conhost (no VT
    sequences for cursor moves or colours are checked here, nor resize effects)."""
    win.wait_state("ready", timeout=120)
    try:
        session = win.client.shell(
            win.group, win.name, argv=["cmd", "/c", "echo hello-from-conpty & exit 3"]
        )
    except CrcError as exc:  # pragma: no cover - said exactly, never silently
        pytest.fail(f"the shell could not open on the Windows agent: {exc.message}")
    with session as s:
        out = b""
        while chunk := s.recv(60):
            out += chunk
        assert b"hello-from-conpty" in out, out
        assert s.exit_code == 3


def test_interactive_cmd_takes_keystrokes_and_a_resize(win: WineMachine) -> None:
    """Keystrokes reach cmd through the pseudo console's input pipe, and a resize
    (ResizePseudoConsole) is accepted; what a resize does to the screen is Windows'
    console host's business, which Wine does not reproduce: not checked."""
    win.wait_state("ready", timeout=120)
    with win.client.shell(win.group, win.name, argv=["cmd"], cols=100, rows=30) as s:
        s.expect(">", timeout=60)  # cmd's prompt: it reads the console now
        s.resize(120, 40)
        s.send("echo typed-%CRC_MACHINE%\r")  # Enter is CR, as a terminal sends it
        s.expect(f"typed-{win.name}", timeout=60)
        s.send("exit 4\r")
        assert s.wait(60) == 4
