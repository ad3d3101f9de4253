"""Startup scripts for fresh VMs: fill the templates in ``templates/`` with one machine's
server URL, TLS fingerprint and enrollment key.

Every value is validated first (URL shape, fingerprint, key format, names) and then
quoted for the target language (``shlex.quote`` for bash, doubled single quotes for
PowerShell), so nothing a master passes can change what the script does. The fetch
helper ``templates/fetch_agent.py`` is embedded verbatim in both scripts: the same
stdlib-only code pins the certificate and installs the agent on Linux and Windows.

Formats: ``linux``: ``shell`` (bash; also valid cloud-init user data) or ``cloud-init``
(``#cloud-config`` that writes and runs the same script); ``windows``: ``cmd`` (what a
Vultr Windows startup script is: cmd + Python, PowerShell only to install a missing
Python) or ``powershell`` (the bare .ps1, the same steps in PowerShell).
"""

from __future__ import annotations

import base64
import re
import secrets
import shlex
from dataclasses import dataclass
from importlib import resources
from urllib.parse import urlsplit

from .. import __version__
from ..errors import InvalidInput
from ..protocol.names import check_name
from ..protocol.tokens import parse_secret
from ..tlspin import check_base_url, normalize_fingerprint

__all__ = ["DEFAULT_FORMATS", "FORMATS", "BootstrapParams", "render"]

FORMATS: dict[str, tuple[str, ...]] = {
    "linux": ("shell", "cloud-init"),
    "windows": ("cmd", "powershell"),
}
DEFAULT_FORMATS = {"linux": "shell", "windows": "cmd"}
# The last 3.12 release with Windows installers on python.org (3.12 became
# security-only after it); override with --python-version.
DEFAULT_WINDOWS_PYTHON = "3.12.10"
_PLACEHOLDER = re.compile(r"\{\{[A-Z_]+\}\}")
_PS_HERESTRING_END = re.compile(r"^'@", re.MULTILINE)


@dataclass(frozen=True)
class BootstrapParams:
    url: str
    fingerprint: str | None
    group: str
    machine: str
    key: str
    then_script: str | None = None  # provisioning to run once the agent is up
    python_version: str = DEFAULT_WINDOWS_PYTHON

    def checked(self) -> BootstrapParams:
        """The same parameters, validated and normalized (raises InvalidInput)."""
        url = self.url.rstrip("/")
        try:
            check_base_url(url)  # as `crc login`: no path, query, fragment or password
        except InvalidInput as exc:
            raise InvalidInput(exc.message, field="url") from None
        if urlsplit(url).scheme not in ("https", "http") or re.search(r"[\s'\"`$\\]", url):
            raise InvalidInput(
                f"invalid server URL {self.url!r}: expected https://HOST[:PORT] "
                "as the machines reach it",
                field="url",
            )
        fp = normalize_fingerprint(self.fingerprint) if self.fingerprint else None
        key = parse_secret(self.key.strip(), "k")
        if key is None or not re.fullmatch(r"[A-Za-z0-9_-]+", self.key.strip()):
            raise InvalidInput(
                "invalid enrollment key: expected crck_... as `crc group create` printed it",
                field="key",
            )
        if not re.fullmatch(r"3\.\d{1,2}\.\d{1,2}", self.python_version):
            raise InvalidInput(
                f"invalid Python version {self.python_version!r}: expected e.g. 3.12.10",
                field="python_version",
            )
        if self.then_script is not None and "\0" in self.then_script:
            raise InvalidInput("the provisioning script contains a NUL byte", field="then")
        return BootstrapParams(
            url,
            fp,
            check_name(self.group, "group"),
            check_name(self.machine, "machine"),
            self.key.strip(),
            self.then_script,
            self.python_version,
        )


def _template(name: str) -> str:
    return (resources.files("cloudremotecontrol.bootstrap") / "templates" / name).read_text(
        encoding="utf-8"
    )


def _fill(text: str, values: dict[str, str]) -> str:
    # One pass, so a value that happens to contain "{{X}}" is never expanded again.
    def sub(m: re.Match[str]) -> str:
        name = m.group(0)[2:-2]
        if name not in values:
            raise KeyError(f"template placeholder {name} has no value")
        return values[name]

    return _PLACEHOLDER.sub(sub, text)


def _ps_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _fetch_helper() -> str:
    return _template("fetch_agent.py").rstrip("\n")


def render_linux_shell(params: BootstrapParams) -> str:
    """The bash startup script (run once as root; idempotent)."""
    p = params.checked()
    helper = _fetch_helper()
    assert "\nCRC_FETCH_AGENT_PY\n" not in f"\n{helper}\n"
    then = ""
    if p.then_script is not None:
        delimiter = "CRC_THEN_" + secrets.token_hex(6).upper()
        then = _fill(
            _template("linux_then.sh"),
            {"THEN_EOF": delimiter, "THEN_SCRIPT": p.then_script.rstrip("\n")},
        )
    return _fill(
        _template("linux.sh"),
        {
            "MACHINE_TEXT": p.machine,
            "GROUP_TEXT": p.group,
            "VERSION": __version__,
            "URL": shlex.quote(p.url),
            "FINGERPRINT": shlex.quote(p.fingerprint or ""),
            "GROUP": shlex.quote(p.group),
            "MACHINE": shlex.quote(p.machine),
            "KEY": shlex.quote(p.key),
            "FETCH_AGENT_PY": helper,
            "THEN": then,
        },
    )


def render_cloud_init(params: BootstrapParams) -> str:
    """``#cloud-config`` user data that writes the bash script and runs it once."""
    script = render_linux_shell(params)
    p = params.checked()
    b64 = base64.b64encode(script.encode()).decode()
    lines = [
        "#cloud-config",
        f"# CloudRemoteControl bootstrap for machine {p.machine} of group {p.group} "
        f"(crc {__version__}).",
        "# The script below is what `crc bootstrap --format shell` prints (base64).",
        "write_files:",
        "  - path: /root/crc-bootstrap.sh",
        "    owner: root:root",
        "    permissions: '0700'",
        "    encoding: b64",
        "    content: " + b64,
        "runcmd:",
        "  - [bash, /root/crc-bootstrap.sh]",
    ]
    return "\n".join(lines) + "\n"


def render_windows_powershell(params: BootstrapParams) -> str:
    """The PowerShell startup script (Windows PowerShell 5.1+, as Administrator)."""
    p = params.checked()
    helper = _fetch_helper()
    if _PS_HERESTRING_END.search(helper):
        raise AssertionError("fetch_agent.py has a line starting with '@")
    then = ""
    if p.then_script is not None:
        if _PS_HERESTRING_END.search(p.then_script):
            raise InvalidInput(
                "the provisioning script has a line starting with '@, which "
                "would end its PowerShell here-string",
                field="then",
            )
        then = _fill(_template("windows_then.ps1"), {"THEN_SCRIPT": p.then_script.rstrip("\n")})
    return _fill(
        _template("windows.ps1"),
        {
            "MACHINE_TEXT": p.machine,
            "GROUP_TEXT": p.group,
            "VERSION": __version__,
            "URL": _ps_quote(p.url),
            "FINGERPRINT": _ps_quote(p.fingerprint or ""),
            "GROUP": _ps_quote(p.group),
            "MACHINE": _ps_quote(p.machine),
            "KEY": _ps_quote(p.key),
            "PYTHON_VERSION": _ps_quote(p.python_version),
            "FETCH_AGENT_PY": helper,
            "THEN": then,
        },
    )


_CMD_SAFE_URL = re.compile(r"https?://[A-Za-z0-9._:\[\]-]+")
CMD_MARKERS = ("#CRC-INSTALL-PYTHON", "#CRC-PYTHON-BELOW", "#CRC-FETCH-AGENT-PY")


def render_windows_cmd(params: BootstrapParams) -> str:
    """The .cmd startup script (what Vultr runs on Windows): cmd, then Python.

    cmd finds Python (PowerShell only installs it when there is none) and runs the
    Python section of the same file (templates/windows_bootstrap.py.in), which runs the
    embedded fetch helper and `crc agent install`. Values reach Python as Python
    literals; cmd itself sees only the Python version. CRLF line ends, as cmd expects.
    """
    p = params.checked()
    if not _CMD_SAFE_URL.fullmatch(p.url):
        raise InvalidInput(
            f"invalid server URL {p.url!r} for a .cmd script: expected "
            "https://HOST[:PORT] with a plain host name or address",
            field="url",
        )
    helper = _fetch_helper()
    head = _fill(
        _template("windows.cmd"),
        {
            "MACHINE_TEXT": p.machine,
            "GROUP_TEXT": p.group,
            "VERSION": __version__,
            "PYTHON_VERSION": p.python_version,
        },
    )
    driver = _fill(
        _template("windows_bootstrap.py.in"),
        {
            "MACHINE_TEXT": p.machine,
            "GROUP_TEXT": p.group,
            "VERSION": __version__,
            "URL": repr(p.url),
            "FINGERPRINT": repr(p.fingerprint or ""),
            "GROUP": repr(p.group),
            "MACHINE": repr(p.machine),
            "KEY": repr(p.key),
            "THEN_SCRIPT": repr(p.then_script),
        },
    )
    head, driver = head.rstrip() + "\n\n", driver.rstrip() + "\n\n"
    text = f"{head}{driver}#CRC-FETCH-AGENT-PY\n{helper}\n"
    # Each section is found by the first occurrence of its marker: nothing before may
    # contain it (the values are Python literals after the first two markers).
    expected = (head.index("\n#CRC-INSTALL-PYTHON") + 1, len(head), len(head) + len(driver))
    if tuple(text.index(m) for m in CMD_MARKERS) != expected:
        raise InvalidInput(
            "the provisioning script contains a line the .cmd script uses "
            "as a section marker (#CRC-...)",
            field="then",
        )
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


def render(os_name: str, fmt: str | None, params: BootstrapParams) -> str:
    """The startup script for ``os_name`` (linux, windows) in format ``fmt``."""
    if os_name not in FORMATS:
        raise InvalidInput(f"unknown OS {os_name!r}: linux or windows", field="os")
    fmt = fmt or DEFAULT_FORMATS[os_name]
    if fmt not in FORMATS[os_name]:
        raise InvalidInput(
            f"format {fmt!r} is not for {os_name}: use {' or '.join(FORMATS[os_name])}",
            field="format",
        )
    renderers = {
        "shell": render_linux_shell,
        "cloud-init": render_cloud_init,
        "cmd": render_windows_cmd,
        "powershell": render_windows_powershell,
    }
    return renderers[fmt](params)
